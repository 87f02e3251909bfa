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
