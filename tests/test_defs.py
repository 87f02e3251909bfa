"""The code location loads, and every asset, check, sensor and resource in it resolves, on any
machine: no peer is started or needed. Then what the UI is sent about the resources: each setting
by its variable where one is set, the deployment's default otherwise, never a secret's value."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, Definitions, build_resources
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from resources.destinations import FolderDestinationsResource, ProjectDestinationsResource
from resources.environment import SettingError
from voxl_assets import settings
from voxl_assets.definitions import build_definitions

ASSETS = {
    "cohort_messages",
    "raw_study",
    "anonymised_study",
    "destination_upload",
    "mapping_table",
    "ehr_bundle",
}
CHECKS = {
    ("anonymised_study", "no_tag_outside_allow_list"),
    ("anonymised_study", "no_identifier_in_output"),
    ("ehr_bundle", "no_private_value_in_bundle"),
}
SENSORS = {
    "new_extract_sensor",
    "study_batch_sensor",
    "archive_window_sensor",
    "extract_export_sensor",
}
RESOURCES = {
    "voxl_db",
    "projects",
    "extracts",
    "hashing",
    "vna",
    "stores",
    "destinations",
    "extract_tables",
}
SECRET = "the-hashing-key-nobody-may-see-0123456789"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean environment: no VOXL or Dagster variable but VOXL_HOME."""
    for name in list(os.environ):
        if name.startswith(("VOXL_", "DAGSTER_")):
            monkeypatch.delenv(name)
    home = tmp_path / "voxl"
    monkeypatch.setenv("VOXL_HOME", str(home))
    yield home


def _snapshot(defs: Definitions) -> dict[str, Any]:
    """What the webserver receives about each resource: its configured values."""
    snap = RepositorySnap.from_def(defs.get_repository_def())
    return {resource.name: resource.configured_values for resource in snap.resources or []}


def _shown(value: Any) -> Any:
    """A configured value as the UI shows it: a variable's name, or the value."""
    return f"${value.name}" if hasattr(value, "name") else value.strip('"')


