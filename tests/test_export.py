"""Export of an extract: mapping table, layout, provenance, idempotence, leak guard, upload."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from tests.peers.ftps import FtpServer
from tests.peers.sftp import SshServer
from voxl_assets.cohort.extract_reader import read_extract
from voxl_assets.cohort.ingest import persist_cohort, register_extract
from voxl_assets.db import ExtractStudy, StudyStatus, VoxlDatabase
from voxl_assets.db.models import StudyExport
from voxl_assets.export.bundle import (
    EXCLUSIONS,
    LINKER,
    PROVENANCE,
    private_files,
    public_column_names,
    write_ehr_bundle,
)
from voxl_assets.export.deid_report import REPORT_HTML, REPORT_PARQUET
from voxl_assets.export.leak_guard import private_identifiers, scan_bundle
from voxl_assets.study_state import set_status
from voxl_assets.synthetic import ExtractRow, synthetic_extract_rows, write_omop_extract
from voxl_assets.upload.ftps import FtpsUploader
from voxl_assets.upload.local import LocalUploader
from voxl_assets.upload.sftp import SftpUploader


def _prepare(
    tmp_path: Path, rows: list[ExtractRow] | None = None
) -> tuple[VoxlDatabase, str, Path, list[ExtractRow]]:
    rows = rows or synthetic_extract_rows(10, seed=3)
    extract = write_omop_extract(tmp_path / "extract", rows)
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    cohort = read_extract(extract)
    key = register_extract(database, cohort.summary, cohort.summary.project_slug)
    persist_cohort(database, cohort, cohort.summary.project_slug)
    with database.session() as session:
        links = session.execute(
            select(ExtractStudy.procedure_occurrence_id, ExtractStudy.study_id)
        ).all()
    by_procedure = dict(links)
    for procedure, study_id in by_procedure.items():
        if procedure <= 6:
            set_status(
                database,
                study_id,
                StudyStatus.UPLOADED,
                pseudo_study_uid=f"2.25.{procedure}0",
                pseudo_patient_id=f"p{procedure}",
            )
            with database.session() as session:
                session.add(
                    StudyExport(study_id=study_id, destination="local://x", instances=1, bytes=1)
                )
        elif procedure == 7:
            set_status(database, study_id, StudyStatus.FAILED, reason="study not found on the VNA")
        elif procedure == 8:
            set_status(
                database,
                study_id,
                StudyStatus.FILTERED,
                reason="all 3 instances filtered out (3 modality not in the project's list)",
            )
    return database, key, extract, rows


def test_mapping_links_exported_studies_and_explains_the_rest(tmp_path: Path) -> None:
    database, key, _, _ = _prepare(tmp_path)
    result = write_ehr_bundle(database, key, tmp_path / "exports")
    linker = pd.read_parquet(result.directory / LINKER)
    assert linker["procedure_occurrence_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert linker["pseudo_study_uid"].tolist() == [f"2.25.{n}0" for n in range(1, 7)]
    excluded = pd.read_parquet(result.directory / EXCLUSIONS).set_index("procedure_occurrence_id")
    assert excluded.loc[7, "status"] == "failed" and "not found" in excluded.loc[7, "reason"]
    assert excluded.loc[8, "status"] == "filtered"
    assert excluded.loc[9, "status"] == "queued"
    assert (result.linked, result.excluded) == (6, 4)


def test_layout_and_provenance(tmp_path: Path) -> None:
    database, key, _, _ = _prepare(tmp_path)
    result = write_ehr_bundle(database, key, tmp_path / "exports")
    assert (
        result.directory
        == tmp_path / "exports" / "test-extract-uclh-omop-cdm" / "2026-11-01T12-00-00"
    )
    names = sorted(
        p.relative_to(result.directory).as_posix()
        for p in result.directory.rglob("*")
        if p.is_file()
    )
    assert names == [
        REPORT_HTML,
        REPORT_PARQUET,
        EXCLUSIONS,
        LINKER,
        "omop/PROCEDURE_OCCURRENCE.parquet",
        PROVENANCE,
    ]
    provenance = json.loads((result.directory / PROVENANCE).read_text())
    assert provenance["omop_es_git_hash"] == "0123abcd"
    assert provenance["omop_es_settings"]["cdm_source_name"] == "Test Extract - UCLH OMOP CDM"
    assert provenance["counts"] == {"studies_linked": 6, "studies_excluded": 4}
    for name, digest in provenance["files"].items():
        assert hashlib.sha256((result.directory / name).read_bytes()).hexdigest() == digest


def test_rerun_is_byte_identical_until_new_studies_are_exported(tmp_path: Path) -> None:
    database, key, _, _ = _prepare(tmp_path)
    first = write_ehr_bundle(database, key, tmp_path / "exports")
    before = {p.name: p.read_bytes() for p in first.directory.rglob("*") if p.is_file()}
    again = write_ehr_bundle(database, key, tmp_path / "exports")
    assert {p.name: p.read_bytes() for p in again.directory.rglob("*") if p.is_file()} == before
    with database.session() as session:
        study_id = session.scalar(
            select(ExtractStudy.study_id).where(ExtractStudy.procedure_occurrence_id == 9)
        )
    set_status(
        database,
        int(study_id or 0),
        StudyStatus.UPLOADED,
        pseudo_study_uid="2.25.90",
        pseudo_patient_id="p9",
    )
    third = write_ehr_bundle(database, key, tmp_path / "exports")
    assert (third.directory / LINKER).read_bytes() != before[LINKER] and third.linked == 7


def test_clean_bundle_passes_the_leak_guard(tmp_path: Path) -> None:
    database, key, extract, _ = _prepare(tmp_path)
    result = write_ehr_bundle(database, key, tmp_path / "exports")
    identifiers = private_identifiers(private_files(extract), public_column_names(extract))
    assert len(identifiers) >= 10  # MRNs, accession numbers, study UIDs
    report = scan_bundle(result.directory, identifiers)
    assert report.clean, report.summary()


def test_leak_guard_finds_identifiers_in_free_text_and_names_only_where(tmp_path: Path) -> None:
    rows = synthetic_extract_rows(10, seed=4)
    database, key, extract, rows = _prepare(tmp_path, rows)
    # An NHS number in the private files, and reports that quote identifiers in free text.
    persons = pd.read_parquet(extract / "private/PERSON_LINKS.parquet")
    persons["NhsNumber"] = [f"94347659{n:02d}" for n in range(len(persons))]
    persons.to_parquet(extract / "private/PERSON_LINKS.parquet", index=False)
    reports = pd.DataFrame(
        {
            "note_id": [1, 2, 3, 4],
            "note_text": [
                "Unremarkable chest film.",
                f"Compared with prior study {rows[2].accession_number.lower()} , no change.",
                "Patient NHS no 943 476 5901 seen today.",
                f"ACC{rows[5].accession_number[3:]}9 is a different accession",  # longer token: no hit
            ],
        }
    )
    (extract / "public/omop").mkdir(parents=True, exist_ok=True)
    reports.to_parquet(extract / "public/omop/NOTE.parquet", index=False)
    result = write_ehr_bundle(database, key, tmp_path / "exports")
    identifiers = private_identifiers(private_files(extract), public_column_names(extract))
    report = scan_bundle(result.directory, identifiers)
    assert not report.clean
    assert [(h.file, h.column, h.rows) for h in report.hits] == [
        ("omop/NOTE.parquet", "note_text", [1, 2])
    ]
    assert rows[2].accession_number not in report.summary() and "943" not in report.summary()


def test_bundle_upload_to_ehr_destinations(
    tmp_path: Path, ftps_server: FtpServer, sftp_server: SshServer
) -> None:
    database, key, _, _ = _prepare(tmp_path)
    result = write_ehr_bundle(database, key, tmp_path / "exports")
    local = LocalUploader(tmp_path / "delivered").upload_tree(
        result.directory, result.relative_folder
    )
    assert local.instances == 6  # mapping, exclusions, the report (2), OMOP file, provenance
    ftps = FtpsUploader(
        ftps_server.host,
        ftps_server.port,
        ftps_server.username,
        ftps_server.password,
        ca_bundle=str(ftps_server.certificate),
    )
    ftps.upload_tree(result.directory, result.relative_folder)
    sftp = SftpUploader(
        sftp_server.host,
        sftp_server.port,
        sftp_server.username,
        str(sftp_server.private_key),
        sftp_server.known_host_line,
        remote_root=str(sftp_server.root),
    )
    sftp.upload_tree(result.directory, result.relative_folder)
    for root in (tmp_path / "delivered", ftps_server.root, sftp_server.root):
        delivered = root / result.relative_folder
        assert pq.read_table(delivered / LINKER).num_rows == 6
        assert (delivered / PROVENANCE).read_bytes() == (result.directory / PROVENANCE).read_bytes()


def test_unknown_extract_is_a_clear_error(tmp_path: Path) -> None:
    from voxl_assets.export.bundle import ExportError

    database = VoxlDatabase(f"sqlite:///{tmp_path / 'v.db'}")
    with pytest.raises(ExportError, match="not registered"):
        write_ehr_bundle(database, "nope/2026-01-01T00-00-00", tmp_path)
