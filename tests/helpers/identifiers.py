"""Identifier matchers for tests that plant identifiers in values."""

from voxl_assets.deid.identifiers import StudyIdentifiers
from voxl_assets.identifier_rules import IdentifierMatcher


def matcher_for(mrn: str, *names: str) -> IdentifierMatcher:
    """The matcher of a study with ``mrn`` and the patient ``names``."""
    identifiers = StudyIdentifiers()
    identifiers.add(mrn)
    for name in names:
        identifiers.add_name(name)
    return identifiers.matcher()
