import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.projects import write_project
from voxl_assets import settings
from voxl_assets.project_config import (
    ProjectConfigError,
    ProjectRegistry,
    json_schema,
    load_project,
    slugify,
)


def test_slugify_matches_omop_es_project_names() -> None:
    assert slugify("Test Extract - UCLH OMOP CDM") == "test-extract-uclh-omop-cdm"
    assert slugify("  MS_Pilot: MRI!! ") == "ms-pilot-mri"


def test_valid_project_loads_with_defaults(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path))
    assert project.slug == "test-extract-uclh-omop-cdm"
    assert project.destinations.images.kind == "none"
    assert project.series_filters.min_instances == 1


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    path = write_project(tmp_path, extra={"series_filters": {"min_instanses": 3}})
    with pytest.raises(ProjectConfigError) as err:
        load_project(path)
    message = str(err.value)
    assert str(path) in message
    assert "series_filters.min_instanses" in message
    assert "unknown key" in message


def test_bad_regex_names_field(tmp_path: Path) -> None:
    path = write_project(tmp_path, extra={"allowed_manufacturers": [{"regex": "(unclosed"}]})
    with pytest.raises(
        ProjectConfigError, match=r"allowed_manufacturers\.0\.regex.*regular expression"
    ):
        load_project(path)


def test_bad_series_description_regex(tmp_path: Path) -> None:
    path = write_project(tmp_path, extra={"series_filters": {"description_patterns": ["[a-"]}})
    with pytest.raises(ProjectConfigError, match="series_filters.description_patterns"):
        load_project(path)


def test_missing_tag_operation_file_names_file_and_field(tmp_path: Path) -> None:
    path = write_project(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["tag_operations"]["manufacturer_overrides"] = ["nope.yaml"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ProjectConfigError, match=r"tag_operations\.manufacturer_overrides\.0.*nope\.yaml"
    ):
        load_project(path)


def test_destination_secrets_are_env_var_names(tmp_path: Path) -> None:
    ftps = {"kind": "ftps", "host": "h", "username_env": "U", "password_env": "P"}
    path = write_project(
        tmp_path, extra={"destinations": {"images": ftps, "ehr": {"kind": "none"}}}
    )
    project = load_project(path)
    assert project.destinations.images.kind == "ftps"
    bad = write_project(
        tmp_path, extra={"destinations": {"images": {**ftps, "password": "hunter2"}}}
    )
    with pytest.raises(ProjectConfigError, match=r"destinations\.images\.password"):
        load_project(bad)


ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.mark.parametrize(
    ("known_host_key", "problem"),
    [
        (f"sftp.example.org {ED25519}", "must look like"),
        (f"sftp.example.org ssh-ed25519 {ED25519[:-3]}!!", "not valid base64"),
        (f"sftp.example.org ssh-rsa {ED25519}", "not a ssh-rsa key"),
        (f"@cert-authority *.example.org ssh-ed25519 {ED25519}", "not supported"),
    ],
)
def test_sftp_known_host_key_is_checked_when_the_project_loads(
    tmp_path: Path, known_host_key: str, problem: str
) -> None:
    sftp = {
        "kind": "sftp",
        "host": "sftp.example.org",
        "username_env": "U",
        "private_key_path_env": "K",
        "known_host_key": f"sftp.example.org ssh-ed25519 {ED25519}",
    }
    good = write_project(tmp_path, extra={"destinations": {"ehr": sftp}})
    assert load_project(good).destinations.ehr.kind == "sftp"
    bad = write_project(
        tmp_path, extra={"destinations": {"ehr": {**sftp, "known_host_key": known_host_key}}}
    )
    with pytest.raises(ProjectConfigError, match=rf"destinations\.ehr\.known_host_key.*{problem}"):
        load_project(bad)


def test_ehr_destination_rejects_dicomweb(tmp_path: Path) -> None:
    path = write_project(
        tmp_path, extra={"destinations": {"ehr": {"kind": "dicomweb", "url": "https://x"}}}
    )
    with pytest.raises(ProjectConfigError, match="destinations.ehr"):
        load_project(path)


def test_duplicate_slug_is_an_error(tmp_path: Path) -> None:
    write_project(tmp_path)
    other = tmp_path / "copy.yaml"
    other.write_text((tmp_path / "test-extract-uclh-omop-cdm.yaml").read_text())
    with pytest.raises(ProjectConfigError, match="already defined"):
        ProjectRegistry.load(tmp_path)


def test_shipped_schema_is_current() -> None:
    shipped = json.loads((settings.REPO_ROOT / "project_definitions" / "schema.json").read_text())
    assert shipped == json_schema(), (
        "regenerate with: voxl schema > project_definitions/schema.json"
    )


def test_example_projects_validate() -> None:
    registry = ProjectRegistry.load(settings.REPO_ROOT / "project_definitions")
    assert {"test-extract-uclh-omop-cdm", "ms-pilot-mri"} <= set(registry.slugs())


def test_config_files_are_read_by_libyamls_safe_loader(tmp_path: Path) -> None:
    """libyaml's loader (a tenth of the Python one's time, at every run's start), and a safe
    one: a Python object tag is refused, naming the file, never built."""
    from voxl_assets.config_files import SAFE_LOADER, ConfigFileError, read_yaml

    assert yaml.__with_libyaml__ and SAFE_LOADER is yaml.CSafeLoader
    good = tmp_path / "good.yaml"
    good.write_text("project: {slug: p, modalities: [CT, MR]}\n", encoding="utf-8")
    assert read_yaml(good) == {"project": {"slug": "p", "modalities": ["CT", "MR"]}}
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("x: !!python/object/apply:os.getcwd []\n", encoding="utf-8")
    with pytest.raises(ConfigFileError, match="hostile.yaml: not valid YAML"):
        read_yaml(hostile)
