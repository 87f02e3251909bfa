"""What counts as an identifier in written text: the one set of rules that both the DICOM privacy
checks (``voxl_assets/deid``) and the EHR leak guard (``voxl_assets/export/leak_guard.py``) use,
so the two cannot drift apart.

Folding. Text and identifiers are compared after folding: compatibility decomposition (NFKD, so
full-width digits and half-width katakana become their plain forms), case folding, accents and
other combining marks dropped, a few letters that have no decomposition transliterated (ß ss,
æ ae, ø o, ł l...), the decimal digits of every script as ASCII digits, Cyrillic and Greek
look-alikes of Latin letters as those letters, and every character that is not a letter or a digit
removed. "SMITH.JOHN",
"Smith John" and "smith-john" all fold to "smithjohn"; "Müller" to "muller"; "MRN: 47000022."
to "mrn47000022".

Matching. A folded identifier of at least ``SUBSTRING_UNITS`` (5) units is looked for anywhere in
the folded text, so glued prefixes and suffixes ("mrn47000023", "pt_SMITH", "ACC123#2") and
separators inside ("4700 0022") do not hide it. Digits are the exception: an identifier that starts
(ends) with a digit does not match where the text continues it with another digit on that side
("470000221" is another number), except leading zeros ("0047000022") and, for dates, a time after
them ("196112310930"). Shorter identifiers (3-4 units, with a letter: "LEE", "DOE") match only as
whole alphanumeric runs, and all-digit values shorter than ``MIN_DIGITS`` (5) are not looked for:
they would fire on ordinary numbers. A CJK character counts as three units (one character is a
syllable or a word, and such text has no spaces).

Variants. A person name is looked for by each part (family, given and middle names; particles
such as "van" or "de" and prefixes or suffixes such as "Dr" are not) and by family+given in both
orders; German umlauts also as ae/oe/ue; Cyrillic and Greek names also romanised. A date of birth is looked for in the common written forms
(19611231, 1961-12-31, 31/12/1961, 31.12.1961, 12/31/1961, 31 Dec 1961, December 31 1961, Dec 31
1961, 1961 Dec 31, with and without leading zeros, and 311261, 123161) except inside DICOM date
attributes, where a newborn's study date may equal it. A numeric identifier is also looked for
without its leading zeros, and an alphanumeric one by its digits when they are 6 or more.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import ahocorasick_rs
import numpy as np

SUBSTRING_UNITS = 5
MIN_UNITS = 3
MIN_DIGITS = 5
MIN_DIGIT_VARIANT = 6
_SEPARATOR = " "

_SPECIAL_LETTERS = {
    "æ": "ae",
    "œ": "oe",
    "ø": "o",
    "ł": "l",
    "đ": "d",
    "ð": "d",
    "þ": "th",
    "\u0131": "i",  # dotless i
    "ħ": "h",
    "ŧ": "t",
    "ŀ": "l",
    "ĸ": "k",
}
_NOT_ALNUM = re.compile(r"[\W_]+")
_ASCII_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
_ASCII_NOT_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())
_ASCII_NON_ALNUM_TO_SPACE = bytes(
    b if chr(b).isalnum() or b >= 128 else 32 for b in range(256)
).translate(_ASCII_LOWER)
_PARTICLES = frozenset(
    [
        "van",
        "von",
        "der",
        "den",
        "de",
        "del",
        "della",
        "da",
        "das",
        "dos",
        "di",
        "du",
        "la",
        "le",
        "les",
        "el",
        "al",
        "bin",
        "ben",
        "ibn",
        "mac",
        "mc",
        "st",
        "y",
        "e",
    ]
)
_MONTHS = [
    ("jan", "january"),
    ("feb", "february"),
    ("mar", "march"),
    ("apr", "april"),
    ("may", "may"),
    ("jun", "june"),
    ("jul", "july"),
    ("aug", "august"),
    ("sep", "september"),
    ("oct", "october"),
    ("nov", "november"),
    ("dec", "december"),
]


# --- folding -----------------------------------------------------------------------------------


# Cyrillic and Greek letters that look like Latin ones (lower case: folding case-folds first), so
# "ZЕBЕDЕЕ" with Cyrillic Е folds like "ZEBEDEE"; text and identifiers fold alike, so a Cyrillic
# name still matches Cyrillic text. Transliteration (Иванов as IVANOV) is a name variant instead.
_LOOKALIKES = {
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ү": "y", "ӏ": "l",
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "h", "ι": "i", "κ": "k", "μ": "m", "ν": "n",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "y", "χ": "x", "ϲ": "c", "ω": "w",
}  # fmt: skip


@functools.cache
def _script_table() -> dict[int, str]:
    """Decimal digits of every script (Arabic-Indic, Devanagari, Thai...) as ASCII digits, and
    the look-alike letters above as Latin ones. Built once, on first non-ASCII text."""
    table = {
        code: str(unicodedata.decimal(chr(code)))
        for code in range(0x80, 0x110000)
        if unicodedata.category(chr(code)) == "Nd"
    }
    table.update({ord(letter): latin for letter, latin in _LOOKALIKES.items()})
    return table


def _decomposed(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).casefold()
    for letter, replacement in _SPECIAL_LETTERS.items():
        if letter in text:
            text = text.replace(letter, replacement)
    if text.isascii():
        return text
    return unicodedata.normalize("NFKD", text).translate(_script_table())


def fold(text: str) -> str:
    """``text`` folded: compatibility-decomposed, case-folded, without accents, separators or
    anything else that is not a letter or a digit."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_LOWER, _ASCII_NOT_ALNUM).decode("ascii")
    return _NOT_ALNUM.sub("", _decomposed(text))


