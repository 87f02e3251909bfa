"""Retries with exponential backoff, and a token bucket to pace queries to hospital systems."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class TransientError(Exception):
    """A failure worth retrying (network drop, timeout, a busy peer)."""


def retry_with_backoff(
    operation: Callable[[], T],
    *,
    attempts: int = 4,
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError),
    what: str = "operation",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``operation`` until it succeeds, sleeping 1x, 2x, 4x ... ``initial_delay`` (+ jitter).

    Only exceptions in ``retry_on`` are retried; the last one is re-raised after ``attempts``.
    ``what`` names the operation in log lines and must not contain identifiers.
    """
    delay = initial_delay
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except retry_on as exc:
            if attempt == attempts:
                raise
            wait = min(max_delay, delay) * (1 + random.uniform(0, 0.25))
            log.warning(
                "%s failed (attempt %d of %d: %s); retrying in %.1f s",
                what,
                attempt,
                attempts,
                type(exc).__name__,
                wait,
            )
            sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


class TokenBucket:
    """Allow ``rate`` acquisitions per second on average, bursts up to ``capacity``. Thread-safe."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (queries per second)")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (the operator's `voxl archives rate`)."""
        if rate <= 0:
            raise ValueError("rate must be positive (queries per second)")
        with self._lock:
            self.rate = rate
            self.capacity = max(1.0, rate)
            self._tokens = min(self._tokens, self.capacity)

    def acquire(self) -> float:
        """Take one token, waiting if needed; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return waited
                needed = (1 - self._tokens) / self.rate
            self._sleep(needed)
            waited += needed
