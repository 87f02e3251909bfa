"""Through the Dagster instance, with two real Orthancs as primary and secondary archive: a CSV
extract with a series-level row and a study only the secondary holds, while the secondary's
window is closed. The series is delivered alone; the other study waits, visibly, in `voxl status`;
when its window opens, the window sensor's run picks it up and delivers it."""

import os
import shutil
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from dagster import DagsterInstance

from tests.peers.orthanc import VOXL_AE, OrthancServer, start_orthanc
from voxl_assets import cli, settings
from voxl_assets.cohort.extract_reader import read_any_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.imaging.batches import (
    ONLY_STATUS_TAG,
    due_waiting_studies,
    waiting_batch_requests,
)
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.vna.windows import DAY_NAMES

SLUG = "archive-test"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture
def pacs() -> Iterator[OrthancServer]:
    yield from start_orthanc(ae_title="PACS")


def _archives_file(path: Path, vna: OrthancServer, pacs: OrthancServer, open_days: str) -> None:
    def archive(name: str, server: OrthancServer, priority: int) -> dict[str, object]:
        return {
            "name": name,
            "priority": priority,
            "host": "127.0.0.1",
            "port": server.dicom_port,
            "ae_title": server.ae_title,
            "retrieve": "c-get",
            "queries_per_second": 50,
        }

    secondary = archive("pacs", pacs, 2)
    secondary["window"] = {"timezone": "UTC", "open": [{"days": open_days, "hours": "all day"}]}
    path.write_text(yaml.safe_dump({"archives": [archive("vna", vna, 1), secondary]}))