MARKER = "\x1e"  # record separator: joins texts folded together, never inside a needle
_ASCII_NOT_ALNUM_OR_MARKER = _ASCII_NOT_ALNUM.replace(b"\x1e", b"")


_RUN_FOLDS: dict[bytes, bytes] = {}


def _fold_run(run: bytes) -> bytes:
    folded = _RUN_FOLDS.get(run)
    if folded is None:
        folded = fold(run.decode("utf-8", "replace")).encode("utf-8")
        if len(_RUN_FOLDS) < 100_000:  # text is mostly a few accents and punctuation marks
            _RUN_FOLDS[run] = folded
    return folded


def fold_utf8(data: bytes) -> bytes:
    """``fold`` on UTF-8 bytes, exactly: ASCII bytes at C speed, each run of other characters
    folded once and remembered (folding is character by character, so runs fold apart)."""
    data = data.translate(_ASCII_LOWER, _ASCII_NOT_ALNUM_OR_MARKER)
    if data.isascii():
        return data
    high = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) >= 0x80)
    breaks = np.flatnonzero(np.diff(high) != 1)
    starts = high[np.concatenate(([0], breaks + 1))].tolist()
    ends = (high[np.concatenate((breaks, [len(high) - 1]))] + 1).tolist()
    pieces, previous = [], 0
    for start, end in zip(starts, ends, strict=True):
        pieces += [data[previous:start], _fold_run(data[start:end])]
        previous = end
    pieces.append(data[previous:])
    return b"".join(pieces)


def fold_many(texts: Iterable[str]) -> bytes:
    """``fold`` of each text, UTF-8 encoded, joined by ``MARKER``: one pass over many cells."""
    return fold_utf8(MARKER.join(t.replace(MARKER, "") for t in texts).encode("utf-8"))


def fold_ascii_bytes(data: bytes) -> bytes:
    """``fold`` for bytes of an ASCII-compatible encoding, at C speed: ASCII letters lower-cased,
    other ASCII bytes that are not letters or digits removed, bytes >= 0x80 kept as they are
    (they are only compared with other such bytes, so a prefilter stays sound)."""
    return data.translate(_ASCII_LOWER, _ASCII_NOT_ALNUM)


def fold_keeping_separators(text: str) -> str:
    """Like ``fold`` but every run of separators becomes one space, so the positions around a
    match can be judged. Removing the spaces gives exactly ``fold(text)``."""
    if text.isascii():
        folded = text.encode("ascii").translate(_ASCII_NON_ALNUM_TO_SPACE).decode("ascii")
    else:
        decomposed = _decomposed(text)
        folded = "".join(
            c if c.isalnum() else _SEPARATOR
            for c in decomposed
            if not unicodedata.category(c).startswith("M")
        )
    return re.sub(" +", " ", folded)


def _is_cjk(character: str) -> bool:
    code = ord(character)
    return (
        0x3040 <= code <= 0x30FF
        or 0x3400 <= code <= 0x4DBF
        or 0x4E00 <= code <= 0x9FFF
        or 0xF900 <= code <= 0xFAFF
        or 0x31F0 <= code <= 0x31FF
        or 0x20000 <= code <= 0x2FFFF
    )


def units(folded: str) -> int:
    """How much a folded identifier says: one unit per letter or digit, three per CJK character."""
    if folded.isascii():
        return len(folded)
    return sum(3 if _is_cjk(c) else 1 for c in folded)


# --- needles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    """One folded form to look for, and how it may match."""

    text: str
    kind: str  # "identifier", "name", "birth date", "uid": for findings (never the value)
    whole_run: bool  # short: only as a whole alphanumeric run
    date: bool  # digits may follow; not looked for inside DICOM date attributes


