"""Finding 6 (order): identifiers that only a later instance of the study carries (another name,
another patient id, its own UIDs) are looked for in every instance, whatever the file order."""

from pathlib import Path

import pytest

from tests.helpers.privacy import deidentify, hostile_spec, instance, save
from voxl_assets.deid.engine import OutputCheckError
from voxl_assets.synthetic import SeriesSpec

LATER = {
    "OtherPatientNames": "OTTERBURN^WILHELMINA",
    "PatientBirthName": "FAIRWEATHER^WILHELMINA",
    "OtherPatientIDs": "93812277",
    "PatientID": "MRN-55512345",
    "AccessionNumber": "RIS7788990",
}
WRITTEN = {
    "OtherPatientNames": "Wilhelmina Otterburn",
    "PatientBirthName": "née FAIRWEATHER",
    "OtherPatientIDs": "old id 93812277",
    "PatientID": "mrn55512345",
    "AccessionNumber": "RIS-7788990",
}


def _study(tmp_path: Path, keyword: str, reverse: bool) -> list[Path]:
    spec = hostile_spec(series=[SeriesSpec(instances=3)])
    paths = []
    for index in (1, 2, 3):
        ds = instance(spec, index)
        if index == 1:
            ds.SeriesDescription = f"AXIAL {WRITTEN[keyword]}"
        if index == 3:
            setattr(ds, keyword, LATER[keyword])
        # File names sort in processing order; ``reverse`` puts the carrier first.
        name = f"{(4 - index) if reverse else index}.dcm"
        paths.append(save(ds, tmp_path / "raw" / name))
    return sorted(paths)


@pytest.mark.parametrize("reverse", [False, True], ids=["carrier last", "carrier first"])
@pytest.mark.parametrize("keyword", list(LATER))
def test_identifiers_of_any_instance_are_looked_for_in_all(
    tmp_path: Path, keyword: str, reverse: bool
) -> None:
    outcome = deidentify(tmp_path, _study(tmp_path, keyword, reverse))
    assert isinstance(outcome, OutputCheckError), f"{keyword} of a later instance let through"


def test_a_later_instances_uid_in_an_earlier_instance_is_caught(tmp_path: Path) -> None:
    spec = hostile_spec(series=[SeriesSpec(instances=3)])
    datasets = [instance(spec, i) for i in (1, 2, 3)]
    datasets[0].SeriesDescription = f"see {datasets[2].SOPInstanceUID}"
    paths = [save(ds, tmp_path / "raw" / f"{i}.dcm") for i, ds in enumerate(datasets, 1)]
    outcome = deidentify(tmp_path, paths)
    assert isinstance(outcome, OutputCheckError)
