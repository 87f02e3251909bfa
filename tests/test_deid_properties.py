"""Property test: whatever extra public or private tags an instance carries, none survives."""

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.helpers.deid import make_engine
from voxl_assets.deid.checks import disallowed_tags
from voxl_assets.synthetic import SeriesSpec, StudySpec, make_instance

_ENGINE = make_engine(Path(tempfile.mkdtemp(prefix="voxl-prop-")))
_OPERATIONS = _ENGINE.policy.for_manufacturer("SIEMENS")
_ALLOWED = set(_OPERATIONS.public)

_DICTIONARY_TAGS = sorted(
    tag
    for tag, entry in DicomDictionary.items()
    if tag not in _ALLOWED
    and entry[0] not in {"SQ", "OB or OW", "US or SS", "US or OW"}
    and tag > 0x00080000
    and tag >> 16 != 0x7FE0
    and (tag & 0xFFFF) != 0
)
# Standard attributes outside the allow-list, and arbitrary (even-group, unknown) tags.
public_tags = st.one_of(
    st.sampled_from(_DICTIONARY_TAGS),
    st.builds(
        lambda group, element: (group << 16) | element,
        st.integers(0x0004, 0x3FFF).map(lambda g: g * 2),
        st.integers(0x0001, 0xFFFF),
    ).filter(lambda tag: tag not in _ALLOWED),
)
private_groups = st.integers(0x0009, 0x7FFF).filter(lambda g: g % 2 == 1)
texts = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ", min_size=1, max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra_public=st.lists(st.tuples(public_tags, texts), max_size=8),
    extra_private=st.lists(
        st.tuples(private_groups, texts, st.integers(0, 0xFF), texts), min_size=1, max_size=5
    ),
    nested=st.booleans(),
)
def test_random_extra_and_private_tags_never_survive(
    extra_public: list[tuple[int, str]],
    extra_private: list[tuple[int, str, int, str]],
    nested: bool,
) -> None:
    ds = make_instance(StudySpec(patient_id="P1", accession_number="A1"), SeriesSpec(), 1)
    target = ds.ReferencedImageSequence[0] if nested else ds
    for tag, value in extra_public:
        target.add_new(tag, "LO", value)
    for group, creator, offset, value in extra_private:
        block = target.private_block(group, creator.strip() or "X", create=True)
        block.add_new(offset, "LO", value)
    wrapper = Dataset()
    wrapper.add_new(0x00091001, "LO", "private in an unlisted sequence")
    ds.add_new(0x00400275, "SQ", Sequence([wrapper]))  # RequestAttributesSequence: not listed
    _ENGINE.deidentify_dataset(ds)
    assert disallowed_tags(ds, _OPERATIONS) == []
    assert not any(elem.tag.is_private for elem in ds.iterall())
    for tag, _ in extra_public:
        assert tag not in ds and tag not in ds.ReferencedImageSequence[0]
