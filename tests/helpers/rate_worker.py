"""A worker process taking tokens of an archive's shared bucket (light imports: spawned)."""

from __future__ import annotations

from typing import Any

from voxl_assets.db import VoxlDatabase
from voxl_assets.vna.rate import SharedTokenBucket


def take_tokens(url: str, rate: float, count: int, stamps: Any, start: Any) -> None:
    database = VoxlDatabase(url)
    bucket = SharedTokenBucket(database, "vna", rate)
    start.wait(60)  # both processes ready: they compete from the first token
    for _ in range(count):
        bucket.acquire()
        assert bucket.last_grant is not None
        stamps.append(bucket.last_grant.timestamp())  # the database's clock: no scheduling noise
    database.dispose()
