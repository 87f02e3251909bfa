"""Materialise one raw study: from the cache when it is there, else from the VNA into the cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from voxl_assets.imaging.study_state import StudyRequest
from voxl_assets.retry import retry_with_backoff
from voxl_assets.vna.cache import CachedStudy, RawCache, cache_key
from voxl_assets.vna.client import StudyQuery, VnaClient, VnaUnavailable


@dataclass(frozen=True)
class RawStudyResult:
    study: CachedStudy
    cache_hit: bool
    found_by: str
    seconds: float

    @cached_property
    def series(self) -> int:
        """Counted on demand: it reads every instance's header, which only the metadata needs."""
        return _count_series(self.study.directory)

    def metadata(self) -> dict[str, object]:
        return {
            "instances": self.study.instances,
            "series": self.series,
            "bytes": self.study.bytes,
            "cache_hit": self.cache_hit,
            "found_by": self.found_by,
            "seconds": round(self.seconds, 3),
        }


def request_cache_keys(request: StudyRequest) -> list[str]:
    """Keys under which the study may be cached: by UID, then by MRN + accession."""
    keys = []
    if request.study_uid:
        keys.append(cache_key(study_uid=request.study_uid + "|" + request.series_uid))
    if request.mrn and request.accession_number:
        keys.append(
            cache_key(
                mrn=request.mrn,
                accession_number=request.accession_number + "|" + request.series_uid,
            )
        )
    return keys


def _count_series(directory: Path) -> int:
    from pydicom import dcmread

    series = set()
    for path in directory.iterdir():
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        series.add(str(header.get("SeriesInstanceUID", "")))
    return len(series)


def retrieve_raw_study(
    request: StudyRequest,
    client: VnaClient,
    cache: RawCache,
    *,
    attempts: int = 3,
    initial_delay: float = 2.0,
) -> RawStudyResult:
    """The study's cached files, retrieving them first on a miss (a hit never contacts the VNA).

    Raises StudyFailure (not found, ambiguous, refused) or, after retries, the TransientError.
    """
    started = time.monotonic()
    keys = request_cache_keys(request)
    for key in keys:
        hit = cache.lookup(key)
        if hit is not None:
            return RawStudyResult(hit, True, "cache", time.monotonic() - started)
    query = StudyQuery(request.study_uid, request.mrn, request.accession_number, request.series_uid)
    location = retry_with_backoff(
        lambda: client.find_study(query),
        attempts=attempts,
        initial_delay=initial_delay,
        what="VNA search",
    )
    key = keys[0] if location.found_by == "study_uid" or len(keys) == 1 else keys[-1]

    def fetch() -> None:
        with cache.writing(key) as staging:
            client.retrieve(location, staging)

    retry_with_backoff(fetch, attempts=attempts, initial_delay=initial_delay, what="VNA retrieval")
    study = cache.lookup(key)
    if study is None:  # evicted between commit and lookup: only under extreme cache pressure
        raise VnaUnavailable("the retrieved study was evicted at once: the raw cache is too small")
    return RawStudyResult(study, False, location.found_by, time.monotonic() - started)
