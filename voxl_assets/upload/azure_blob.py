"""Azure Blob Storage: the same layout as blobs in a container, blocks uploaded in parallel.

A block blob becomes visible only when its block list is committed at the end of the upload, so
an interrupted upload leaves nothing that looks complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.storage.blob import BlobServiceClient

from voxl_assets.retry import retry_with_backoff
from voxl_assets.upload.base import TransientUploadError, UploadError, UploadReport, UploadTarget
from voxl_assets.upload.zipping import study_zip


class AzureBlobUploader:
    kind = "azure_blob"

    def __init__(
        self,
        connection_string: str,
        container: str,
        *,
        prefix: str = "",
        max_concurrency: int = 4,
        retry_delay: float = 2.0,
    ) -> None:
        self._service = BlobServiceClient.from_connection_string(
            connection_string, retry_total=0, connection_timeout=20
        )
        self.container = container
        self.prefix = prefix.strip("/")
        self.max_concurrency = max_concurrency
        self.retry_delay = retry_delay

    def describe(self) -> str:
        return f"azure-blob://{self._service.account_name}/{self.container}/{self.prefix}"

    def _name(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _put(self, local: Path, name: str) -> None:
        blob = self._service.get_blob_client(self.container, name)
        try:
            with local.open("rb") as handle:
                blob.upload_blob(handle, overwrite=True, max_concurrency=self.max_concurrency)
        except ClientAuthenticationError:
            raise UploadError(
                f"Azure Blob refused the credentials for container {self.container}"
            ) from None
        except ServiceRequestError as exc:
            raise TransientUploadError(f"Azure Blob unreachable ({type(exc).__name__})") from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status in (401, 403):
                raise UploadError(
                    f"Azure Blob refused the credentials for container {self.container}"
                ) from None
            if status == 404:
                raise UploadError(f"Azure Blob container {self.container} does not exist") from None
            raise TransientUploadError(f"Azure Blob answered {status}") from None

    def _put_with_retries(self, local: Path, name: str) -> None:
        retry_with_backoff(
            lambda: self._put(local, name),
            attempts=4,
            initial_delay=self.retry_delay,
            retry_on=(TransientUploadError,),
            what="Azure Blob upload",
        )

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        with study_zip(files) as archive:
            self._put_with_retries(archive, self._name(target.relative_zip_path))
            size = archive.stat().st_size
        return UploadReport(
            self.kind, self.describe(), len(files), size, time.monotonic() - started
        )

    def upload_tree(self, local_dir: Path, remote_prefix: str) -> UploadReport:
        started = time.monotonic()
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for path in files:
            self._put_with_retries(
                path, self._name(f"{remote_prefix}/{path.relative_to(local_dir).as_posix()}")
            )
        total = sum(p.stat().st_size for p in files)
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )
