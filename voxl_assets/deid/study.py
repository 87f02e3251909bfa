"""Anonymise one cached study for its project: engine, checks, store and VOXL db together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxl_assets.db import StudyDeidSummary, StudyStatus, VoxlDatabase
from voxl_assets.db.models import utcnow
from voxl_assets.deid.checks import CheckResult
from voxl_assets.deid.engine import Deidentifier, DeidReport, OutputCheckError
from voxl_assets.deid.hashing import HashingBackend, ProjectHasher
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.operations import TagPolicy, load_policy
from voxl_assets.deid.store import AnonymisedStore
from voxl_assets.deid.tally import DeidTally
from voxl_assets.outcomes import StudyFailure, StudyFiltered
from voxl_assets.project_config import ProjectDefinition, tag_operations_dir
from voxl_assets.study_state import StudyRequest, set_status

ALLOW_LIST_CHECK = "no_tag_outside_allow_list"
IDENTIFIER_CHECK = "no_identifier_in_output"


class PrivacyCheckFailed(StudyFailure):
    """The output failed a privacy check; it is removed and the study is not uploaded."""

    def __init__(self, message: str, checks: dict[str, tuple[bool, str]]) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass
class AnonymisedStudy:
    """A study that passed: every output instance was checked in memory before it was written
    (engine.py), so both privacy checks hold for all ``report.instances_out`` files."""

    report: DeidReport

    def metadata(self) -> dict[str, Any]:
        """The counts always; filters, refusals, VR changes and blanking only when there were
        any (an absent entry reads as none: every entry is written to Dagster's event log twice
        for each of a cohort's studies)."""
        report = self.report
        metadata: dict[str, Any] = {
            "instances_in": report.instances_in,
            "instances_out": report.instances_out,
            "series_out": report.series_out,
            "bytes_out": report.bytes_out,
        }
        if report.filtered:
            metadata["instances_filtered"] = sum(report.filtered.values())
            metadata["filter_reasons"] = report.filter_summary()
        if report.refused:
            metadata["instances_refused"] = sum(report.refused.values())
            metadata["refusal_reasons"] = report.refusal_summary()
        if report.vr_changes:
            metadata["vr_changes"] = ", ".join(
                f"{change} x{n}" for change, n in sorted(report.vr_changes.items())
            )
        if report.blanked_instances:
            metadata["ultrasound_blanked"] = report.blanked_instances
        return metadata

    def checks(self) -> dict[str, tuple[bool, str]]:
        summary = CheckResult(files_checked=self.report.instances_out).summary()
        return {ALLOW_LIST_CHECK: (True, summary), IDENTIFIER_CHECK: (True, summary)}


def build_deidentifier(
    project: ProjectDefinition, projects_dir: Path, backend: HashingBackend
) -> Deidentifier:
    ops_dir = tag_operations_dir(projects_dir)
    policy: TagPolicy = load_policy(
        ops_dir, project.tag_operations.base, project.tag_operations.manufacturer_overrides
    )
    return Deidentifier(project, policy, ProjectHasher(backend, project.slug))


def request_identifiers(request: StudyRequest) -> StudyIdentifiers:
    identifiers = StudyIdentifiers()
    for value in (request.mrn, request.accession_number, request.study_uid, request.series_uid):
        if value:
            identifiers.add(value)
    return identifiers


def study_tally(
    report: DeidReport | None,
    policy: TagPolicy,
    checks: dict[str, tuple[bool, str]],
    instances_in: int,
) -> DeidTally:
    """One study's tally from the engine's report (None: a privacy check stopped it, so nothing
    of it was written) and the checks it ran."""
    tally = DeidTally(studies=1, instances_in=instances_in)
    tally.add_profile_files(policy.files)
    checked = 0
    if report is not None:
        tally.instances_in = report.instances_in
        tally.instances_out = report.instances_out
        tally.studies_written = int(report.instances_out > 0)
        tally.studies_filtered = int(report.instances_out == 0 and not report.refused)
        tally.attributes.update(report.attributes)
        tally.filtered.update(report.filtered)
        tally.refused.update(report.refused)
        tally.vr_changes.update(report.vr_changes)
        checked = report.instances_out
    for name, (passed, _detail) in checks.items():
        tally.add_check(name, passed, checked)
    tally.studies_failed_checks = int(any(not passed for passed, _ in checks.values()))
    return tally


def save_study_tally(database: VoxlDatabase, study_id: int, tally: DeidTally) -> None:
    """Record (or replace) the study's tally: the extract's report sums these."""
    with database.session() as session:
        row = session.get(StudyDeidSummary, study_id)
        if row is None:
            session.add(
                StudyDeidSummary(study_id=study_id, summary=tally.to_json(), updated_at=utcnow())
            )
        else:
            row.summary = tally.to_json()
            row.updated_at = utcnow()


def anonymise_study(
    request: StudyRequest,
    raw_files: Sequence[Path],
    deidentifier: Deidentifier,
    store: AnonymisedStore,
    database: VoxlDatabase,
) -> AnonymisedStudy:
    """De-identify ``raw_files`` into the store, check the output, record pseudonyms.

    Raises:
        StudyFiltered: every instance was filtered out (the reasons are counted in the message).
        PrivacyCheckFailed: the output holds a tag outside the allow-list or an identifier.
    """
    identifiers = request_identifiers(request)
    with store.writing(request.project, request.study_id) as staging:
        try:
            report = deidentifier.deidentify_study(
                raw_files, staging, identifiers, request.participant_id or None
            )
        except OutputCheckError as exc:
            checks = {
                ALLOW_LIST_CHECK: (not exc.disallowed, str(exc) if exc.disallowed else "passed"),
                IDENTIFIER_CHECK: (not exc.leaks, str(exc) if exc.leaks else "passed"),
            }
            failed = [name for name, (ok, _) in checks.items() if not ok]
            save_study_tally(
                database,
                request.study_id,
                study_tally(None, deidentifier.policy, checks, len(raw_files)),
            )
            raise PrivacyCheckFailed(f"privacy check failed: {', '.join(failed)}", checks) from None
        if report.instances_out == 0:
            save_study_tally(
                database, request.study_id, study_tally(report, deidentifier.policy, {}, 0)
            )
            if report.refused:  # broken files are a failure to retrieve, not a project's filter
                reasons = ", ".join(
                    r for r in (report.refusal_summary(), report.filter_summary()) if r
                )
                raise StudyFailure(f"no instance could be written ({reasons})")
            raise StudyFiltered(
                f"all {report.instances_in} instances filtered out ({report.filter_summary()})"
            )
        result = AnonymisedStudy(report)
        save_study_tally(
            database,
            request.study_id,
            study_tally(report, deidentifier.policy, result.checks(), report.instances_in),
        )
    set_status(
        database,
        request.study_id,
        StudyStatus.ANONYMISED,
        details={"deid": result.metadata()},
        pseudo_study_uid=report.pseudo_study_uid,
        # A participant id names the patient in the mapping table even where the allow-list
        # writes no PatientID.
        pseudo_patient_id=request.participant_id or report.pseudo_patient_id,
    )
    return result
