"""Retry policy shared by the uploaders: only ``TransientUploadError`` is retried."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from voxl_assets.retry import retry_with_backoff
from voxl_assets.upload.base import TransientUploadError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 4
DEFAULT_RETRY_DELAY = 2.0


def retry_transient(
    operation: Callable[[], T], *, what: str, attempts: int, initial_delay: float
) -> T:
    """Call ``operation`` with exponential backoff on transient failures (peer down, dropped
    connection, 5xx); anything else (credentials, host key, 4xx) propagates at once.
    ``what`` must not hold identifiers."""
    return retry_with_backoff(
        operation,
        attempts=attempts,
        initial_delay=initial_delay,
        retry_on=(TransientUploadError,),
        what=what,
    )