def test_every_definition_resolves_with_no_peer_running(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = build_definitions()
    Definitions.validate_loadable(defs)
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == ASSETS
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == CHECKS
    assert {sensor.name for sensor in defs.sensors or []} == SENSORS
    assert set(defs.resources or {}) == RESOURCES
    # Every resource an asset, check or sensor asks for is there (validate_loadable checks it
    # too; this says which).
    repository = defs.get_repository_def()
    provided = RESOURCES | {"io_manager"}  # Dagster's default for outputs that return None
    for key in graph.get_all_asset_keys():
        assert graph.get(key).assets_def.required_resource_keys <= provided, key
    for check in graph.asset_check_keys:  # checks run inside their assets' steps
        assert check.asset_key in graph.get_all_asset_keys(), check
    for name in SENSORS:
        assert repository.get_sensor_def(name).required_resource_keys <= RESOURCES, name
    assert defs.resolve_implicit_global_asset_job_def().name

    # Every resource initialises, as a run would, with its variables read then.
    monkeypatch.setenv("VOXL_HASHING_KEY", SECRET)
    with build_resources(defs.resources or {}) as resources:
        assert resources.vna.host == "127.0.0.1" and resources.vna.port == 4242
        assert resources.stores.raw_cache_dir == str(home / "raw-cache")
        assert resources.voxl_db.url == f"sqlite:///{home / 'voxl.db'}"
        assert resources.projects.directory == str(settings.REPO_ROOT / "project_definitions")
        assert resources.extracts.directory == str(home / "extracts")
        assert resources.hashing.key == SECRET
        assert isinstance(resources.destinations, ProjectDestinationsResource)
        assert resources.destinations.local_root == str(home)


def test_the_module_level_code_location_loads() -> None:
    from voxl_assets.definitions import defs

    assert AssetKey("raw_study") in defs.resolve_all_asset_keys()


def test_the_ui_is_sent_each_settings_source_and_no_secret(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXL_HASHING_KEY", SECRET)
    monkeypatch.setenv("VOXL_VNA_HOST", "vna.hospital.example")
    monkeypatch.setenv("VOXL_VNA_PORT", "104")
    monkeypatch.setenv("VOXL_VNA_QUERIES_PER_SECOND", "2.5")
    monkeypatch.setenv("VOXL_HASHING_URL", "https://hashing.hospital.example")
    monkeypatch.setenv("VOXL_HASHING_TOKEN", SECRET + "-token")
    defs = build_definitions()
    shown = {
        name: {field: _shown(value) for field, value in values.items()}
        for name, values in _snapshot(defs).items()
    }
    assert shown["hashing"]["key"] == ""  # a hashing service holds the key: none is read
    assert shown["hashing"]["remote_url"] == "$VOXL_HASHING_URL"
    assert shown["hashing"]["remote_token"] == "$VOXL_HASHING_TOKEN"
    assert shown["vna"]["host"] == "$VOXL_VNA_HOST"
    assert shown["vna"]["port"] == "$VOXL_VNA_PORT"
    assert shown["vna"]["queries_per_second"] == "2.5"  # fractions are read at load
    assert shown["vna"]["ae_title"] == "VNA"  # a default, shown as the value
    assert shown["stores"]["raw_cache_dir"] == str(home / "raw-cache")
    assert shown["stores"]["anonymised_retention_hours"] == "0"  # delivered studies leave at once
    assert shown["destinations"]["local_root"] == str(home)
    assert shown["voxl_db"]["url"] == f"sqlite:///{home / 'voxl.db'}"
    assert serialize_value(RepositorySnap.from_def(defs.get_repository_def())).count(SECRET) == 0


def test_the_hashing_key_comes_from_the_environment_unless_a_service_holds_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resources.hashing import HashingResource
    from voxl_assets.deid.hashing import RemoteHashing

    monkeypatch.delenv("VOXL_HASHING_KEY", raising=False)
    monkeypatch.delenv("VOXL_HASHING_URL", raising=False)
    assert _shown(_snapshot(build_definitions())["hashing"]["key"]) == "$VOXL_HASHING_KEY"
    monkeypatch.setenv("VOXL_HASHING_URL", "https://hashing.hospital.example")
    resources = build_definitions().resources or {}
    resource = resources["hashing"]
    assert isinstance(resource, HashingResource)
    with build_resources({"hashing": resource}) as built:  # no VOXL_HASHING_KEY: still starts
        backend = built.hashing.backend(None)
    assert isinstance(backend, RemoteHashing)


def test_production_guesses_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXL_DEPLOYMENT", "production")
    monkeypatch.delenv("VOXL_HOME")
    monkeypatch.setenv("VOXL_HASHING_KEY", SECRET)
    monkeypatch.setenv("VOXL_LOCAL_DELIVERY_DIR", str(home / "laptop"))  # not for production
    defs = build_definitions()  # loads: what is missing fails the run that needs it
    resources = defs.resources or {}
    assert isinstance(resources["destinations"], ProjectDestinationsResource)
    for name, variable in [
        ("voxl_db", "VOXL_DATABASE_URL"),
        ("stores", "VOXL_RAW_CACHE_DIR"),
        ("extracts", "VOXL_EXTRACTS_DIR"),
        ("destinations", "VOXL_LOCAL_DESTINATION_ROOT"),
    ]:
        with pytest.raises(Exception, match=variable), build_resources({name: resources[name]}):
            pass

    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("VOXL_DATABASE_URL", "postgresql+psycopg://voxl@db.example/voxl")
    defs = build_definitions()
    assert _shown(_snapshot(defs)["voxl_db"]["url"]) == "$VOXL_DATABASE_URL"
    with build_resources(defs.resources or {}) as ready:
        assert ready.voxl_db.url == "postgresql+psycopg://voxl@db.example/voxl"
        assert ready.stores.anonymised_dir == str(home / "anon-store")


def test_a_laptop_can_send_every_delivery_to_one_folder(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXL_LOCAL_DELIVERY_DIR", str(home / "deliveries"))
    defs = build_definitions()
    destinations = (defs.resources or {})["destinations"]
    assert isinstance(destinations, FolderDestinationsResource)
    assert _shown(_snapshot(defs)["destinations"]["root"]) == "$VOXL_LOCAL_DELIVERY_DIR"


def test_bad_deployment_settings_name_the_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXL_DEPLOYMENT", "staging")
    with pytest.raises(ValueError, match="VOXL_DEPLOYMENT must be one of local, production"):
        build_definitions()
    monkeypatch.setenv("VOXL_DEPLOYMENT", "local")
    monkeypatch.setenv("VOXL_VNA_TIMEOUT_SECONDS", "two minutes")
    with pytest.raises(SettingError, match="VOXL_VNA_TIMEOUT_SECONDS must be a number"):
        build_definitions()
    monkeypatch.delenv("VOXL_VNA_TIMEOUT_SECONDS")
    monkeypatch.setenv("VOXL_VNA_PORT", "one-oh-four")
    defs = build_definitions()
    with (
        pytest.raises(Exception, match="VOXL_VNA_PORT"),
        build_resources({"vna": (defs.resources or {})["vna"]}),
    ):
        pass
