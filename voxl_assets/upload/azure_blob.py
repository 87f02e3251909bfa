"""Azure Blob Storage: the same layout as blobs in a container, blocks uploaded in parallel.

Atomic by construction: a block blob's staged blocks are invisible until the block list is
committed, in one request, at the very end. An interrupted upload therefore leaves no blob (or the
previous complete version) under the final name; its uncommitted blocks are discarded by the
service after a week. A study's zip is cut into blocks while it is built (no temporary file), and
at most ``max_concurrency + 1`` blocks are held in memory.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient, ContentSettings

from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.remote_files import RemoteFileUploader
from voxl_assets.upload.retrying import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY
from voxl_assets.upload.zipping import StudyZipSource, stream_source

T = TypeVar("T")
BLOCK_SIZE = 8 << 20  # 8 MiB: few requests per study, bounded memory, fast on Azurite and Azure


class AzureBlobUploader(RemoteFileUploader):
    kind = "azure_blob"
    transfer = "Azure Blob upload"

    def __init__(
        self,
        connection_string: str,
        container: str,
        *,
        prefix: str = "",
        max_concurrency: int = 4,
        block_size: int = BLOCK_SIZE,
        timeout: float = 120.0,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        try:
            # The SDK's own retries are off: VOXL's policy (and its messages) apply instead.
            self._service = BlobServiceClient.from_connection_string(
                connection_string,
                retry_total=0,
                connection_timeout=20,
                read_timeout=timeout,
                max_block_size=block_size,
            )
        except ValueError:
            raise UploadError("the Azure Blob connection string is malformed") from None
        self.container = container
        self.prefix = prefix.strip("/")
        self.max_concurrency = max_concurrency
        self.block_size = block_size
        self.retry_delay = retry_delay
        self.attempts = attempts

    def describe(self) -> str:
        return f"azure-blob://{self._service.account_name}/{self.container}/{self.prefix}"

    def _remote(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _classified(self, operation: Callable[[], T]) -> T:
        """Run an SDK call, turning its errors into secret-free Upload errors."""
        try:
            return operation()
        except ClientAuthenticationError:
            raise UploadError(
                f"Azure Blob refused the credentials for container {self.container}"
            ) from None
        except ResourceNotFoundError:
            raise UploadError(f"Azure Blob container {self.container} does not exist") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientUploadError(
                f"Azure Blob unreachable or connection dropped ({type(exc).__name__})"
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status in (401, 403):
                raise UploadError(
                    f"Azure Blob refused the credentials for container {self.container}"
                ) from None
            if status >= 500 or status in (0, 408, 429):
                raise TransientUploadError(f"Azure Blob answered {status}") from None
            raise UploadError(f"Azure Blob rejected the upload ({status})") from None

    def _put(self, source: Path | StudyZipSource, name: str) -> int:
        """One attempt: stage blocks in parallel, then commit the list; returns bytes."""
        blob = self._service.get_blob_client(self.container, name)
        attempt = uuid.uuid4().hex  # block ids of this attempt only; same length for all blocks
        block_ids: list[str] = []
        futures: list[Future[None]] = []
        slots = threading.BoundedSemaphore(self.max_concurrency + 1)

        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="voxl-blob") as pool:

            def stage(block: bytes) -> None:
                for done in [f for f in futures if f.done()]:
                    done.result()  # an early failure stops the stream
                block_id = base64.b64encode(f"{attempt}-{len(block_ids):06d}".encode()).decode()
                block_ids.append(block_id)
                slots.acquire()
                future = pool.submit(
                    self._classified,
                    lambda: _stage(blob, block_id, block),
                )
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)

            try:
                size = stream_source(source, stage, self.block_size)
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        self._classified(
            lambda: blob.commit_block_list(
                [BlobBlock(block_id=b) for b in block_ids],
                content_settings=ContentSettings(content_type=_content_type(name)),
            )
        )
        return size


def _stage(blob: BlobClient, block_id: str, block: bytes) -> None:
    blob.stage_block(block_id, block, length=len(block))


def _content_type(name: str) -> str:
    if name.endswith(".zip"):
        return "application/zip"
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    return "application/octet-stream"
