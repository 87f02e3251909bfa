"""The extract_tables IO manager: the mapping table and exclusions stored per extract as
parquet, with row counts, loaded back by ehr_bundle or anyone downstream."""

from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetKey, build_input_context, build_output_context

from io_managers.extract_tables import ExtractTablesIOManager

KEY = "proj/2026-11-01T12-00-00"


def _tables(linked: int) -> dict[str, pa.Table]:
    return {
        "IMAGE_LINKER.parquet": pa.table({"procedure_occurrence_id": list(range(linked))}),
        "IMAGE_EXCLUSIONS.parquet": pa.table({"procedure_occurrence_id": [99], "reason": ["x"]}),
    }


def test_tables_round_trip_with_row_counts_and_replace_whole(tmp_path: Path) -> None:
    manager = ExtractTablesIOManager(base_dir=str(tmp_path))
    asset = AssetKey("mapping_table")
    output = build_output_context(asset_key=asset, partition_key=KEY)
    manager.handle_output(output, _tables(3))
    folder = tmp_path / "mapping_table" / "proj" / "2026-11-01T12-00-00"
    assert sorted(p.name for p in folder.iterdir()) == [
        "IMAGE_EXCLUSIONS.parquet",
        "IMAGE_LINKER.parquet",
    ]
    metadata = {k: getattr(v, "value", v) for k, v in output.get_logged_metadata().items()}
    assert metadata["IMAGE_LINKER rows"] == 3 and metadata["IMAGE_EXCLUSIONS rows"] == 1

    manager.handle_output(build_output_context(asset_key=asset, partition_key=KEY), _tables(5))
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left over
    loaded = manager.load_input(build_input_context(asset_key=asset, partition_key=KEY))
    assert loaded["IMAGE_LINKER.parquet"].num_rows == 5
    assert loaded["IMAGE_EXCLUSIONS.parquet"].equals(_tables(0)["IMAGE_EXCLUSIONS.parquet"])


def test_loading_tables_never_written_says_what_to_do(tmp_path: Path) -> None:
    manager = ExtractTablesIOManager(base_dir=str(tmp_path))
    context = build_input_context(asset_key=AssetKey("mapping_table"), partition_key=KEY)
    with pytest.raises(FileNotFoundError, match="materialise it first"):
        manager.load_input(context)
