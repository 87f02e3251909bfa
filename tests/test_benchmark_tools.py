"""The benchmarks' reference tools resolve to the system's programs, never to the scripts of the
same name that Python packages install into the environment (pynetdicom's ``storescp``,
``movescu``); a missing one is named with how to install it. Nothing is benchmarked here."""

import os
import sys
from pathlib import Path

import pytest

from benchmarks import deid, retrieval, upload
from benchmarks._common import MissingTool, resolve_tools, system_search_path
from tests.peers import peer_missing

ENVIRONMENT_BIN = Path(sys.executable).parent


def _outside_the_environment(paths: dict[str, str]) -> None:
    for name, path in paths.items():
        assert Path(path).is_absolute() and os.access(path, os.X_OK), name
        assert Path(path).resolve().parent != ENVIRONMENT_BIN.resolve(), name
        assert not (Path(path).resolve().parent.parent / "pyvenv.cfg").exists(), name


def _resolve_or_skip(tools: dict[str, str]) -> dict[str, str]:
    try:
        return resolve_tools(tools)
    except MissingTool as exc:
        peer_missing(str(exc))
        raise


def test_retrieval_uses_dcmtk_even_where_pynetdicom_shadows_it() -> None:
    # pynetdicom's console scripts sit first on PATH under `uv run`: the trap this guards against.
    assert (ENVIRONMENT_BIN / "storescp").exists() and (ENVIRONMENT_BIN / "movescu").exists()
    tools = _resolve_or_skip(retrieval.REFERENCE_TOOLS)
    _outside_the_environment(tools)
    assert set(tools) == {"movescu", "storescp"}


@pytest.mark.parametrize("peer", sorted(upload.PEERS))
def test_upload_reference_tools_per_peer(peer: str) -> None:
    wanted = upload.reference_tools([peer])
    assert "time" in wanted and set(upload.PEERS[peer].tools) <= set(wanted)
    _outside_the_environment(_resolve_or_skip(wanted))


def test_deid_reference_is_the_dicognito_library_or_a_clear_exit() -> None:
    try:
        anonymizer = deid.reference_anonymizer()
    except SystemExit as exc:
        assert "uv sync --extra dev --extra bench" in str(exc)
    else:
        assert anonymizer.__module__.startswith("dicognito")


def test_a_missing_tool_is_named_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A program found only in a Python environment's bin does not count.
    fake_environment = tmp_path / "venv"
    (fake_environment / "bin").mkdir(parents=True)
    (fake_environment / "pyvenv.cfg").write_text("home = /usr/bin\n")
    script = fake_environment / "bin" / "voxl-reference-probe"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_environment / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert str(fake_environment / "bin") not in system_search_path().split(os.pathsep)
    with pytest.raises(MissingTool) as raised:
        resolve_tools({"voxl-reference-probe": "apt-get install probe", "sh": "dash"})
    assert "voxl-reference-probe (apt-get install probe)" in str(raised.value)
    assert "sh (" not in str(raised.value)
    with pytest.raises(SystemExit, match="benchmark cannot run: .*voxl-reference-probe"):
        upload.resolve_tools_or_exit({"voxl-reference-probe": "apt-get install probe"})


@pytest.mark.parametrize(
    ("keys", "batch", "processes"), [(1000, 200, 2), (1000, 200, 3), (7, 3, 2), (5, 200, 4)]
)
def test_the_orchestration_benchmarks_processes_share_every_batch_once(
    keys: int, batch: int, processes: int
) -> None:
    from benchmarks.orchestration import share_of_batches

    names = [f"study/{i}" for i in range(keys)]
    runs = [
        names[start : start + batch]
        for process in range(processes)
        for start in share_of_batches(names, batch, process, processes)
    ]
    assert sorted(key for run in runs for key in run) == sorted(names)
    assert all(0 < len(run) <= batch for run in runs)
    assert len(runs) == -(-keys // batch)
