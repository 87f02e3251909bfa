"""The shared matching rules (voxl_assets/identifier_rules.py), called directly: what the DICOM
checks and the leak guard both take for 'this text holds that identifier'."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxl_assets.identifier_rules import (
    IdentifierMatcher,
    date_forms,
    date_needles,
    fold,
    fold_ascii_bytes,
    fold_keeping_separators,
    identifier_needles,
    name_needles,
    name_parts,
    value_needles,
)


def matcher(
    *, ids: tuple[str, ...] = (), names: tuple[str, ...] = (), dates: tuple[str, ...] = ()
) -> IdentifierMatcher:
    needles = [n for v in ids for n in value_needles(v)]
    needles += [n for v in names for n in name_needles(v)]
    needles += [n for v in dates for n in date_needles(v)]
    return IdentifierMatcher(needles)


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("SMITH.JOHN", "smithjohn"),
        ("Müller, Jörg", "mullerjorg"),
        ("MRN: 47000022.", "mrn47000022"),
        ("\uff14\uff17\uff10", "470"),  # full-width digits
        ("Straße", "strasse"),
        ("Søren Łukasz", "sorenlukasz"),
        ("ﾔﾏﾀﾞ", "ヤマタ"),  # half-width katakana, voicing mark dropped like an accent
        ("Иванов", "иbahob"),  # Cyrillic look-alikes of Latin letters fold to them
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded
    assert fold_keeping_separators(text).replace(" ", "") == folded


@given(st.text(max_size=40))
def test_folding_is_the_same_with_or_without_separators_and_per_piece(text: str) -> None:
    assert fold_keeping_separators(text).replace(" ", "") == fold(text)
    middle = len(text) // 2
    assert fold(text[:middle]) + fold(text[middle:]) == fold(text)
    if text.isascii():
        assert fold_ascii_bytes(text.encode()).decode() == fold(text)


def test_date_forms() -> None:
    forms = set(date_forms("19610305"))
    assert {"19610305", "05031961", "03051961", "531961", "351961", "050361", "030561"} <= forms
    assert {"5mar1961", "05march1961", "mar51961", "1961mar05"} <= forms
    assert date_forms("1961") == [] and date_forms("19611332") == []


def test_name_parts_skip_particles_prefixes_and_suffixes() -> None:
    parts = name_parts("van der Berg^Anna Maria^^Dr^Jr")
    assert {"berg", "anna", "maria", "vanderberg" + "annamaria"} <= set(parts)
    assert not {"van", "der", "dr", "jr"} & set(parts)
    assert {"山田", "太郎", "山田太郎", fold("やまだ")} <= set(
        name_parts("山田^太郎=やまだ^たろう")
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("MRN: 47000022.", True),
        ("mrn47000022", True),
        ("4700-0022", True),
        ("0047000022", True),
        ("47000022.0", True),
        ("470000221", False),
        ("147000022", False),
        ("ACC5566778#2", True),
        ("pt_acc5566778", True),
        ("acc55667789", False),
        ("5566778", True),  # the digits of an alphanumeric id
        ("55667781", False),
    ],
)
def test_identifier_boundaries(text: str, found: bool) -> None:
    assert bool(matcher(ids=("47000022", "ACC5566778")).find(text)) is found


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("LEE", True),
        ("pt_lee", True),
        ("sleep", False),  # a short part only as a whole run
        ("Zebedee's", True),
        ("ptzebedee", True),  # a long part anywhere
        ("Wilhelmina Otterburn", True),
        ("MUELLER", True),
        ("muller", True),
    ],
)
def test_name_matching(text: str, found: bool) -> None:
    m = matcher(names=("LEE^WILHELMINA", "ZEBEDEE^QUINCY", "OTTERBURN^X", "Müller^Jörg"))
    assert bool(m.find(text)) is found


def test_birth_dates_are_exempt_inside_date_attributes_and_may_carry_a_time() -> None:
    m = matcher(dates=("19611231",))
    assert m.find("31/12/1961") and m.find("dob 19611231093000")
    assert not m.find("19611231", in_date_attribute=True)
    assert not m.find("219611231")


def test_minimum_lengths() -> None:
    assert identifier_needles("1234") == []  # under 5 digits
    assert identifier_needles("AB") == []  # under 3 units
    assert [n.whole_run for n in identifier_needles("AB1")] == [True]
    assert [n.whole_run for n in identifier_needles("山田")] == [False]  # 6 units: anywhere


def test_numbers_of_numeric_identifiers_and_dates() -> None:
    m = matcher(ids=("0047000022", "ACC1"), dates=("19611231",))
    assert {47000022, 19611231, 31121961} <= m.numbers  # 8-digit written dates are numbers too
    assert all(n >= 10_000_000 for n in m.numbers)
