"""STOW-RS to a DICOMweb server (researcher-managed, or the Azure DICOM service with a token).

Instances go in batches of at most ``batch_size`` instances and ``batch_max_bytes`` (one multipart
request each, the files' bytes streamed from disk by ``voxl_assets.upload.stow``; an instance
bigger than that goes alone). dicomweb-client serves the QIDO-RS checks. Two batches are in
flight at once, so reading and encoding the next batch overlaps the server storing the current
one; memory is bounded by the batch, never by the study (a mammography or whole-slide study of
instances of 50 MB and more would otherwise make a 50-instance batch gigabytes). A batch is retried as a
whole: STOW-RS is idempotent for instances the server already holds, so a retry after a dropped
connection creates no duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from voxl_assets.upload.base import TransientUploadError, UploadError, UploadReport, UploadTarget
from voxl_assets.upload.retrying import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY, retry_transient
from voxl_assets.upload.stow import StowBody, failure_reasons
from voxl_assets.upload.zipping import SourceFileError

_T = TypeVar("_T")

# Worth a retry: the server is busy or briefly failing. Other 4xx are the request's fault.
_TRANSIENT_STATUS = {408, 425, 429}
DEFAULT_BATCH_MAX_BYTES = 32 << 20


def stow_batches(files: Sequence[Path], max_instances: int, max_bytes: int) -> Iterator[list[Path]]:
    """``files`` in order, cut into batches of at most ``max_instances`` files and ``max_bytes``
    (on disk; a single bigger file makes a batch of its own)."""
    batch: list[Path] = []
    size = 0
    for path in files:
        file_size = path.stat().st_size
        if batch and (len(batch) >= max_instances or size + file_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += file_size
    if batch:
        yield batch


class DicomWebUploader:
    """Sends a study in batches of ``batch_size`` instances."""

    kind = "dicomweb"

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token_provider: Callable[[], str] | None = None,
        verify: bool | str = True,
        batch_size: int = 50,
        batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
        in_flight: int = 2,
        timeout: float = 120.0,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.in_flight = max(1, in_flight)
        self.url = url.rstrip("/")
        self._public_url = _without_userinfo(self.url)
        self._session = requests.Session()
        self._session.verify = verify  # True, False, or the path of a CA bundle
        if username is not None:
            self._session.auth = (username, password or "")
        self._token_provider = token_provider
        # For the QIDO-RS checks only; STOW-RS goes through _post_batch.
        self._client = DICOMwebClient(self.url, session=self._session, timeout=timeout)
        self._client.set_http_retry_params(retry=False)  # VOXL's policy applies instead
        self.batch_size = batch_size
        self.batch_max_bytes = batch_max_bytes
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.attempts = attempts

    def describe(self) -> str:
        return self._public_url

    def _where(self) -> str:
        return f"DICOMweb server {self._public_url}"

    def _call(self, operation: Callable[[], _T]) -> _T:
        """Run a dicomweb-client call with a fresh token; classify failures (no secrets)."""
        if self._token_provider is not None:
            self._session.headers["Authorization"] = f"Bearer {self._token_provider()}"
        try:
            return operation()
        except requests.exceptions.SSLError:
            raise UploadError(
                f"{self._where()}: TLS verification failed (check the certificate or ca_bundle)"
            ) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise UploadError(f"{self._where()} refused the credentials ({status})") from None
            if status >= 500 or status in _TRANSIENT_STATUS:
                raise TransientUploadError(f"{self._where()} answered {status}") from None
            raise UploadError(f"{self._where()} rejected the request ({status})") from None
        except requests.RequestException as exc:  # refused, reset, timed out, cut short
            raise TransientUploadError(
                f"{self._where()} unreachable or connection dropped ({type(exc).__name__})"
            ) from None

    def _post_batch(self, batch: Sequence[Path]) -> list[str]:
        """One STOW-RS request; returns the failure reason of each instance the server refused."""
        try:
            body = StowBody(batch)
        except OSError as exc:
            raise SourceFileError(
                f"cannot read an instance to send ({type(exc).__name__})"
            ) from None
        try:
            response = self._session.post(
                f"{self.url}/studies",
                data=body,
                headers={"Content-Type": body.content_type, "Accept": "application/dicom+json"},
                timeout=self.timeout,
            )
        finally:
            body.close()
        # 200: all stored; 202: some refused (or warnings only); 409: all refused.
        if response.status_code in (200, 202, 409):
            try:
                reasons = failure_reasons(response.json()) if response.content else []
            except ValueError:  # not JSON: nothing to read the failures from
                reasons = []
            if response.status_code == 409 and not reasons:
                reasons = ["?"] * len(batch)
            return reasons
        response.raise_for_status()
        raise UploadError(f"{self._where()} answered {response.status_code} to STOW-RS")

    def _store(self, batch: Sequence[Path]) -> None:
        failed = self._call(lambda: self._post_batch(batch))
        if failed:
            # Failure reasons are numeric DICOM codes: safe to show, unlike the instance UIDs.
            raise UploadError(
                f"{self._where()} rejected {len(failed)} of {len(batch)} instances "
                f"(failure reasons {', '.join(sorted(set(failed)))})"
            )

    def _store_with_retries(self, batch: Sequence[Path]) -> int:
        retry_transient(
            lambda: self._store(batch),
            what="STOW-RS batch",
            attempts=self.attempts,
            initial_delay=self.retry_delay,
        )
        return sum(p.stat().st_size for p in batch)

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        total = 0
        pending: list[Future[int]] = []
        with ThreadPoolExecutor(self.in_flight, thread_name_prefix="voxl-stow") as pool:
            try:
                for batch in stow_batches(files, self.batch_size, self.batch_max_bytes):
                    if len(pending) >= self.in_flight:
                        total += pending.pop(0).result()
                    pending.append(pool.submit(self._store_with_retries, batch))
                for future in pending:
                    total += future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )

    def stored_instance_count(self, study_uid: str) -> int:
        """How many instances of ``study_uid`` the server lists (QIDO-RS), for checks."""
        found = self._call(
            lambda: self._client.search_for_instances(
                study_instance_uid=study_uid, get_remaining=True
            )
        )
        return len(found) if isinstance(found, list) else 0

    def stored_study_uids(self) -> set[str]:
        """What the server holds (QIDO-RS), for checks after an upload."""
        found = self._call(lambda: self._client.search_for_studies(get_remaining=True))
        studies = found if isinstance(found, list) else []
        return {str(s["0020000D"]["Value"][0]) for s in studies}


def _without_userinfo(url: str) -> str:
    """``https://user:secret@host/x`` -> ``https://host/x``: never show credentials in a URL."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def study_uid_of(path: Path) -> str:
    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
    )
