"""Materialise one raw study: from the cache when it is there, else from the hospital's archives.

The archives are asked in priority order; an archive whose time window is closed is not asked, and
the study waits for the window (``ArchiveWindowClosed``) instead of failing. A study the cache holds
only in part (an interrupted retrieval) is topped up: the archive lists the study's instances and
only the missing ones are retrieved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from voxl_assets.outcomes import StudyWaiting
from voxl_assets.retry import TransientError, retry_with_backoff
from voxl_assets.study_state import StudyRequest
from voxl_assets.vna.archives import Archive, ArchiveSet
from voxl_assets.vna.cache import CachedStudy, RawCache, cache_key
from voxl_assets.vna.client import (
    Retrieved,
    StudyLocation,
    StudyNotFound,
    StudyQuery,
    VnaClient,
    VnaUnavailable,
    instance_file_name,
)


class ArchiveWindowClosed(StudyWaiting):
    """The study needs an archive whose window is closed: it waits, it has not failed."""

    def __init__(self, archive: Archive, opens_at: datetime) -> None:
        window = archive.config.window
        described = window.describe() if window else "always open"
        super().__init__(
            f"archive {archive.name} window ({described}); opens {opens_at:%Y-%m-%d %H:%M} UTC",
            not_before=opens_at,
        )
        self.archive = archive.name


@dataclass(frozen=True)
class RawStudyResult:
    study: CachedStudy
    cache_hit: bool
    found_by: str
    seconds: float
    archive: str = "cache"
    topped_up: int = 0  # instances added to a partly cached study
    archive_sent: int | None = None  # what the archive reports it sent (C-GET/C-MOVE)

    @cached_property
    def series(self) -> int:
        """Counted on demand: it reads every instance's header, which only the metadata needs."""
        return _count_series(self.study.directory)

    def metadata(self) -> dict[str, object]:
        """Where the study came from and its size; how it was found only when an archive was
        asked, top-ups only when there were any (the stage's seconds are added by the asset)."""
        metadata: dict[str, object] = {
            "instances": self.study.instances,
            "series": self.series,
            "bytes": self.study.bytes,
            "cache_hit": self.cache_hit,
        }
        if not self.cache_hit:
            metadata["archive"] = self.archive
            metadata["found_by"] = self.found_by
        if self.topped_up:
            metadata["topped_up"] = self.topped_up
        return metadata


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


def locate_study(
    query: StudyQuery, archives: ArchiveSet, *, attempts: int, initial_delay: float
) -> tuple[Archive, StudyLocation]:
    """The first archive, in priority order, that holds the study.

    An archive whose window is closed stops the search (``ArchiveWindowClosed``): asking the next
    one instead would load a lower-priority archive for a study the closed one may hold.
    """
    now = archives.clock()
    not_found: list[tuple[str, StudyNotFound]] = []
    for archive in archives:
        window = archive.config.window
        if window is not None and not window.is_open(now):
            raise ArchiveWindowClosed(archive, window.next_opening(now))

        def find(client: VnaClient = archive.client) -> StudyLocation:
            return client.find_study(query)

        try:
            location = retry_with_backoff(
                find,
                attempts=attempts,
                initial_delay=initial_delay,
                what=f"search of archive {archive.name}",
            )
        except StudyNotFound as exc:
            not_found.append((archive.name, exc))
            continue
        return archive, location
    if len(not_found) == 1:
        raise not_found[0][1]
    names = ", ".join(a.name for a in archives)
    with_study = [name for name, exc in not_found if "requested series" in str(exc)]
    if with_study:
        raise StudyNotFound(
            f"requested series not found on any archive ({names}); the study is on "
            + ", ".join(with_study)
        )
    raise StudyNotFound(
        f"study not found on any archive ({names}) by study UID nor by MRN + accession"
    )


def _retrieve_into_cache(
    client: VnaClient, location: StudyLocation, cache: RawCache, key: str
) -> tuple[Retrieved, int]:
    """Retrieve the study, or top up a partial cache entry. Returns (retrieval, instances added
    by a top-up)."""
    partial = cache.lookup(key, partial=True)
    if partial is None:
        with cache.writing(key, keep_partial_on=(TransientError,)) as staging:
            return client.retrieve(location, staging), 0
    held = partial.file_names()
    missing = [
        ref
        for ref in client.list_instances(location)
        if instance_file_name(ref.sop_uid) not in held
    ]
    with cache.writing(key, keep_existing=True, keep_partial_on=(TransientError,)) as staging:
        if not missing:
            return Retrieved(0, 0), 0
        retrieved = client.retrieve_instances(location, missing, staging)
    return retrieved, retrieved.received


def retrieve_raw_study(
    request: StudyRequest,
    archives: ArchiveSet | VnaClient,
    cache: RawCache,
    *,
    attempts: int = 3,
    initial_delay: float = 2.0,
    top_up_cached: bool = False,
) -> RawStudyResult:
    """The study's cached files, retrieving them first on a miss (a hit never contacts an archive,
    unless ``top_up_cached`` asks to check a complete cached study for instances added since).

    Raises StudyFailure (not found, ambiguous, refused), ArchiveWindowClosed (wait) or, after
    retries, the TransientError.
    """
    if not isinstance(archives, ArchiveSet):
        archives = ArchiveSet.single(archives)
    started = time.monotonic()
    keys = request_cache_keys(request)
    hit = next((s for s in (cache.lookup(k) for k in keys) if s is not None), None)
    if hit is not None and not top_up_cached:
        return RawStudyResult(hit, True, "cache", time.monotonic() - started)
    query = StudyQuery(request.study_uid, request.mrn, request.accession_number, request.series_uid)
    archive, location = locate_study(
        query, archives, attempts=attempts, initial_delay=initial_delay
    )
    key = keys[0] if location.found_by == "study_uid" or len(keys) == 1 else keys[-1]
    if hit is not None and hit.key != key:
        key = hit.key
    outcome: list[tuple[Retrieved, int]] = []

    def fetch() -> None:
        outcome.append(_retrieve_into_cache(archive.client, location, cache, key))

    retry_with_backoff(
        fetch,
        attempts=attempts,
        initial_delay=initial_delay,
        what=f"retrieval from archive {archive.name}",
    )
    study = cache.lookup(key)
    if study is None:  # evicted between commit and lookup: only under extreme cache pressure
        raise VnaUnavailable("the retrieved study was evicted at once: the raw cache is too small")
    retrieved, topped_up = outcome[-1]
    return RawStudyResult(
        study,
        False,
        location.found_by,
        time.monotonic() - started,
        archive=archive.name,
        topped_up=topped_up,
        archive_sent=retrieved.archive_sent,
    )