def _needle(folded: str, kind: str, *, date_form: bool = False) -> Needle | None:
    if not folded:
        return None
    if folded.isdigit():
        if len(folded) < MIN_DIGITS:
            return None
        return Needle(folded, kind, False, date_form)
    size = units(folded)
    if size < MIN_UNITS:
        return None
    return Needle(folded, kind, size < SUBSTRING_UNITS, date_form)


def identifier_needles(value: str, kind: str = "identifier") -> list[Needle]:
    """An MRN, accession number, NHS number or any other identifying value (not a name or date)."""
    folded = fold(value)
    forms = {folded}
    if folded.isdigit() and kind != "uid":
        forms.add(folded.lstrip("0"))
    elif kind != "uid":
        forms.update(run for run in re.findall(r"\d+", folded) if len(run) >= MIN_DIGIT_VARIANT)
    return [n for n in (_needle(f, kind) for f in forms) if n is not None]


def uid_needles(value: str) -> list[Needle]:
    return identifier_needles(value, "uid")


def looks_like_uid(value: str) -> bool:
    return value.count(".") >= 2 and value.replace(".", "").isdigit()


def value_needles(value: str) -> list[Needle]:
    """An identifying value of unknown kind: a UID when it looks like one, else an id."""
    text = value.strip()
    return uid_needles(text) if looks_like_uid(text) else identifier_needles(text)


def name_parts(value: str) -> list[str]:
    """The parts of a person name worth looking for, folded (DICOM PN or free form)."""
    parts: list[str] = []
    for group in value.split("="):
        components = group.split("^")
        wanted = components[:3] if len(components) > 1 else components
        if len(components) == 1:  # "Smith, John" or "John Smith": every word
            wanted = [group]
        words: list[str] = []
        for component in wanted:
            words += [w for w in re.split("[\\s,\\-'\u2019.]+", component) if w]
        folded_words = [fold(w) for w in words]
        parts += [w for w in folded_words if w and w not in _PARTICLES]
        family = fold(components[0]) if len(components) > 1 else ""
        given = fold(components[1]) if len(components) > 1 else ""
        if family and given:
            parts += [family + given, given + family]
        whole = fold(group)
        if whole:
            parts.append(whole)
    return list(dict.fromkeys(parts))


def _umlaut_variants(value: str) -> list[str]:
    lowered = value.casefold()
    variants = []
    if any(u in lowered for u in "äöü"):
        variants.append(lowered.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue"))
    return variants


# Two common romanisations each (ICAO 9303 as on passports; BGN/PCGN-like), so a name written in
# Cyrillic or Greek in the header is also found where a report spells it in Latin letters.
_CYRILLIC = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ж": "zh", "з": "z", "и": "i",
    "й": "i", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s",
    "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch",
    "ъ": "ie", "ы": "y", "ь": "", "э": "e", "ю": "iu", "я": "ia", "і": "i", "ї": "i", "є": "ie",
    "ґ": "g", "ў": "u",
})  # fmt: skip
_CYRILLIC_ALTERNATIVE = str.maketrans({
    "й": "y", "х": "h", "ю": "yu", "я": "ya", "ъ": "", "є": "ye", "ї": "yi", "ц": "c",
})  # fmt: skip
_GREEK = str.maketrans({
    "α": "a", "β": "v", "γ": "g", "δ": "d", "ε": "e", "ζ": "z", "η": "i", "θ": "th", "ι": "i",
    "κ": "k", "λ": "l", "μ": "m", "ν": "n", "ξ": "x", "ο": "o", "π": "p", "ρ": "r", "σ": "s",
    "ς": "s", "τ": "t", "υ": "y", "φ": "f", "χ": "ch", "ψ": "ps", "ω": "o",
})  # fmt: skip
_GREEK_ALTERNATIVE = str.maketrans({"β": "b", "η": "e", "υ": "u", "χ": "h", "ω": "o"})


def _romanisations(value: str) -> list[str]:
    """A Cyrillic or Greek name in Latin letters, two ways; [] for other scripts."""
    text = "".join(
        c for c in unicodedata.normalize("NFKD", value).casefold() if not unicodedata.combining(c)
    )
    if text.isascii() or not re.search("[\u0370-\u03ff\u0400-\u04ff]", text):
        return []
    plain = text.translate(_CYRILLIC).translate(_GREEK)
    other = text.translate(_CYRILLIC_ALTERNATIVE).translate(_GREEK_ALTERNATIVE)
    return list(dict.fromkeys([plain, other.translate(_CYRILLIC).translate(_GREEK)]))


def name_needles(value: str) -> list[Needle]:
    forms = name_parts(value)
    for variant in _umlaut_variants(value) + _romanisations(value):
        forms += name_parts(variant)
    for form in list(forms):  # "MUELLER" in the header, "Müller" in the text
        if units(form) >= SUBSTRING_UNITS and re.search("[aou]e", form) and not form.isdigit():
            forms.append(re.sub("([aou])e", r"\1", form))
    return [n for n in (_needle(f, "name") for f in dict.fromkeys(forms)) if n is not None]


