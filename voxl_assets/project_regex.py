"""Regular expressions from project definitions and tag-operation files, matched in linear time.

A project's regexes (``series_filters.description_patterns``, ``allowed_manufacturers[].regex``,
an override file's ``manufacturer``) are matched against every instance's header. Python's ``re``
backtracks: ``(a+)+$`` takes seconds on a 30-character SeriesDescription and years on a 64-character
one, which would hang a worker. They are therefore compiled with RE2 (``google-re2``), whose matching
time is linear in the input, and a pattern RE2 cannot take (backreferences, look-around,
possessive quantifiers) is refused when the definition is loaded, so `voxl check-config` names it.

RE2 syntax is Python's for everything a header filter needs (classes, alternation, anchors,
``(?i)``, counted repetition up to 1000). Differences worth knowing: ``\\d``, ``\\w``, ``\\s`` and
``\\b`` are ASCII-only, and look-around and backreferences do not exist.
"""

from __future__ import annotations

from typing import Any

import re2

# Generous for a header filter; a bound keeps a pasted blob from reaching the compiler.
MAX_PATTERN_LENGTH = 1000


class ProjectRegexError(ValueError):
    """A pattern VOXL refuses; the message says why, never what it would have matched."""


class ProjectRegex:
    """A compiled RE2 pattern with the small part of ``re.Pattern``'s interface VOXL uses."""

    __slots__ = ("_compiled", "ignore_case", "pattern")

    def __init__(self, pattern: str, *, ignore_case: bool = False) -> None:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ProjectRegexError(
                f"longer than {MAX_PATTERN_LENGTH} characters ({len(pattern)}): shorten it"
            )
        options = re2.Options()
        options.case_sensitive = not ignore_case
        options.log_errors = False  # RE2 would print the pattern to stderr; the error says why
        try:
            self._compiled: Any = re2.compile(pattern, options)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise ProjectRegexError(
                f"not a regular expression VOXL can match in linear time ({reason}); "
                "backreferences and look-around are not supported"
            ) from None
        self.pattern = pattern
        self.ignore_case = ignore_case

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text`` (time linear in its length)."""
        try:
            return self._compiled.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8 encoded for RE2
            return self._compiled.search(text.encode("utf-8", "replace").decode()) is not None

    def __repr__(self) -> str:
        flags = ", ignore_case=True" if self.ignore_case else ""
        return f"ProjectRegex({self.pattern!r}{flags})"


def compile_project_regex(pattern: str, *, ignore_case: bool = False) -> ProjectRegex:
    """Compile a regex from a project or tag-operation file.

    Raises:
        ProjectRegexError: RE2 cannot compile it (so it cannot be matched in linear time), or it
            is unreasonably long.
    """
    return ProjectRegex(pattern, ignore_case=ignore_case)
