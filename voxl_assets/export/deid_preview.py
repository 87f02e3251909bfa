"""``voxl deid-preview PROJECT PATH``: the de-identification report of a sample folder, before
any export, so the information-governance team can review a project's rules on real headers
inside the hospital.

The folder's studies go through the same engine, checks and tallies as a run (with a throwaway
hashing key, so no pseudonym of the preview matches a real export's); the de-identified
instances are written to a temporary folder and deleted, and only the report stays.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from voxl_assets.db import VoxlDatabase
from voxl_assets.deid.engine import OutputCheckError, iter_study_files
from voxl_assets.deid.hashing import LocalHashing, SaltStore
from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.deid.study import (
    ALLOW_LIST_CHECK,
    IDENTIFIER_CHECK,
    AnonymisedStudy,
    build_deidentifier,
    study_tally,
)
from voxl_assets.deid.tally import DeidTally
from voxl_assets.export.bundle import voxl_version
from voxl_assets.export.deid_report import ReportContext, write_deid_report
from voxl_assets.project_config import ProjectDefinition


@dataclass
class PreviewResult:
    tally: DeidTally
    studies: int
    files: list[Path]  # the report's files


def sample_studies(folder: Path) -> list[list[Path]]:
    """The studies of a sample folder: the folder itself when it holds files, otherwise each
    sub-folder (all files below it), in name order."""
    if any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir()):
        return [iter_study_files(folder)]
    studies = [iter_study_files(sub) for sub in sorted(folder.iterdir()) if sub.is_dir()]
    return [files for files in studies if files]


def preview_report(
    project: ProjectDefinition, projects_dir: Path, folder: Path, out_dir: Path
) -> PreviewResult:
    """De-identify ``folder``'s studies into a temporary folder, tally them, write the report
    into ``out_dir`` (``DEID_REPORT.parquet`` and ``DEID_REPORT.html``)."""
    tally = DeidTally()
    studies = sample_studies(folder)
    with tempfile.TemporaryDirectory(prefix="voxl-deid-preview-") as scratch:
        work = Path(scratch)
        database = VoxlDatabase(f"sqlite:///{work / 'preview.db'}")
        try:
            backend = LocalHashing(secrets.token_hex(32), SaltStore(database))
            deidentifier = build_deidentifier(project, projects_dir, backend)
            for index, files in enumerate(studies):
                out = work / f"study-{index}"
                identifiers = StudyIdentifiers()  # filled from the headers by the first pass
                try:
                    report = deidentifier.deidentify_study(files, out, identifiers)
                except OutputCheckError as exc:
                    checks = {
                        ALLOW_LIST_CHECK: (not exc.disallowed, ""),
                        IDENTIFIER_CHECK: (not exc.leaks, ""),
                    }
                    tally.merge(study_tally(None, deidentifier.policy, checks, len(files)))
                else:
                    checks = AnonymisedStudy(report).checks() if report.instances_out else {}
                    tally.merge(study_tally(report, deidentifier.policy, checks, len(files)))
                shutil.rmtree(out, ignore_errors=True)
        finally:
            database.dispose()
    context = ReportContext(
        title="De-identification report (preview)",
        project=project.slug,
        scope=f"preview of a sample folder ({len(studies)} studies)",
        as_of=None,
        voxl_version=voxl_version(),
        studies_in_scope=len(studies),
        notes=[
            "A preview: the sample's instances were de-identified with a throwaway key into a "
            "temporary folder, then deleted. An export writes this same report with its bundle."
        ],
    )
    return PreviewResult(tally, len(studies), write_deid_report(tally, context, out_dir))
