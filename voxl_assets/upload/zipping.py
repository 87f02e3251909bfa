"""One zip per study, streamed: straight into the transport, or into a temporary file.

Entries are stored, not deflated: anonymised DICOM pixel data barely compresses (a few percent for
CT, nothing for already-compressed transfer syntaxes), and deflate would cost more CPU time than the
upload itself on a LAN. The zip is never built in memory: files are copied in ``CHUNK`` pieces, and
a writer that cannot seek (a socket, an SFTP handle) gets data descriptors instead of patched
headers, which every unzip tool reads.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from voxl_assets.upload.base import UploadError

CHUNK = 1 << 20  # 1 MiB: few system calls, few TLS records, little memory


class StreamSink(io.RawIOBase):
    """A write-only, non-seekable file object that hands ``CHUNK``-sized pieces to ``send``.

    zipfile writes many small pieces (headers, then 8 KiB copies); buffering them here keeps the
    transport's per-call overhead (TLS record, SFTP request) off the hot path.
    """

    def __init__(self, send: Callable[[bytes], object], chunk: int = CHUNK) -> None:
        super().__init__()
        self._send = send
        self._chunk = chunk
        self._buffer = bytearray()
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = len(data)
        self.bytes_written += size
        if not self._buffer and size >= self._chunk:
            self._send(bytes(data))
            return size
        self._buffer += data
        if len(self._buffer) >= self._chunk:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        return size

    def flush(self) -> None:
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()

    def close(self) -> None:
        if not self.closed:
            self.flush()
        super().close()


class SourceFileError(UploadError):
    """A local file to send cannot be read: not worth retrying, and not the peer's fault."""


def _open_source(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise SourceFileError(f"cannot read {path.name} ({type(exc).__name__})") from None


def _read(source: IO[bytes], path: Path, size: int) -> bytes:
    # Only the local read is wrapped: a failing write belongs to the transport (OSError).
    try:
        return source.read(size)
    except OSError as exc:
        raise SourceFileError(f"cannot read {path.name} ({type(exc).__name__})") from None


def write_study_zip(files: Sequence[Path], sink: IO[bytes]) -> None:
    """Write ``files`` as one stored zip (entries named by file name) into ``sink``.

    Raises:
        SourceFileError: a file cannot be read. Errors of ``sink`` propagate unchanged.
    """
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in files:
            with _open_source(path) as source:
                stat = os.fstat(source.fileno())
                # zip cannot date a file before 1980 (anonymisation may have shifted mtimes).
                modified = max(time.localtime(stat.st_mtime)[:6], (1980, 1, 1, 0, 0, 0))
                info = zipfile.ZipInfo(path.name, modified)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = (stat.st_mode & 0xFFFF) << 16
                # Known in advance, so zipfile picks ZIP64 for huge entries even on a stream.
                info.file_size = stat.st_size
                with archive.open(info, "w") as entry:
                    while block := _read(source, path, CHUNK):
                        entry.write(block)


def stream_study_zip(
    files: Sequence[Path], send: Callable[[bytes], object], chunk: int = CHUNK
) -> int:
    """Zip ``files`` into ``send`` (called in order with pieces of about ``chunk`` bytes);
    returns the zip's size."""
    sink = StreamSink(send, chunk)
    write_study_zip(files, sink)  # type: ignore[arg-type]
    sink.close()
    return sink.bytes_written


def write_zip_file(files: Sequence[Path], path: Path, *, fsync: bool = False) -> int:
    """Zip ``files`` into the file ``path`` (created or truncated); returns its size.
    ``fsync`` before a rename makes the final name durable, not only visible."""
    with path.open("wb") as handle:
        write_study_zip(files, handle)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
        return handle.tell()


@contextmanager
def study_zip(files: Sequence[Path], scratch: Path | None = None) -> Iterator[Path]:
    """A temporary zip of ``files`` on disk (for transports that need a file); removed on exit."""
    with tempfile.TemporaryDirectory(prefix="voxl-zip-", dir=scratch) as tmp:
        path = Path(tmp) / "study.zip"
        write_zip_file(files, path)
        yield path


class StudyZipSource:
    """A study to be zipped on the fly: what a transport's put sends instead of a local file."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def stream(self, send: Callable[[bytes], object], chunk: int = CHUNK) -> int:
        return stream_study_zip(self.files, send, chunk)


def stream_source(
    source: Path | StudyZipSource, send: Callable[[bytes], object], chunk: int = CHUNK
) -> int:
    """Send a local file or a study zip through ``send`` in pieces of about ``chunk`` bytes;
    returns the bytes sent."""
    if isinstance(source, StudyZipSource):
        return source.stream(send, chunk)
    total = 0
    with _open_source(source) as handle:
        while block := _read(handle, source, chunk):
            send(block)
            total += len(block)
    return total
