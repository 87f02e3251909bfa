"""Kubernetes on paper: the Helm values and the Dockerfile are not deployed here (no Docker, no
cluster), so this checks what can be checked: the values parse, name the image and the code
location the code has, set every variable a production deployment needs, take every secret from
a Kubernetes Secret (never a plain value), and name no variable the code does not read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from voxl_assets import settings

ROOT = settings.REPO_ROOT
KUBERNETES = ROOT / "deployments" / "kubernetes"
# Variables a production run cannot do without (no default in deployments=production).
REQUIRED = {"VOXL_DEPLOYMENT", "VOXL_DATABASE_URL", "VOXL_HASHING_KEY", "VOXL_HOME"}
SECRET = re.compile(r"PASSWORD|SECRET|HASHING_KEY|DATABASE_URL|_KEY\b|TOKEN")


def _values() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES / "values.yaml").read_text())


def _secrets() -> dict[str, dict[str, str]]:
    documents = yaml.safe_load_all((KUBERNETES / "secrets.example.yaml").read_text())
    return {doc["metadata"]["name"]: doc["stringData"] for doc in documents if doc}


def _variables_the_code_reads() -> set[str]:
    """Every VOXL_* name in the code, and the credentials the project definitions name."""
    names: set[str] = set()
    for folder in ("voxl_assets", "resources", "sensors", "io_managers"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"\bVOXL_[A-Z0-9_]+\b", path.read_text()))
    for path in (ROOT / "project_definitions").glob("*.yaml"):
        names |= set(re.findall(r"_env:\s*([A-Z][A-Z0-9_]+)", path.read_text()))
    return names


def _deployment() -> dict[str, Any]:
    (voxl,) = _values()["dagster-user-deployments"]["deployments"]
    return voxl


def test_the_values_name_the_code_location_the_code_has() -> None:
    voxl = _deployment()
    args = voxl["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    attribute = args[args.index("--attribute") + 1]
    source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    assert re.search(rf"^{attribute} = ", source, re.MULTILINE)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'"{module}"' in dockerfile and f'"{voxl["port"]}"' in dockerfile
    assert f"EXPOSE {voxl['port']}" in dockerfile
    assert voxl["image"]["repository"].endswith("/voxl") and voxl["image"]["tag"] != "latest"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and voxl["image"]["tag"] == version.group(1)


def test_every_variable_is_one_the_code_reads_and_secrets_come_from_secrets() -> None:
    voxl = _deployment()
    plain = {item["name"]: item["value"] for item in voxl["env"]}
    secrets = _secrets()
    secret_names = [ref["name"] for ref in voxl["envSecrets"]]
    launcher = _values()["runLauncher"]["config"]["k8sRunLauncher"]
    assert secret_names == [ref["name"] for ref in launcher["envSecrets"]]
    from_secrets = {key for name in secret_names for key in secrets[name]}
    known = _variables_the_code_reads()
    assert set(plain) <= known, set(plain) - known  # no stale or misspelt name
    assert from_secrets <= known, from_secrets - known
    assert set(plain) | from_secrets >= REQUIRED
    assert not [name for name in plain if SECRET.search(name)]  # never a plain value
    credentials = {n for n in known if not n.startswith("VOXL_")}
    assert credentials <= from_secrets, credentials - from_secrets
    assert plain["VOXL_DEPLOYMENT"] == "production"
    assert plain["VOXL_VNA_RETRIEVE"] == "c-get"  # pods have no AE title the archive knows
    # Dagster's own password: the chart reads it from the Secret the values name.
    assert _values()["global"]["postgresqlSecretName"] in secrets
    assert "postgresql-password" in secrets[_values()["global"]["postgresqlSecretName"]]
    assert "postgresqlPassword" not in _values()["postgresql"]


def test_runs_are_retried_and_the_vna_pool_holds_across_pods() -> None:
    values = _values()
    daemon = values["dagsterDaemon"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runMonitoring"]["enabled"] and daemon["runRetries"]["enabled"]
    assert daemon["runRetries"]["maxRetries"] >= 1
    assert (
        values["concurrency"]["enabled"] and values["concurrency"]["pools"]["granularity"] == "op"
    )
    assert values["postgresql"]["enabled"] is False  # the hospital's PostgreSQL


def test_the_dockerfile_is_slim_non_root_and_locked() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", dockerfile, re.MULTILINE)
    assert "uv sync --frozen" in dockerfile and "openssh-client" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert str(_deployment()["securityContext"]["runAsUser"]) == users[-1]
