"""STOW-RS request bodies streamed from disk, and what the server's answer says failed.

A stored instance file is already what a STOW-RS part must hold (a DICOM Part 10 file), so a batch
is sent as its files' bytes between multipart boundaries, read from disk while the request goes
out: nothing is parsed or re-encoded, and a batch costs one read buffer of memory, not the batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"


class StowBody:
    """``multipart/related; type="application/dicom"`` of ``files``, read as it is sent.

    requests sends an object with ``read`` and ``__len__`` (and no ``__iter__``) with a
    Content-Length header, reading it in blocks, so servers that refuse chunked uploads take it.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self.boundary = f"voxl-{uuid.uuid4().hex}"
        self.content_type = f'multipart/related; type="application/dicom"; boundary={self.boundary}'
        head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._pieces: list[bytes | Path] = []
        for path in files:
            self._pieces += [head, path, b"\r\n"]
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self._length = sum(
            len(piece) if isinstance(piece, bytes) else piece.stat().st_size
            for piece in self._pieces
        )
        self._index = 0
        self._offset = 0  # into the current bytes piece
        self._file: IO[bytes] | None = None

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._length
        out = bytearray()
        while len(out) < size and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if isinstance(piece, bytes):
                chunk = piece[self._offset : self._offset + size - len(out)]
                self._offset += len(chunk)
                done = self._offset >= len(piece)
            else:
                if self._file is None:
                    self._file = piece.open("rb")
                chunk = self._file.read(size - len(out))
                done = not chunk
            out += chunk
            if done:
                self._next_piece()
        return bytes(out)

    def _next_piece(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._index += 1
        self._offset = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def failure_reasons(response_json: Any) -> list[str]:
    """FailureReason of each item of the answer's FailedSOPSequence (numeric DICOM codes; the
    items' UIDs are not read, so they cannot reach a message)."""
    if not isinstance(response_json, dict):
        return []
    sequence = response_json.get(_FAILED_SOP_SEQUENCE, {})
    items = sequence.get("Value", []) if isinstance(sequence, dict) else []
    reasons = []
    for item in items:
        reason = (
            item.get(_FAILURE_REASON, {}).get("Value", ["?"]) if isinstance(item, dict) else ["?"]
        )
        reasons.append(str(reason[0]) if reason else "?")
    return reasons
