"""Where the Dagster event log of the runs `voxl` starts in-process goes.

Dagster's default logger writes every event (DEBUG included) to the terminal. Inside a `voxl`
command the events go to the command's log file instead (``voxl_assets.terminal.CommandLog``);
the instance's event log, which the UI shows, is written either way. Outside the CLI (tests,
library use) Dagster's default applies.
"""

from __future__ import annotations

import logging

from dagster import InitLoggerContext, LoggerDefinition

from voxl_assets.terminal import active_log_handlers


def _command_logger(_init_context: InitLoggerContext) -> logging.Logger:
    # The handlers are read at the run's start, so a progress line added for this run sees it.
    run_logger = logging.Logger("dagster", level=logging.DEBUG)
    for handler in active_log_handlers():
        run_logger.addHandler(handler)
    return run_logger


voxl_run_logger = LoggerDefinition(
    _command_logger,
    description="VOXL's in-process runs: the event log to the `voxl` command's log file.",
)


def run_loggers() -> dict[str, LoggerDefinition]:
    """The loggers for an in-process run: the `voxl` command's when one runs, else Dagster's."""
    return {"console": voxl_run_logger} if active_log_handlers() else {}
