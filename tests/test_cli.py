"""The `voxl` command end to end on the embedded default (SQLite under a throwaway VOXL_HOME)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from tests.helpers.projects import write_project
from voxl_assets.cli import main
from voxl_assets.db import VoxlDatabase
from voxl_assets.synthetic import synthetic_extract_rows, write_omop_extract


@pytest.fixture
def voxl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    projects = tmp_path / "projects"
    write_project(projects)
    monkeypatch.setenv("VOXL_HOME", str(home))
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(projects))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("VOXL_DAGSTER_LOGS_DIR", raising=False)
    monkeypatch.delenv("VOXL_DATABASE_URL", raising=False)
    return home


def test_check_config_ok_and_bad(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config"]) == 0
    assert "1 project definitions valid" in capsys.readouterr().out
    bad = tmp_path / "projects" / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"project": {"slug": "Bad Slug", "name": "x", "modalities": ["CT"]}})
    )
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "project.slug" in err and "tag_operations" in err


def test_check_config_names_an_sftp_destination_that_needs_the_missing_ssh(
    voxl_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = tmp_path / "projects" / "test-extract-uclh-omop-cdm.yaml"
    definition = yaml.safe_load(project.read_text())
    sftp = {
        "kind": "sftp",
        "host": "sftp.example.org",
        "username_env": "U",
        "private_key_path_env": "K",
        "known_host_key": "sftp.example.org ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    }
    definition.setdefault("destinations", {})["ehr"] = sftp
    project.write_text(yaml.safe_dump(definition))
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh on it
    assert main(["check-config"]) == 0
    assert "destinations.ehr.ssh_client: no ssh installed, paramiko" in capsys.readouterr().out
    definition["destinations"]["ehr"]["ssh_client"] = "openssh"
    project.write_text(yaml.safe_dump(definition))
    assert main(["check-config"]) == 2
    assert "destinations.ehr.ssh_client is openssh but the OpenSSH client is not installed" in (
        capsys.readouterr().err
    )


def test_check_config_validates_the_archives_file(
    voxl_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check-config"]) == 0
    assert "archive vna: dimse, always open" in capsys.readouterr().out
    archives = tmp_path / "archives.yaml"
    monkeypatch.setenv("VOXL_ARCHIVES_FILE", str(archives))
    archives.write_text(
        "archives:\n  - name: pacs\n    window: {timezone: UTC, open: [{days: sat-sun, hours: all day}]}\n"
    )
    assert main(["check-config"]) == 0
    assert "archive pacs: dimse, Sat-Sun all day (UTC)" in capsys.readouterr().out
    archives.write_text("archives:\n  - name: pacs\n    window: {timezone: UTC}\n")
    assert main(["check-config"]) == 2
    assert f"{archives}: archive pacs: window needs 'open'" in capsys.readouterr().err


def test_populate_then_status(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extract = write_omop_extract(tmp_path / "extract", synthetic_extract_rows(7))
    assert main(["populate", str(extract)]) == 0
    out, err = capsys.readouterr()
    assert "extract test-extract-uclh-omop-cdm/2026-11-01T12-00-00" in out
    assert "new_studies: 7" in out
    # Dagster's event log went to the command's log file, whose path is printed, not to the terminal.
    assert "DEBUG" not in out + err and "RUN_SUCCESS" not in out + err
    logs = list((voxl_home / "logs").glob("*-populate.log"))
    assert len(logs) == 1 and err.strip() == f"log: {logs[0]}"
    assert "DEBUG" in logs[0].read_text() and "RUN_SUCCESS" in logs[0].read_text()
    # The run went through the instance under VOXL_HOME, so the UI shows it.
    with DagsterInstance.from_config(str(voxl_home / "dagster")) as instance:
        assert len(instance.get_dynamic_partitions("studies")) == 7
        assert instance.get_runs()[0].is_success

    assert main(["populate", str(extract)]) == 0  # idempotent
    assert "already_known: 7" in capsys.readouterr().out

    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[0]["by_state"]["queued"] == 7 and report[0]["total"] == 7
    assert main(["status", "test-extract-uclh-omop-cdm"]) == 0
    table = capsys.readouterr().out
    assert "queued" in table and "test-extract-uclh-omop-cdm/2026-11-01T12-00-00" in table


def test_populate_refuses_unregistered_project(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extract = write_omop_extract(
        tmp_path / "x", synthetic_extract_rows(2), project_name="Nobody's Project"
    )
    assert main(["populate", str(extract)]) == 2
    assert "project 'nobody-s-project'" in capsys.readouterr().err


def test_populate_reports_bad_extract_without_identifiers(
    voxl_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = synthetic_extract_rows(3, people=3)
    rows[2].mrn = rows[0].mrn
    extract = write_omop_extract(tmp_path / "x", rows)
    assert main(["populate", str(extract)]) == 2  # bad input, not a failed operation
    out, err = capsys.readouterr()
    assert "more than one person_id" in err and rows[0].mrn not in err
    # One line, naming the log that holds Dagster's account of the failed run; no stack.
    assert len(err.strip().splitlines()) == 1 and err.startswith("voxl: error: ")
    assert "Traceback" not in out + err and "DEBUG" not in out + err
    log = next((voxl_home / "logs").glob("*-populate.log"))
    assert f"(log: {log})" in err and "STEP_FAILURE" in log.read_text()
    assert rows[0].mrn not in log.read_text()


def test_an_unexpected_error_is_one_line_and_its_stack_goes_to_the_log(
    voxl_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        value = "".join(["MRN", "123"])  # as if read from a file: not in the source line
        raise RuntimeError(f"a message that quotes a value: {value}")

    monkeypatch.setattr("voxl_assets.status.read_statuses", broken)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unexpected RuntimeError at test_cli.py" in err and "MRN123" not in err
    log = next((voxl_home / "logs").glob("*-status.log")).read_text()
    assert "in broken" in log and "MRN123" not in log


def test_help_status_and_input_errors_load_no_dagster(voxl_home: Path) -> None:
    """`voxl --help`, `voxl status` and errors found before any work answer without importing
    Dagster, pandas or pydicom (nor Alembic, once the database exists: the schema check reads the
    migration files itself). `voxl --help` and `voxl status` load no SQLAlchemy either: status
    reads the database through the plain DB-API driver."""
    VoxlDatabase().dispose()  # creates and migrates the database
    heavy = [
        "dagster",
        "pandas",
        "pyarrow",
        "pydicom",
        "pynetdicom",
        "pydantic",
        "alembic",
        "sqlalchemy",
    ]
    probe = (
        "import sys\n"
        "from voxl_assets.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n"
    )
    for argv in (
        ["--help"],
        ["status"],
        ["populate", str(voxl_home / "no-such-extract")],
        ["backfill", "no-such-project"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout, done.stderr)


def test_status_unknown_project(voxl_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "no-such-project"]) == 2
    assert "unknown project" in capsys.readouterr().err
