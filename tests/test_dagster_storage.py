"""VOXL's processes keep an engine per shard of Dagster's SQLite event log, and store and read
what Dagster's storage would."""

import logging
import os
import time
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    Output,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from sqlalchemy import event as sqlalchemy_event

import voxl_assets.definitions  # noqa: F401  (what every VOXL process imports)
from voxl_assets import dagster_storage
from voxl_assets.dagster_home import ensure_dagster_home

PARTITIONS = StaticPartitionsDefinition([str(n) for n in range(12)])


@asset(partitions_def=PARTITIONS)
def studies_seen():  # a generator of Dagster events
    for n in range(12):
        yield AssetMaterialization(asset_key=AssetKey("study"), partition=str(n))
    yield Output(None)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("VOXL_DAGSTER_LOGS_DIR", str(tmp_path / "logs"))
    return ensure_dagster_home()


def _engines(instance: DagsterInstance) -> dict[str, object]:
    storage = instance.event_log_storage
    assert isinstance(storage, SqliteEventLogStorage)
    return dict(dagster_storage._engines_of(storage))


def test_events_are_stored_and_read_as_dagster_s_own_storage_would(home: Path) -> None:
    with DagsterInstance.get() as instance:
        result = materialize([studies_seen], instance=instance, partition_key="0")
        assert result.success
        # One engine per shard written (the run's and the index), kept, not one per event.
        assert set(_engines(instance)) == {result.run_id, "index"}
    # Another process's view (a fresh instance: the UI, the daemon) sees every event.
    with DagsterInstance.get() as reader:
        assert reader.get_materialized_partitions(AssetKey("study")) == {str(n) for n in range(12)}
        logged = reader.all_logs(result.run_id)
        materialised = [
            e for e in logged if e.dagster_event and e.dagster_event.is_step_materialization
        ]
        assert len(materialised) == 13  # the twelve studies and the asset's own partition


def test_an_instance_opened_by_its_folder_writes_there(tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(folder)) as instance:
        assert materialize([studies_seen], instance=instance, partition_key="2").success
        assert set(_engines(instance)) >= {"index"}
    assert (folder / "history" / "runs" / "index.db").exists()


def test_kept_engines_are_bounded(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dagster_storage, "KEPT_ENGINES", 2)
    with DagsterInstance.get() as instance:
        runs = [materialize([studies_seen], instance=instance, partition_key="1") for _ in range(3)]
        assert set(_engines(instance)) == {runs[-1].run_id, "index"}  # the older runs let go
        assert len(instance.get_run_records()) == 3
        assert instance.get_materialized_partitions(AssetKey("study")) == {
            str(n) for n in range(12)
        }


def test_after_a_wipe_events_go_to_the_new_index(home: Path) -> None:
    with DagsterInstance.get() as instance:
        assert materialize([studies_seen], instance=instance, partition_key="3").success
        instance.wipe()
        assert materialize([studies_seen], instance=instance, partition_key="4").success
    with DagsterInstance.get() as reader:  # what another process reads
        assert len(reader.get_run_records()) == 1
        assert reader.get_materialized_partitions(AssetKey("studies_seen")) == {"4"}


def test_a_forked_child_opens_its_own_connections(home: Path) -> None:
    with DagsterInstance.get() as instance:
        assert materialize([studies_seen], instance=instance, partition_key="5").success
        kept = _engines(instance)["index"]
        child = os.fork()
        if child == 0:  # the child writes through engines of its own, then leaves at once
            ok = materialize([studies_seen], instance=instance, partition_key="6").success
            os._exit(0 if ok and _engines(instance)["index"] is not kept else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _engines(instance)["index"] is kept  # the parent's, still in use
        assert materialize([studies_seen], instance=instance, partition_key="7").success
    with DagsterInstance.get() as reader:
        assert reader.get_materialized_partitions(AssetKey("studies_seen")) == {"5", "6", "7"}


def _log_entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level=logging.INFO,
        user_message=message,
        run_id=run_id,
        timestamp=time.time(),
    )


def test_the_ui_s_watcher_sees_each_event_as_it_is_written(home: Path) -> None:
    """The UI follows a running run by watching the run's file for changes (watchdog, not its
    write-ahead log): the kept connection checkpoints after every write, so each event shows at
    once, as with Dagster's connection per event."""
    run_id = "5f1b2c3d-0000-4000-8000-000000000001"
    seen: list[str] = []
    with DagsterInstance.get() as writer, DagsterInstance.get() as ui:
        writer.event_log_storage.store_event(_log_entry(run_id, "event 0"))

        def follow(entry: EventLogEntry, _cursor: str) -> None:
            seen.append(entry.message)

        ui.event_log_storage.watch(run_id, None, follow)
        try:
            time.sleep(0.5)  # the observer's thread is watching
            for n in range(1, 4):
                writer.event_log_storage.store_event(_log_entry(run_id, f"event {n}"))
                deadline = time.monotonic() + 10
                while f"event {n}" not in seen and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert f"event {n}" in seen, f"the watcher did not see event {n}: {seen}"
        finally:
            ui.event_log_storage.end_watch(run_id, follow)


def test_a_run_s_shard_keeps_one_connection(home: Path) -> None:
    """Dagster's storage opened, set up and closed a connection for every event."""
    opened: list[str] = []
    with DagsterInstance.get() as instance:
        assert materialize([studies_seen], instance=instance, partition_key="8").success
        run_id = instance.get_run_records()[0].dagster_run.run_id
        engine = _engines(instance)[run_id]
        sqlalchemy_event.listen(engine, "connect", lambda *_: opened.append(run_id))
        for n in range(5):
            instance.event_log_storage.store_event(_log_entry(run_id, f"after {n}"))
        assert opened == []  # the pooled connection served all five
        assert len(instance.all_logs(run_id)) >= 5


