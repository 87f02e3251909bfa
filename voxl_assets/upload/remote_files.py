"""What FTPS, SFTP and Azure Blob share: a study is one zip, an EHR bundle is its files, each sent
by the destination's own atomic ``_put`` with retries. Subclasses say how to put one object and
where a relative path lands."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from voxl_assets.upload.base import UploadReport, UploadTarget
from voxl_assets.upload.retrying import retry_transient
from voxl_assets.upload.zipping import StudyZipSource


class RemoteFileUploader:
    kind: str
    transfer: str  # "FTPS upload", for retry messages
    attempts: int
    retry_delay: float

    def describe(self) -> str:
        raise NotImplementedError

    def _put(self, source: Path | StudyZipSource, remote: str) -> int:
        """Send ``source`` to ``remote`` atomically; returns the bytes sent."""
        raise NotImplementedError

    def _remote(self, relative: str) -> str:
        """Where ``relative`` (a posix path) lands at the destination."""
        raise NotImplementedError

    def _put_with_retries(self, source: Path | StudyZipSource, remote: str) -> int:
        return retry_transient(
            lambda: self._put(source, remote),
            what=self.transfer,
            attempts=self.attempts,
            initial_delay=self.retry_delay,
        )

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        started = time.monotonic()
        size = self._put_with_retries(StudyZipSource(files), self._remote(target.relative_zip_path))
        return UploadReport(
            self.kind, self.describe(), len(files), size, time.monotonic() - started
        )

    def upload_tree(self, local_dir: Path, remote_prefix: str) -> UploadReport:
        started = time.monotonic()
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        total = 0
        for path in files:
            relative = f"{remote_prefix}/{path.relative_to(local_dir).as_posix()}"
            total += self._put_with_retries(path, self._remote(relative))
        return UploadReport(
            self.kind, self.describe(), len(files), total, time.monotonic() - started
        )