def date_forms(value: str) -> list[str]:
    """The folded written forms of a DICOM date (YYYYMMDD); [] when it is not a date."""
    text = value.strip()[:8]
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return []
    y, yy = f"{day.year:04d}", f"{day.year % 100:02d}"
    ms = [f"{day.month:02d}", str(day.month)]
    ds = [f"{day.day:02d}", str(day.day)]
    short, long = _MONTHS[day.month - 1]
    forms = [y + ms[0] + ds[0]]
    for m in ms:
        for d in ds:
            forms += [d + m + y, m + d + y]
    forms += [ds[0] + ms[0] + yy, ms[0] + ds[0] + yy]
    for month in (short, long):
        for d in ds:
            forms += [d + month + y, month + d + y, y + month + d]
    return list(dict.fromkeys(forms))


def date_needles(value: str) -> list[Needle]:
    needles = (_needle(f, "birth date", date_form=True) for f in date_forms(value))
    return [n for n in needles if n is not None]


def numbers_of(needles: Iterable[Needle]) -> frozenset[int]:
    """The integer values of all-digit identifiers and dates, to compare with binary numbers and
    number strings."""
    found = set()
    for needle in needles:
        if needle.text.isdigit() and needle.kind in ("identifier", "birth date"):
            number = int(needle.text)
            if number < 2**64 and not (needle.kind == "birth date" and len(needle.text) != 8):
                found.add(number)
    return frozenset(found)


# --- matching ----------------------------------------------------------------------------------


class IdentifierMatcher:
    """A compiled set of needles (Aho-Corasick, linear in the text whatever their number)."""

    def __init__(self, needles: Iterable[Needle]) -> None:
        merged: dict[str, Needle] = {}
        for needle in needles:
            known = merged.get(needle.text)
            if known is None:
                merged[needle.text] = needle
            else:  # the strictest reading wins: a value that is also an ID is not only a date
                merged[needle.text] = Needle(
                    needle.text,
                    known.kind if not known.date else needle.kind,
                    known.whole_run and needle.whole_run,
                    known.date and needle.date,
                )
        self.needles = list(merged.values())
        texts = [n.text for n in self.needles]
        self._text = ahocorasick_rs.AhoCorasick(texts) if texts else None
        encoded = [t.encode("utf-8") for t in texts]
        self._bytes = ahocorasick_rs.BytesAhoCorasick(encoded) if texts else None
        self.numbers = numbers_of(self.needles)

    def __len__(self) -> int:
        return len(self.needles)

    def __repr__(self) -> str:  # never print the values
        return f"IdentifierMatcher({len(self)} needles)"

    def candidates_in_folded_bytes(self, folded: bytes | memoryview) -> list[tuple[int, int, int]]:
        """(needle, start, end) of every needle (UTF-8) in folded bytes, boundaries not judged:
        a prefilter whose candidates ``find`` confirms on the text they came from."""
        if self._bytes is None:
            return []
        return self._bytes.find_matches_as_indexes(folded, overlapping=True)

    def any_in_folded(self, folded: str) -> bool:
        """Whether any needle occurs in a folded string, boundaries not judged (a prefilter)."""
        if self._text is None:
            return False
        return bool(self._text.find_matches_as_indexes(folded, overlapping=True))

    def find(self, text: str, *, in_date_attribute: bool = False) -> list[Needle]:
        """The needles that ``text`` holds under the matching rules."""
        if self._text is None or not text:
            return []
        spaced = fold_keeping_separators(text)
        positions = [i for i, c in enumerate(spaced) if c != _SEPARATOR]
        folded = "".join(spaced[i] for i in positions)
        found: list[Needle] = []
        for index, start, end in self._text.find_matches_as_indexes(folded, overlapping=True):
            needle = self.needles[index]
            if needle in found or (in_date_attribute and needle.date):
                continue
            if _matches(needle, spaced, positions[start], positions[end - 1] + 1):
                found.append(needle)
        return found


def _matches(needle: Needle, spaced: str, start: int, end: int) -> bool:
    before = spaced[start - 1] if start > 0 else _SEPARATOR
    after = spaced[end] if end < len(spaced) else _SEPARATOR
    if needle.whole_run:
        return before == _SEPARATOR and after == _SEPARATOR and _SEPARATOR not in spaced[start:end]
    if needle.text[0].isdigit() and before.isdigit():
        k = start - 1
        while k >= 0 and spaced[k] == "0":
            k -= 1
        if k >= 0 and spaced[k].isdigit():
            return False  # the text's number starts earlier: another number
    return not (needle.text[-1].isdigit() and after.isdigit() and not needle.date)