def test_a_run_written_again_after_a_wipe_goes_to_its_new_file(home: Path) -> None:
    """A wipe deletes the runs' files: a kept connection to one would write into a deleted file."""
    run_id = "5f1b2c3d-0000-4000-8000-000000000002"
    with DagsterInstance.get() as instance:
        instance.event_log_storage.store_event(_log_entry(run_id, "before the wipe"))
        instance.wipe()
        instance.event_log_storage.store_event(_log_entry(run_id, "after the wipe"))
    with DagsterInstance.get() as reader:
        assert [entry.message for entry in reader.all_logs(run_id)] == ["after the wipe"]


def test_the_asset_key_row_follows_each_asset_s_latest_materialisation(home: Path) -> None:
    """The key row is inserted by an asset's first event and updated by every later one (the
    update tried first): the UI's latest materialisation and last run come from it."""
    with DagsterInstance.get() as instance:
        first = materialize([studies_seen], instance=instance, partition_key="8")
        second = materialize([studies_seen], instance=instance, partition_key="9")
        assert first.success and second.success
    with DagsterInstance.get() as reader:
        assert AssetKey("study") in reader.get_asset_keys()
        (record,) = reader.get_asset_records([AssetKey("study")])
        assert record.asset_entry.last_run_id == second.run_id
        latest = record.asset_entry.last_materialization
        assert latest is not None and latest.run_id == second.run_id
        assert latest.asset_materialization is not None
        assert latest.asset_materialization.partition == "11"  # the run's last event
        assert reader.get_materialized_partitions(AssetKey("study")) == {str(n) for n in range(12)}


def test_tables_and_columns_are_remembered_only_once_found(home: Path) -> None:
    with DagsterInstance.get() as instance:
        assert materialize([studies_seen], instance=instance, partition_key="10").success
        storage = instance.event_log_storage
        assert isinstance(storage, SqliteEventLogStorage)
        remembered = storage.__dict__
        assert storage.has_table("asset_event_tags")
        assert "asset_event_tags" in remembered["_voxl_tables"]
        assert not storage.has_table("no_such_table")
        assert "no_such_table" not in remembered["_voxl_tables"]  # asked again next time
        assert remembered["_voxl_asset_key_columns"] is True
        # The asset's indexed tags (its data version) reached the (remembered) tags table.
        with storage.index_connection() as conn:
            keys = set(
                conn.exec_driver_sql(
                    "SELECT key FROM asset_event_tags WHERE asset_key LIKE '%studies_seen%'"
                ).scalars()
            )
        assert "dagster/data_version" in keys


def test_shards_commit_without_waiting_for_the_disk(home: Path) -> None:
    with DagsterInstance.get() as instance:
        result = materialize([studies_seen], instance=instance, partition_key="11")
        assert result.success
        storage = instance.event_log_storage
        assert isinstance(storage, SqliteEventLogStorage)
        for shard in ("index", result.run_id):
            with storage._connect(shard) as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def _pooled_postgres_home(tmp_path: Path, postgres_url: str) -> Path:
    url = postgres_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
    storages = {
        "run_storage": ("dagster_postgres.run_storage", "PostgresRunStorage"),
        "event_log_storage": ("voxl_assets.dagster_pg_storage", "PooledPostgresEventLogStorage"),
        "schedule_storage": ("dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
    }
    home = tmp_path / "pg-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "".join(
            f"{kind}:\n  module: {module}\n  class: {name}\n  config:\n    postgres_url: {url}\n"
            for kind, (module, name) in storages.items()
        )
        + "telemetry:\n  enabled: false\n"
    )
    return home


def test_the_postgres_event_log_keeps_its_connections(tmp_path: Path, postgres_url: str) -> None:
    """Events are written through a few kept connections (not one per write, as dagster-postgres
    does outside the webserver) and read back by another instance as dagster-postgres's own."""
    from voxl_assets.dagster_pg_storage import PooledPostgresEventLogStorage

    home = _pooled_postgres_home(tmp_path, postgres_url)
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledPostgresEventLogStorage)
        connections: list[int] = []
        from sqlalchemy import event

        event.listen(storage._engine, "connect", lambda *_: connections.append(1))
        for key in ("0", "1"):
            assert materialize([studies_seen], instance=instance, partition_key=key).success
        assert 1 <= len(connections) <= 3  # 26 materialisations and their index rows
    with DagsterInstance.from_config(str(home)) as reader:
        assert reader.get_materialized_partitions(AssetKey("study")) == {str(n) for n in range(12)}
        assert reader.get_materialized_partitions(AssetKey("studies_seen")) == {"0", "1"}


def test_a_forked_child_writes_on_connections_of_its_own(tmp_path: Path, postgres_url: str) -> None:
    from sqlalchemy import event

    home = _pooled_postgres_home(tmp_path, postgres_url)
    with DagsterInstance.from_config(str(home)) as instance:
        assert materialize([studies_seen], instance=instance, partition_key="2").success
        opened_by: list[int] = []
        engine = instance.event_log_storage._engine  # type: ignore[attr-defined]
        event.listen(engine, "connect", lambda *_: opened_by.append(os.getpid()))
        child = os.fork()
        if child == 0:  # the parent's pooled connections must not be used here: its own opened
            ok = materialize([studies_seen], instance=instance, partition_key="3").success
            os._exit(0 if ok and os.getpid() in opened_by else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert materialize([studies_seen], instance=instance, partition_key="4").success
    with DagsterInstance.from_config(str(home)) as reader:
        assert reader.get_materialized_partitions(AssetKey("studies_seen")) == {"2", "3", "4"}
