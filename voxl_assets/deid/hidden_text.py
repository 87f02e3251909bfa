"""Text hidden in a value under an encoding that no character set declares: UTF-16 in a binary
value (either byte order, either alignment) and runs of base64 or hex that decode to text.

A kept private element can carry "SMITH^JOHN" as ``U01JVEheSk9ITg==``, as ``534D495448...`` or as
UTF-16 Japanese; read as the instance's character sets they are harmless letters. Each reading
says whether it is *whole*: every byte decoded is printable text, which random bytes almost
never are, so short name parts (matched only as whole runs) are looked for only there. In
partial readings (the printable stretches of a decoding, and UTF-16, which turns any bytes into
characters) only identifiers long enough to match as substrings are looked for: a hashed value
or a UID decodes to random bytes, and a false finding would fail the study every time.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass

from voxl_assets.identifier_rules import IdentifierMatcher, Needle, fold

_BASE64_RUNS = (
    (re.compile(rb"[A-Za-z0-9+/]{8,}={0,2}"), b"+/"),
    (re.compile(rb"[A-Za-z0-9_-]{8,}={0,2}"), b"-_"),
)
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{8,}")
_CANDIDATE_RUN = re.compile(rb"[A-Za-z0-9+/_-]{8}")  # where either could start
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{6,}")
MIN_UTF16_BYTES = 8
MIN_WHOLE_BYTES = 6  # random bytes are all printable text once in 400 at this length


@dataclass(frozen=True)
class HiddenReading:
    text: str
    whole: bool  # every decoded byte is printable text: short names count too


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _readings_of(decoded: bytes) -> Iterator[HiddenReading]:
    """A decoding as text: whole when all of it is printable (NULs of UTF-16 folded away), and
    its printable stretches."""
    compact = decoded.replace(b"\0", b"")
    text = _text(compact) if len(compact) >= MIN_WHOLE_BYTES else None
    if text:
        yield HiddenReading(text, True)
        return
    for run in _PRINTABLE_RUN.findall(compact):
        yield HiddenReading(run.decode("ascii"), False)


def _base64_decodings(value: bytes) -> Iterator[bytes]:
    for pattern, altchars in _BASE64_RUNS:
        for run in pattern.findall(value):
            if run.isdigit():  # a number (a UID's digits), not base64 of text
                continue
            body = run.rstrip(b"=")
            for skip in range(4):  # glued to other letters: any alignment
                chunk = body[skip:]
                chunk = chunk[: len(chunk) - len(chunk) % 4] if len(chunk) % 4 == 1 else chunk
                if len(chunk) < 8:
                    continue
                try:
                    yield base64.b64decode(
                        chunk + b"=" * (-len(chunk) % 4), altchars=altchars, validate=True
                    )
                except (binascii.Error, ValueError):
                    continue


def _hex_decodings(value: bytes) -> Iterator[bytes]:
    for run in _HEX_RUN.findall(value):
        for skip in range(2):
            chunk = run[skip:]
            yield bytes.fromhex(chunk[: len(chunk) - len(chunk) % 2].decode("ascii"))


def hidden_readings(value: bytes, *, binary: bool) -> list[HiddenReading]:
    """Every hidden reading of ``value`` (``binary``: its VR holds bytes, so UTF-16 too)."""
    readings: list[HiddenReading] = []
    for decoded in (*_base64_decodings(value), *_hex_decodings(value)):
        readings.extend(_readings_of(decoded))
    if binary and len(value) >= MIN_UTF16_BYTES:
        for codec in ("utf-16-le", "utf-16-be"):
            for skip in range(2):
                chunk = value[skip:]
                text = chunk[: len(chunk) - len(chunk) % 2].decode(codec, "ignore")
                readings.append(HiddenReading(text.replace("\0", ""), False))
    return readings


def hidden_hits(value: bytes, matcher: IdentifierMatcher, *, binary: bool) -> list[Needle]:
    """The identifiers ``value`` hides under base64, hex or UTF-16 (see the module's rules)."""
    found: list[Needle] = []
    for reading in hidden_readings(value, binary=binary):
        for needle in matcher.find(reading.text):
            if (reading.whole or not needle.whole_run) and needle not in found:
                found.append(needle)
    return found


def may_hide_text(value: bytes, *, binary: bool) -> bool:
    """Whether ``value`` has anything to decode: a run of base64 or hex, or (``binary``) enough
    bytes for UTF-16."""
    return (binary and len(value) >= MIN_UTF16_BYTES) or _CANDIDATE_RUN.search(value) is not None


def may_hide_identifiers(value: bytes, matcher: IdentifierMatcher, *, binary: bool) -> bool:
    """The prefilter: False only when no hidden reading of ``value`` holds a needle
    (boundaries not judged)."""
    return any(
        matcher.any_in_folded(fold(reading.text))
        for reading in hidden_readings(value, binary=binary)
    )