def test_waiting_for_the_secondary_window_then_delivered(
    orthanc: OrthancServer,
    pacs: OrthancServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from voxl_assets.orchestration import materialize_cohort, materialize_studies
    from voxl_assets.partitions import STUDIES

    home = tmp_path / "voxl"
    (home / "dagster").mkdir(parents=True)
    registry = tmp_path / "projects"
    shutil.copytree(
        settings.REPO_ROOT / "project_definitions" / "tag-operations", registry / "tag-operations"
    )
    project = yaml.safe_load(
        (settings.REPO_ROOT / "project_definitions" / "test-extract-uclh-omop-cdm.yaml").read_text()
    )
    project["project"].update(slug=SLUG, name="Archive Test", priority=3)
    (registry / f"{SLUG}.yaml").write_text(yaml.safe_dump(project))
    # The secondary opens only two days from now: closed for this whole test.
    closed_day = DAY_NAMES[(datetime.now(UTC).weekday() + 2) % 7]
    archives = tmp_path / "archives.yaml"
    for name, value in {
        "VOXL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VOXL_HASHING_KEY": "archive-waiting-test-key-0123456789",
        "VOXL_PROJECTS_DIR": str(registry),
        "VOXL_ARCHIVES_FILE": str(archives),
        "VOXL_AE_TITLE": VOXL_AE,
        "VOXL_VNA_RETRY_DELAY_SECONDS": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("VOXL_DATABASE_URL"):
            monkeypatch.delenv(name)
    _archives_file(archives, orthanc, pacs, closed_day)

    three_series = StudySpec(
        patient_id="MRN-SERIES",
        accession_number="ACC-SERIES",
        series=[
            SeriesSpec(instances=2, number=1),
            SeriesSpec(instances=3, number=2, description="CORONAL"),
            SeriesSpec(instances=2, number=3, description="SAGITTAL"),
        ],
    )
    emergency = StudySpec(patient_id="MRN-PACS", accession_number="ACC-PACS")
    another = StudySpec(patient_id="MRN-PACS2", accession_number="ACC-PACS2")
    for path in write_study(three_series, tmp_path / "vna"):
        orthanc.upload(path)
    for path in write_study(emergency, tmp_path / "pacs") + write_study(another, tmp_path / "p2"):
        pacs.upload(path)
    wanted_series = three_series.series[1].series_uid
    extract = tmp_path / "archive-test.csv"
    extract.write_text(
        "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,"
        "study_date,study_uid,participant_id,series_uid\n"
        # The delivered study lies between the two waiting ones: the window run's partition
        # range covers it, and must leave it alone.
        f"1,MRN-PACS,ACC-PACS,Archive Test,2026-11-20 09:00:00,2024-03-01,"
        f"{emergency.study_uid},P2,\n"
        f"2,MRN-SERIES,ACC-SERIES,Archive Test,2026-11-20 09:00:00,2024-03-01,"
        f"{three_series.study_uid},P1,{wanted_series}\n"
        f"3,MRN-PACS2,ACC-PACS2,Archive Test,2026-11-20 09:00:00,2024-03-01,"
        f"{another.study_uid},P3,\n"
    )

    database = VoxlDatabase()
    summary = read_any_summary(extract)
    extract_key = register_extract(database, summary, summary.project_slug)
    instance = DagsterInstance.get()
    materialize_cohort(instance, extract_key, "test")
    keys = list(instance.get_dynamic_partitions(STUDIES))
    assert len(keys) == 3
    materialize_studies(instance, keys, "test")

    with database.session() as session:
        by_mrn = {s.mrn: s for s in session.query(Study)}
        series_study, waiting = by_mrn["MRN-SERIES"], by_mrn["MRN-PACS"]
        assert series_study.status == StudyStatus.UPLOADED.value
        assert by_mrn["MRN-PACS2"].status == StudyStatus.WAITING.value
        series_attempts = series_study.attempts
        assert waiting.status == StudyStatus.WAITING.value
        assert waiting.failure_reason is None
        assert waiting.waiting_for is not None and "archive pacs window" in waiting.waiting_for
        assert waiting.not_before is not None and waiting.not_before > datetime.now(UTC).replace(
            tzinfo=None
        )
        not_before = waiting.not_before

    delivered = home / "delivered" / "images" / SLUG / "2026-11-20T09-00-00" / "dicom"
    zips = sorted(delivered.glob("*.zip"))
    assert len(zips) == 1  # only the series-level study: the other one waits
    with zipfile.ZipFile(zips[0]) as archive:
        members = archive.namelist()
        series_uids = set()
        for member in members:
            with archive.open(member) as handle:
                series_uids.add(
                    str(pydicom.dcmread(handle, stop_before_pixels=True).SeriesInstanceUID)
                )
    assert len(members) == 3 and len(series_uids) == 1  # exactly the requested series
    assert wanted_series not in series_uids  # ... and pseudonymised

    assert cli.main(["status", SLUG]) == cli.EXIT_OK
    shown = capsys.readouterr().out
    assert f"2 waiting for archive pacs window ({closed_day.title()} all day (UTC)); opens" in shown
    assert "MRN-PACS" not in shown and emergency.study_uid not in shown

    # Not due yet: the window sensor launches nothing.
    assert _window_tick(instance) == []
    assert due_waiting_studies(database, datetime.now(UTC).replace(tzinfo=None)) == {}
    # The window opens: the site widens it, and time passes to not_before (moved into the past).
    _archives_file(archives, orthanc, pacs, "mon-sun")
    assert len(waiting_batch_requests(keys, due_waiting_studies(database, not_before), 100)) == 1
    with database.session() as session:
        session.query(Study).filter(Study.mrn.in_(["MRN-PACS", "MRN-PACS2"])).update(
            {Study.not_before: datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)}
        )
    requests = _window_tick(instance)
    assert len(requests) == 1
    request = requests[0]
    assert request.tags[ONLY_STATUS_TAG] == "waiting" and request.tags["dagster/priority"] == "3"
    # Same opening, same run key: the daemon launches it once however often the sensor ticks.
    assert _window_tick(instance)[0].run_key == request.run_key
    _launch(instance, request)

    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == (keys[0], keys[2])
    with database.session() as session:
        statuses = {s.mrn: s.status for s in session.query(Study)}
        rerun = session.query(Study).filter(Study.mrn == "MRN-SERIES").one().attempts
    assert statuses == {"MRN-SERIES": "uploaded", "MRN-PACS": "uploaded", "MRN-PACS2": "uploaded"}
    assert rerun == series_attempts  # inside the run's range, but not waiting: not processed
    assert len(sorted(delivered.glob("*.zip"))) == 3
    assert _window_tick(instance) == []  # nothing waits any more


def _window_tick(instance: DagsterInstance) -> list[Any]:
    from dagster import SensorResult, build_sensor_context

    from voxl_assets.definitions import build_definitions

    defs = build_definitions()  # configured from the environment the test set
    sensor = defs.resolve_sensor_def("archive_window_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult)
    return list(result.run_requests or [])


def _launch(instance: DagsterInstance, request: Any) -> None:
    """Execute the run request as the daemon would (same assets, partition range, tags)."""
    from dagster import materialize

    from voxl_assets.definitions import build_definitions

    defs = build_definitions()
    result = materialize(
        [defs.get_assets_def(key) for key in request.asset_selection],
        instance=instance,
        resources=defs.resources,
        tags=dict(request.tags),
        selection=request.asset_selection,
    )
    assert result.success
