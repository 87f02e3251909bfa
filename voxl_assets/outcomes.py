"""How a study's stage ends when it does not simply succeed: failed, filtered on purpose, or
waiting. The retrieval (``vna/``), de-identification (``deid/``) and upload code raise these;
``imaging/`` turns them into stage outcomes. A message is shown in `voxl status`, the UI and the
export's exclusions, so it must never hold an identifier."""

from __future__ import annotations

from datetime import datetime


class StudyFailure(Exception):
    """A stage failed for a reason worth showing; the message must hold no identifier."""


class StudyFiltered(Exception):
    """A stage ended the study on purpose (every series filtered out, say)."""


class StudyWaiting(Exception):
    """The study must wait (an archive's window is closed); the message says for what, and
    ``not_before`` when to try again."""

    def __init__(self, message: str, not_before: datetime | None = None) -> None:
        super().__init__(message)
        self.not_before = not_before


def code_location(exc: BaseException) -> str:
    """``file.py:123 in function`` where ``exc`` was raised: a code location to show for an
    unexpected error, whose message may quote a value from a file, a peer or the database."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "unknown location"
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
