"""The UI does not redo work: after `voxl demo` (runs in-process, outside the sensors) the
sensors that the daemon starts with the UI request nothing, and a new extract afterwards gets runs
for its own studies only."""

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from voxl_assets.cli import main
from voxl_assets.definitions import build_definitions
from voxl_assets.imaging.batches import ONLY_STATUS_TAG, UNFINISHED
from voxl_assets.orchestration import materialize
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

SENSORS = [
    "new_extract_sensor",
    "study_batch_sensor",
    "archive_window_sensor",
    "extract_export_sensor",
]


def _first_tick(instance: DagsterInstance, name: str) -> SensorResult:
    """A sensor's first evaluation, as when the daemon starts with the UI (no cursor yet)."""
    defs = build_definitions()  # configured from the environment the test set
    with build_sensor_context(instance=instance, cursor=None, resources=defs.resources) as context:
        result = defs.resolve_sensor_def(name)(context)
    assert isinstance(result, SensorResult)
    return result


def _requests(result: SensorResult) -> list[Any]:
    return list(result.run_requests or [])


@pytest.mark.slow
def test_sensors_request_nothing_after_the_demo_then_only_new_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "voxl"
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("VOXL_DAGSTER_LOGS_DIR", str(home / "dagster" / "logs"))
    monkeypatch.setenv("VOXL_EXTRACT_QUIET_SECONDS", "0")
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    for name in ("VOXL_HASHING_KEY", "VOXL_VNA_HOST", "VOXL_VNA_PORT", "VOXL_VNA_AE_TITLE"):
        monkeypatch.setenv(name, "")  # the demo sets them; restored after the test
    monkeypatch.delenv("VOXL_HASHING_KEY")
    assert main(["demo", "--no-ui", "--studies", "8"]) == 0
    out = capsys.readouterr().out
    assert "1 study is not on the demo VNA, to show failure reasons" in out
    assert "1 study is ultrasound (US), which the project filters out" in out

    defs = build_definitions()
    with DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == 3  # cohort, one study batch, export
        for name in SENSORS:
            assert _requests(_first_tick(instance, name)) == [], name

        # A study batch run over studies that ended before it started does nothing to them.
        result = materialize(
            [defs.get_assets_def("raw_study")],
            instance,
            {
                "dagster/asset_partition_range_start": "test-extract-uclh-omop-cdm/1",
                "dagster/asset_partition_range_end": "test-extract-uclh-omop-cdm/8",
                ONLY_STATUS_TAG: UNFINISHED,
            },
        )
        assert result.success and result.get_asset_materialization_events() == []

        # The mapping table the export wrote loads through its IO manager, as the bundle holds it.
        extract = "test-extract-uclh-omop-cdm/2026-11-01T12-00-00"
        tables = defs.load_asset_value("mapping_table", partition_key=extract, instance=instance)
        assert isinstance(tables, dict)
        linker = tables["IMAGE_LINKER.parquet"]
        assert linker.equals(pq.read_table(home / "exports" / extract / "IMAGE_LINKER.parquet"))
        assert linker.num_rows == 6  # 8 studies: 1 not on the VNA, 1 filtered

        # Something new: a second extract of the project. Its studies, and only those, are asked.
        second = write_omop_extract(
            tmp_path / "second",
            synthetic_extract_rows(5, seed=99),
            extract_datetime=datetime(2026, 11, 2, 9, 0),
        )
        assert main(["populate", str(second)]) == 0
        studies = _first_tick(instance, "study_batch_sensor")
        [request] = _requests(studies)
        start = request.tags["dagster/asset_partition_range_start"]
        end = request.tags["dagster/asset_partition_range_end"]
        assert (start, end) == ("test-extract-uclh-omop-cdm/9", "test-extract-uclh-omop-cdm/13")
        assert json.loads(studies.cursor or "{}")["after"] == 13
        # The first extract stays exported; the second is not ready until its studies end.
        assert _requests(_first_tick(instance, "extract_export_sensor")) == []
