"""What `voxl` shows on the terminal, and where everything else goes.

`voxl` prints its own short output. The Dagster event log of the runs it starts in-process,
VOXL's own log messages and Python warnings go to one log file per command under
``$VOXL_HOME/logs`` (also to the terminal with ``--verbose``); its path is printed when something
was written. Long work shows one progress line (tqdm) while stderr is a terminal. Dagster-free,
so `voxl --help` and `voxl status` stay fast.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from voxl_assets import settings
from voxl_assets.outcomes import code_location

if TYPE_CHECKING:
    from voxl_assets.db import VoxlDatabase

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


_active: CommandLog | None = None


def active_log_handlers() -> list[logging.Handler]:
    """Where the running `voxl` command sends Dagster's event log (empty outside the CLI)."""
    return _active.handlers if _active is not None else []


class CommandLog:
    """The log file of one `voxl` command, created on the first record written to it."""

    def __init__(self, command: str, *, verbose: bool = False) -> None:
        stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        self.path = settings.voxl_home() / "logs" / f"{stamp}-{command}.log"
        self.verbose = verbose
        self.handlers: list[logging.Handler] = []
        self._previous: tuple[list[logging.Handler], int] | None = None

    def install(self) -> CommandLog:
        """Send the root logger (and Python warnings) here instead of to the terminal."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(self.path, delay=True, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(LOG_FORMAT))
        self.handlers = [to_file]
        if self.verbose:
            to_terminal = logging.StreamHandler(sys.stderr)
            to_terminal.setFormatter(logging.Formatter(LOG_FORMAT))
            self.handlers.append(to_terminal)
        root = logging.getLogger()
        self._previous = (list(root.handlers), root.level)
        root.handlers = list(self.handlers)
        # Libraries' warnings and errors only (their INFO is chatter: associations, HTTP requests);
        # VOXL's own messages from INFO. Dagster's run events come through ``run_log`` at DEBUG.
        root.setLevel(logging.WARNING)
        for name in ("voxl", "voxl_assets"):
            logging.getLogger(name).setLevel(logging.INFO)
        logging.captureWarnings(True)
        global _active
        _active = self
        return self

    def uninstall(self) -> None:
        global _active
        _active = None
        logging.captureWarnings(False)
        root = logging.getLogger()
        if self._previous is not None:
            root.handlers, level = self._previous
            root.setLevel(level)
        for name in ("voxl", "voxl_assets"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        for handler in self.handlers:
            handler.close()

    def written(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def log_unexpected(self, exc: BaseException) -> str:
        """Record an unexpected error's stack (code locations only: its message may quote a value
        from a file or the database) and return the one line to show."""
        frames = "".join(traceback.format_tb(exc.__traceback__))
        logging.getLogger("voxl").error(
            "unexpected %s\n%s", type(exc).__name__, frames.rstrip("\n")
        )
        return f"unexpected {type(exc).__name__} at {code_location(exc)}"


def progress_wanted(stream: IO[str] | None = None) -> bool:
    """Progress lines only on a terminal: piped output and CI logs get the summary alone."""
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class PhaseLine(logging.Handler):
    """Shows what a run is doing on one progress line, from the Dagster events it logs."""

    def __init__(self, show: Callable[[str], None]) -> None:
        super().__init__(logging.DEBUG)  # Dagster logs its step events at DEBUG
        self._show = show

    def emit(self, record: logging.LogRecord) -> None:
        meta: dict[str, Any] = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:
            if record.levelno < logging.INFO:
                return
            text = str(meta.get("orig_message") or record.getMessage()).splitlines()[0]
        elif event.event_type_value == "STEP_START":
            text = f"{step} started"
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            text = f"{event.asset_key.to_user_string()} written"
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            text = f"{step}: checks evaluated"
        else:
            return
        self._show(text[:70])


@contextmanager
def phase_progress(
    label: str, log: CommandLog | None, *, enabled: bool | None = None, file: IO[str] | None = None
) -> Iterator[None]:
    """One line with the elapsed time and the run's latest step, for work without a count
    (ingesting an extract, exporting one)."""
    from tqdm import tqdm

    enabled = progress_wanted(file) if enabled is None else enabled
    bar = tqdm(
        desc=label,
        total=None,
        bar_format="{desc} [{elapsed}]",
        disable=not enabled,
        file=file if file is not None else sys.stderr,
        leave=False,
    )
    handler = PhaseLine(lambda text: bar.set_description_str(f"{label}: {text}"))
    if log is not None and enabled:
        log.handlers.append(handler)
    stop = threading.Event()
    ticker = threading.Thread(target=_refresh_until, args=(bar, stop), daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        if log is not None and handler in log.handlers:
            log.handlers.remove(handler)
        bar.close()


def _refresh_until(bar: Any, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        bar.refresh()


@contextmanager
def study_progress(
    count_done: Callable[[], int],
    total: int,
    label: str,
    *,
    enabled: bool | None = None,
    file: IO[str] | None = None,
    interval: float = 0.5,
) -> Iterator[None]:
    """A bar of studies done of ``total`` with rate and ETA. ``count_done`` is polled from a
    thread (it reads the VOXL database, which the run updates as each study ends)."""
    from tqdm import tqdm

    enabled = progress_wanted(file) if enabled is None else enabled
    bar = tqdm(
        desc=label,
        total=total,
        unit="study",
        disable=not enabled,
        file=file if file is not None else sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    stop = threading.Event()

    def poll() -> None:
        while True:
            finished = stop.wait(interval)
            try:
                done = min(total, count_done())
            except Exception:  # a busy database: try again on the next poll
                done = bar.n
            bar.update(done - bar.n)
            if finished:
                return

    poller = threading.Thread(target=poll, daemon=True)
    if enabled:
        poller.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            poller.join()
        bar.close()


def progress_over_studies(
    database: VoxlDatabase, study_keys: Collection[str], label: str, **options: Any
) -> AbstractContextManager[None]:
    """``study_progress`` over study partitions, counting those that end from now on."""
    from voxl_assets.db.models import utcnow
    from voxl_assets.study_state import count_ended_since, study_id_from_partition_key

    ids = {study_id_from_partition_key(key) for key in study_keys}
    since = utcnow()
    return study_progress(
        lambda: count_ended_since(database, ids, since), len(ids), label, **options
    )
