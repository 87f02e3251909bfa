"""What `voxl` shows while it works: progress lines (only on a terminal) and the log file."""

import io
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from voxl_assets.terminal import CommandLog, PhaseLine, progress_wanted, study_progress


def test_studies_progress_counts_done_of_total_with_rate() -> None:
    done = iter(range(1, 100))
    output = io.StringIO()
    with study_progress(lambda: next(done), 4, "studies", enabled=True, file=output, interval=0.01):
        time.sleep(0.4)  # tqdm redraws at most every 0.1 s
    shown = output.getvalue()
    assert "studies" in shown and "4/4" in shown and "study/s" in shown


def test_no_progress_unless_on_a_terminal() -> None:
    assert not progress_wanted(io.StringIO())
    output = io.StringIO()
    with study_progress(lambda: 1, 1, "studies", file=output):
        pass
    assert output.getvalue() == ""


def _record(level: int, message: str, event: object = None, step: str = "x") -> logging.LogRecord:
    record = logging.LogRecord("dagster", level, __file__, 1, message, None, None)
    record.dagster_meta = {"dagster_event": event, "step_key": step, "orig_message": message}
    return record


def test_the_phase_line_follows_the_run_steps() -> None:
    shown: list[str] = []
    line = PhaseLine(shown.append)
    start = SimpleNamespace(event_type_value="STEP_START")
    written = SimpleNamespace(
        event_type_value="ASSET_MATERIALIZATION",
        asset_key=SimpleNamespace(to_user_string=lambda: "mapping_table"),
    )
    line.handle(_record(logging.DEBUG, "Started", start, "ehr_bundle"))
    line.handle(_record(logging.DEBUG, "Materialized", written))
    line.handle(_record(logging.DEBUG, "an internal debug message"))
    line.handle(_record(logging.INFO, "24 imaging studies\nsecond line"))
    assert shown == ["ehr_bundle started", "mapping_table written", "24 imaging studies"]


def test_the_command_log_takes_logging_and_warnings_then_lets_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    monkeypatch.setenv("VOXL_HOME", str(tmp_path))
    log = CommandLog("probe").install()
    try:
        assert not log.written()  # created on the first record only
        logging.getLogger("voxl_assets.something").info("a message")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    finally:
        log.uninstall()
    text = log.path.read_text()
    assert log.path.parent == tmp_path / "logs" and log.path.name.endswith("-probe.log")
    assert "a message" in text and "a library's warning" in text
    logging.getLogger("voxl_assets.something").warning("after")
    assert "after" not in log.path.read_text()
