"""The per-extract tables (the mapping table ``IMAGE_LINKER`` and ``IMAGE_EXCLUSIONS``) as parquet.

``mapping_table`` returns its tables; this IO manager stores them per extract partition under
``$VOXL_HOME/tables/<asset>/<project>/<extract-datetime>/<name>.parquet`` (swapped into place
whole, so a reader never sees half an update) and records their row counts on the
materialisation. ``ehr_bundle`` loads them from here, and so can anyone downstream
(``defs.load_asset_value("mapping_table", partition_key=...)``, a notebook, the next asset)
without reading the VOXL database. They hold OMOP ES sequential ids, pseudonyms and reasons:
no identifiers. Studies themselves never pass through an IO manager: a batched study asset
writes the raw cache and the anonymised store (see the README's design notes).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import Field

from voxl_assets.export.bundle import write_parquet

ExtractTables = dict[str, pa.Table]  # file name (IMAGE_LINKER.parquet, ...) -> table


class ExtractTablesIOManager(ConfigurableIOManager):
    """The per-extract tables (mapping table, exclusions) as parquet, per extract partition."""

    base_dir: str = Field(description="the tables' folder ($VOXL_HOME/tables)")

    def _folder(self, asset_path: list[str], partition_key: str) -> Path:
        return Path(self.base_dir).joinpath(*asset_path, *partition_key.split("/"))

    def handle_output(self, context: OutputContext, obj: ExtractTables) -> None:
        folder = self._folder(list(context.asset_key.path), context.asset_partition_key)
        staging = folder.with_name(f".{folder.name}.staging-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            for name, table in obj.items():
                write_parquet(table, staging / name)
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(folder, old)
                os.replace(staging, folder)
                shutil.rmtree(old)
            else:
                os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        context.add_output_metadata(
            {
                **{f"{Path(name).stem} rows": table.num_rows for name, table in obj.items()},
                "folder": MetadataValue.path(str(folder)),
            }
        )

    def load_input(self, context: InputContext) -> ExtractTables:
        folder = self._folder(list(context.asset_key.path), context.asset_partition_key)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no tables for {context.asset_key.to_user_string()} "
                f"{context.asset_partition_key} in {folder}: materialise it first"
            )
        return {path.name: pq.read_table(path) for path in sorted(folder.glob("*.parquet"))}
