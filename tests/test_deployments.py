"""The two dagster.yaml files: embedded SQLite default and production PostgreSQL."""

import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy.engine import make_url

from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from tests.helpers.projects import write_project
from voxl_assets import settings
from voxl_assets.assets.cohort import cohort_messages
from voxl_assets.cohort.extract_reader import read_summary
from voxl_assets.cohort.ingest import register_extract
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract

DEPLOYMENTS = settings.REPO_ROOT / "deployments"


def _materialise_one_extract(instance: DagsterInstance, tmp_path: Path, db_url: str) -> None:
    projects = tmp_path / "projects"
    write_project(projects)
    extract = write_omop_extract(tmp_path / "extract", synthetic_extract_rows(5))
    resources = {
        "voxl_db": VoxlDatabaseResource(url=db_url),
        "projects": ProjectRegistryResource(directory=str(projects)),
    }
    summary = read_summary(extract)
    key = register_extract(resources["voxl_db"].database, summary, summary.project_slug)  # type: ignore[attr-defined]
    instance.add_dynamic_partitions("extracts", [key])
    result = materialize(
        [cohort_messages], instance=instance, partition_key=key, resources=resources
    )
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.is_success
    assert instance.get_latest_materialization_event(cohort_messages.key) is not None


def test_production_yaml_uses_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(postgres_url)
    monkeypatch.setenv("VOXL_DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("VOXL_DAGSTER_PG_PORT", str(url.port or 5432))
    monkeypatch.setenv("VOXL_DAGSTER_PG_DB", url.database or "")
    monkeypatch.setenv("VOXL_DAGSTER_PG_USER", url.username or "postgres")
    monkeypatch.setenv("VOXL_DAGSTER_PG_PASSWORD", url.password or "")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOYMENTS / "production" / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # dagster-postgres's event log, its connections kept (voxl_assets/dagster_pg_storage.py)
        assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.nux_enabled is False  # no onboarding modal in the UI
        _materialise_one_extract(instance, tmp_path, f"sqlite:///{tmp_path / 'voxl.db'}")
    assert not list(home.glob("**/*.db")), "production storage must not fall back to SQLite"


def test_local_yaml_keeps_everything_under_voxl_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.dagster_home import ensure_dagster_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("VOXL_DAGSTER_LOGS_DIR", raising=False)
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "voxl-home"))
    home = ensure_dagster_home()
    assert home == tmp_path / "voxl-home" / "dagster"
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert instance.nux_enabled is False  # no onboarding modal in the UI
        _materialise_one_extract(instance, tmp_path, f"sqlite:///{tmp_path / 'voxl.db'}")
    assert list((tmp_path / "voxl-home" / "dagster").glob("**/runs.db"))
