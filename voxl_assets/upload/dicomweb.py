"""STOW-RS to a DICOMweb server (researcher-managed, or the Azure DICOM service with a token)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests
from pydicom import dcmread

from voxl_assets.retry import retry_with_backoff
from voxl_assets.upload.base import TransientUploadError, UploadError, UploadReport, UploadTarget


class DicomWebUploader:
    """Sends a study in batches of ``batch_size`` instances (one multipart request each)."""

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
        timeout: float = 120.0,
        retry_delay: float = 2.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.verify = verify
        if username is not None:
            self._session.auth = (username, password or "")
        self._token_provider = token_provider
        self.batch_size = batch_size
        self.timeout = timeout
        self.retry_delay = retry_delay

    def describe(self) -> str:
        return self.url

    def _post(self, batch: Sequence[Path]) -> None:
        boundary = f"voxl-{time.monotonic_ns()}"
        parts = []
        for path in batch:
            parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            parts.append(path.read_bytes())
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        if self._token_provider is not None:
            headers["Authorization"] = f"Bearer {self._token_provider()}"
        try:
            response = self._session.post(
                f"{self.url}/studies", data=b"".join(parts), headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TransientUploadError(
                f"DICOMweb server {self.url} unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code in (401, 403):
            raise UploadError(
                f"DICOMweb server {self.url} refused the credentials ({response.status_code})"
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientUploadError(
                f"DICOMweb server {self.url} answered {response.status_code}"
            )
        if response.status_code not in (200, 202):
            raise UploadError(
                f"DICOMweb server {self.url} rejected the instances ({response.status_code})"
            )

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        total = 0
        for start in range(0, len(files), self.batch_size):
            batch = files[start : start + self.batch_size]
            retry_with_backoff(
                lambda batch=batch: self._post(batch),  # type: ignore[misc]
                attempts=4,
                initial_delay=self.retry_delay,
                retry_on=(TransientUploadError,),
                what="STOW-RS batch",
            )
            total += sum(p.stat().st_size for p in batch)
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )

    def stored_study_uids(self) -> set[str]:
        """What the server holds (QIDO-RS), for checks after an upload."""
        response = self._session.get(f"{self.url}/studies", timeout=self.timeout)
        response.raise_for_status()
        return {str(s["0020000D"]["Value"][0]) for s in response.json() or []}


def study_uid_of(path: Path) -> str:
    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
    )
