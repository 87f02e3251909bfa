"""The three per-study stages, wired to their parts: VNA + raw cache, engine + anonymised store,
the project's destination client + exactly-once records. Plain Python: the Dagster asset only
feeds it resources (the destination clients belong to the run: ``resources/destinations.py``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from voxl_assets.db import Extract, ExtractStudy, Study, StudyStatus, VoxlDatabase
from voxl_assets.deid.engine import Deidentifier
from voxl_assets.deid.hashing import HashingBackend
from voxl_assets.deid.store import AnonymisedStore
from voxl_assets.deid.study import PrivacyCheckFailed, anonymise_study, build_deidentifier
from voxl_assets.imaging.pipeline import Stage, StageOutcome, StageResult
from voxl_assets.outcomes import StudyFailure
from voxl_assets.project_config import ProjectRegistry
from voxl_assets.retry import TransientError
from voxl_assets.study_state import StudyRequest, set_status
from voxl_assets.upload.base import UploadError, UploadTarget
from voxl_assets.upload.destinations import DestinationClients
from voxl_assets.upload.exactly_once import (
    exported_instances,
    undelivered_instances,
    upload_study_once,
)
from voxl_assets.vna.archives import ArchiveSet
from voxl_assets.vna.cache import CacheFull, RawCache
from voxl_assets.vna.raw import RawStudyResult, request_cache_keys, retrieve_raw_study

NO_DESTINATION = "none"


@dataclass
class StudyStages:
    database: VoxlDatabase
    registry: ProjectRegistry
    hashing: HashingBackend
    archives: ArchiveSet
    raw_cache: RawCache
    anonymised: AnonymisedStore
    destinations: DestinationClients | None = None  # the run's; needed by the upload stage only
    force_upload: bool = False
    retry_delay: float = 2.0
    top_up_cached: bool = False  # check cached studies for instances the archive gained since

    def __post_init__(self) -> None:
        self._deidentifiers: dict[str, Deidentifier] = {}
        self._lock = threading.Lock()

    def functions(self) -> dict[Stage, Callable[[StudyRequest, dict[Stage, StageOutcome]], Any]]:
        return {Stage.RAW: self.raw, Stage.ANONYMISED: self.anonymise, Stage.UPLOAD: self.upload}

    # --- helpers ---------------------------------------------------------------------------

    def _project(self, request: StudyRequest) -> Any:
        project = self.registry.get(request.project)
        if project is None:
            raise StudyFailure(
                f"project {request.project} has no definition in project_definitions/"
            )
        return project

    def _deidentifier(self, request: StudyRequest) -> Deidentifier:
        with self._lock:
            if request.project not in self._deidentifiers:
                self._deidentifiers[request.project] = build_deidentifier(
                    self._project(request), self.registry.directory, self.hashing
                )
            return self._deidentifiers[request.project]

    def _uploader(self, request: StudyRequest) -> Any:
        """The project's image client, kept by ``destinations`` for the run's next study."""
        if self.destinations is None:
            raise TypeError("StudyStages needs the run's destination clients to upload")
        try:
            return self.destinations.images(self._project(request))
        except UploadError as exc:
            raise StudyFailure(str(exc)) from None

    def _raw(self, request: StudyRequest, *, top_up: bool = False) -> RawStudyResult:
        try:
            return retrieve_raw_study(
                request,
                self.archives,
                self.raw_cache,
                initial_delay=self.retry_delay,
                top_up_cached=top_up,
            )
        except (TransientError, CacheFull) as exc:
            raise StudyFailure(str(exc)) from None

    # --- stages ----------------------------------------------------------------------------

    def raw(self, request: StudyRequest, _previous: dict[Stage, StageOutcome]) -> dict[str, Any]:
        # Pinned from before the lookup until its files were read (the metadata counts series):
        # other runs are other processes that may evict from the same cache meanwhile.
        with self.raw_cache.pin(*request_cache_keys(request)):
            result = self._raw(request, top_up=self.top_up_cached)
            metadata = result.metadata()
        set_status(self.database, request.study_id, StudyStatus.RETRIEVED, count_attempt=True)
        return metadata

    def anonymise(
        self, request: StudyRequest, _previous: dict[Stage, StageOutcome]
    ) -> dict[str, Any] | StageOutcome:
        deidentifier = self._deidentifier(request)
        with self.raw_cache.pin(*request_cache_keys(request)):
            raw = self._raw(request)  # a cache hit when the raw stage just ran
            try:
                result = anonymise_study(
                    request, raw.study.files(), deidentifier, self.anonymised, self.database
                )
            except PrivacyCheckFailed as exc:
                return StageOutcome(
                    request.partition_key,
                    Stage.ANONYMISED,
                    StageResult.FAILED,
                    0.0,
                    str(exc),
                    checks=exc.checks,
                )
        return StageOutcome(
            request.partition_key,
            Stage.ANONYMISED,
            StageResult.DONE,
            0.0,
            metadata=result.metadata(),
            checks=result.checks(),
        )

    def _extract_datetime(self, study_id: int) -> datetime:
        with self.database.engine.connect() as connection:  # a read: no session's unit of work
            found = connection.scalar(
                select(Extract.extract_datetime)
                .join(ExtractStudy, ExtractStudy.extract_id == Extract.id)
                .where(ExtractStudy.study_id == study_id)
                .order_by(Extract.extract_datetime.desc())
            )
        if found is None:
            raise StudyFailure("study belongs to no extract")
        return found

    def _anonymised_files(self, request: StudyRequest) -> list[Path]:
        """The study's anonymised files; anonymised again (from the raw cache, or the archive
        when the cache let it go) when the store no longer holds them: it keeps a study only
        until it is delivered, and within its bound. The pseudonyms come out the same."""
        files = self.anonymised.files(request.project, request.study_id)
        if files:
            return files
        outcome = self.anonymise(request, {})
        if isinstance(outcome, StageOutcome) and outcome.result is not StageResult.DONE:
            raise StudyFailure(f"anonymising again for the upload failed: {outcome.reason}")
        files = self.anonymised.files(request.project, request.study_id)
        if not files:
            raise StudyFailure("no anonymised study to upload: materialise anonymised_study first")
        return files

    def _pseudo_uid(self, request: StudyRequest) -> str:
        with self.database.engine.connect() as connection:  # one column: no ORM object
            pseudo_uid = connection.scalar(
                select(Study.pseudo_study_uid).where(Study.id == request.study_id)
            )
        if not pseudo_uid:
            raise StudyFailure("the study has no pseudonymous UID: re-run anonymised_study")
        return pseudo_uid

    def _delivered(self, request: StudyRequest) -> None:
        """Every destination has the study: it leaves the anonymised store."""
        set_status(self.database, request.study_id, StudyStatus.UPLOADED)
        self.anonymised.delivered(request.project, request.study_id)

    def upload(self, request: StudyRequest, _previous: dict[Stage, StageOutcome]) -> dict[str, Any]:
        uploader = self._uploader(request)
        if uploader is None:
            files = self._anonymised_files(request)
            self._delivered(request)
            return {"destination_kind": NO_DESTINATION, "instances": len(files), "sent": False}
        if not self.force_upload and not self.anonymised.files(request.project, request.study_id):
            instances = exported_instances(self.database, request.study_id, uploader.describe())
            if instances is not None:
                # Delivered, and not anonymised again since (a top-up would have): nothing to
                # send, nothing to keep.
                self._delivered(request)
                return {"destination_kind": uploader.kind, "instances": instances, "sent": False}
        files = self._anonymised_files(request)
        target = UploadTarget(
            request.project, self._extract_datetime(request.study_id), self._pseudo_uid(request)
        )
        redeliver = self._project(request).destinations.redeliver_topped_up
        try:
            report = upload_study_once(
                self.database,
                request.study_id,
                uploader,
                files,
                target,
                force=self.force_upload,
                redeliver=redeliver,
            )
        except (UploadError, TransientError) as exc:
            raise StudyFailure(str(exc)) from None
        self._delivered(request)
        if report is None:
            metadata: dict[str, Any] = {
                "destination_kind": uploader.kind,
                "instances": len(files),
                "sent": False,
            }
            if redeliver == "never":
                # A topped-up study's new instances, held back by the project's setting.
                metadata["not_redelivered"] = undelivered_instances(
                    self.database, request.study_id, uploader.describe(), files
                )
            return metadata
        sent: dict[str, Any] = {  # the stage's seconds are added by the asset
            "destination_kind": report.kind,
            "instances": report.instances,
            "bytes": report.bytes,
            "sent": True,
        }
        if report.resend:  # an earlier attempt was cut off: this one may be a duplicate
            sent["resend"] = True
        if report.revision > 1:
            sent["revision"] = report.revision
            if not self.force_upload:
                sent["redelivered"] = redeliver  # a topped-up study: replace or add
        return sent
