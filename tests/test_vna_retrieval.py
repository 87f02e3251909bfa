"""Retrieval from a real Orthanc: find by UID, fallback by MRN + accession, C-GET, C-MOVE,
DICOMweb, zero and several matches, VNA down, cache hits without VNA traffic."""

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.peers import free_port
from tests.peers.orthanc import VOXL_AE, OrthancServer
from voxl_assets.db import StudyStatus
from voxl_assets.retry import TransientError
from voxl_assets.study_state import StudyRequest
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.vna.cache import RawCache
from voxl_assets.vna.client import (
    AmbiguousStudy,
    StudyNotFound,
    StudyQuery,
    VnaSettings,
    make_vna_client,
)
from voxl_assets.vna.raw import retrieve_raw_study


def _request(spec: StudySpec, study_uid: str | None = None, series_uid: str = "") -> StudyRequest:
    return StudyRequest(
        1,
        "p",
        spec.patient_id,
        spec.accession_number,
        spec.study_uid if study_uid is None else study_uid,
        series_uid,
        None,
        StudyStatus.QUEUED,
        None,
    )


def _settings(orthanc: OrthancServer, **kwargs: object) -> VnaSettings:
    base = VnaSettings(
        host="127.0.0.1",
        port=orthanc.dicom_port,
        ae_title=orthanc.ae_title,
        calling_ae_title=VOXL_AE,
        move_destination_ae=VOXL_AE,
        store_scp_port=orthanc.move_scp_port,
        dicomweb_url=orthanc.dicomweb_url,
        queries_per_second=100,
    )
    return replace(base, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def loaded(orthanc: OrthancServer, tmp_path: Path) -> Iterator[tuple[OrthancServer, StudySpec]]:
    spec = StudySpec(
        patient_id="MRN-VNA-1",
        accession_number="ACC-VNA-1",
        series=[SeriesSpec(instances=3), SeriesSpec(instances=2, number=2)],
    )
    orthanc.upload_folder(Path(write_study(spec, tmp_path / "src")[0]).parent)
    yield orthanc, spec


@pytest.mark.parametrize(
    "kind,retrieve", [("dimse", "c-get"), ("dimse", "c-move"), ("dicomweb", "c-get")]
)
def test_find_by_uid_and_retrieve(
    loaded: tuple[OrthancServer, StudySpec], tmp_path: Path, kind: str, retrieve: str
) -> None:
    orthanc, spec = loaded
    client = make_vna_client(_settings(orthanc, kind=kind, retrieve=retrieve))
    try:
        result = retrieve_raw_study(_request(spec), client, RawCache(tmp_path / "cache", 10**9))
    finally:
        client.close()
    assert result.study.instances == 5 and result.series == 2
    assert result.found_by == "study_uid" and not result.cache_hit
    assert result.study.bytes > 0 and len(result.study.files()) == 5


def test_fallback_by_mrn_and_accession(
    loaded: tuple[OrthancServer, StudySpec], tmp_path: Path
) -> None:
    orthanc, spec = loaded
    client = make_vna_client(_settings(orthanc))
    result = retrieve_raw_study(
        _request(spec, study_uid="1.2.3.999.404"), client, RawCache(tmp_path, 10**9)
    )
    assert result.found_by == "mrn_accession" and result.study.instances == 5


def test_series_level_request_retrieves_one_series(
    loaded: tuple[OrthancServer, StudySpec], tmp_path: Path
) -> None:
    orthanc, spec = loaded
    client = make_vna_client(_settings(orthanc))
    request = _request(spec, series_uid=spec.series[1].series_uid)
    result = retrieve_raw_study(request, client, RawCache(tmp_path, 10**9))
    assert result.study.instances == 2 and result.series == 1


def test_zero_matches_is_a_clear_failure(
    loaded: tuple[OrthancServer, StudySpec], tmp_path: Path
) -> None:
    orthanc, _ = loaded
    missing = StudySpec(patient_id="NOBODY", accession_number="NOTHING")
    with pytest.raises(StudyNotFound, match="not found on the VNA") as caught:
        retrieve_raw_study(
            _request(missing), make_vna_client(_settings(orthanc)), RawCache(tmp_path, 10**9)
        )
    assert "NOBODY" not in str(caught.value) and missing.study_uid not in str(caught.value)


def test_several_matches_are_not_guessed(orthanc: OrthancServer, tmp_path: Path) -> None:
    for n in range(2):  # two studies with the same MRN + accession
        spec = StudySpec(patient_id="MRN-TWIN", accession_number="ACC-TWIN")
        orthanc.upload_folder(write_study(spec, tmp_path / f"s{n}")[0].parent)
    request = _request(StudySpec(patient_id="MRN-TWIN", accession_number="ACC-TWIN"), study_uid="")
    with pytest.raises(AmbiguousStudy, match="2 studies"):
        retrieve_raw_study(
            request, make_vna_client(_settings(orthanc)), RawCache(tmp_path / "c", 10**9)
        )


def test_vna_down_is_retried_then_reported(tmp_path: Path) -> None:
    settings = VnaSettings(
        port=free_port(), acse_timeout=2, network_timeout=2, queries_per_second=100
    )
    spec = StudySpec(patient_id="M", accession_number="A")
    with pytest.raises(TransientError, match="unreachable|aborted"):
        retrieve_raw_study(
            _request(spec), make_vna_client(settings), RawCache(tmp_path, 10**9), initial_delay=0.01
        )


def test_cache_hit_does_not_contact_the_vna(
    loaded: tuple[OrthancServer, StudySpec], tmp_path: Path
) -> None:
    orthanc, spec = loaded
    cache = RawCache(tmp_path / "cache", 10**9)
    client = make_vna_client(_settings(orthanc))
    first = retrieve_raw_study(_request(spec), client, cache)
    orthanc.stop()  # nothing is listening now: any VNA traffic would fail
    try:
        again = retrieve_raw_study(_request(spec), client, RawCache(tmp_path / "cache", 10**9))
    finally:
        orthanc.start()
    assert again.cache_hit and again.study.key == first.study.key and again.study.instances == 5
    # The materialisation says where each came from: the archive (and how it was found), or
    # the cache (no archive asked).
    assert first.metadata()["archive"] == first.archive and "found_by" in first.metadata()
    assert again.metadata()["cache_hit"] is True and "archive" not in again.metadata()


def test_pydicom_sample_files_come_through(orthanc: OrthancServer, tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    source = Path(str(get_testdata_file("CT_small.dcm")))
    orthanc.upload(source)
    ds = dcmread(source, stop_before_pixels=True)
    request = StudyRequest(
        1, "p", str(ds.PatientID), "", str(ds.StudyInstanceUID), "", None, StudyStatus.QUEUED, None
    )
    result = retrieve_raw_study(
        request, make_vna_client(_settings(orthanc)), RawCache(tmp_path, 10**9)
    )
    assert result.study.instances == 1
    assert dcmread(result.study.files()[0]).PixelData == dcmread(source).PixelData


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_a_batch_reuses_its_associations_and_replaces_one_that_ended(
    orthanc: OrthancServer, tmp_path: Path, retrieve: str
) -> None:
    specs = [
        StudySpec(
            patient_id=f"MRN-REUSE-{n}", accession_number=f"ACC-REUSE-{n}", rows=16, columns=16
        )
        for n in range(3)
    ]
    for n, spec in enumerate(specs):
        orthanc.upload_folder(Path(write_study(spec, tmp_path / f"src{n}")[0]).parent)
    client = make_vna_client(_settings(orthanc, retrieve=retrieve))
    cache = RawCache(tmp_path / "cache", 10**9)
    try:
        for spec in specs[:2]:
            assert retrieve_raw_study(_request(spec), client, cache).study.instances == 3
        # One association, to find and to retrieve, kept between the studies.
        assert client.associations_opened == 1  # type: ignore[union-attr]
        # Kept associations cost nothing while they wait: their reactor is held at its
        # checkpoint, their DUL waits in select() rather than polling.
        kept = [a for kind in client._idle.values() for a in kind]  # type: ignore[union-attr]
        assert len(kept) == 1
        deadline = time.monotonic() + 5
        while (
            not all(getattr(a.dul, "_voxl_waiting", False) for a in kept)
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert all(a._is_paused and getattr(a.dul, "_voxl_waiting", False) for a in kept)
        # An idle association the archive ended meanwhile is not used again.
        for kept in client._idle.values():  # type: ignore[union-attr]
            for assoc in kept:
                assoc.abort()
        assert retrieve_raw_study(_request(specs[2]), client, cache).study.instances == 3
        assert client.associations_opened == 2  # type: ignore[union-attr]
        client.release_associations()  # type: ignore[union-attr]
        assert all(not kept for kept in client._idle.values())  # type: ignore[union-attr]
    finally:
        client.close()


def test_every_study_is_found_on_a_reused_association(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Hundreds of C-FINDs on one kept association each see their answer (one in 70 went to the
    association's own reactor before its pause was made reliable: tests/test_vna_reactor_pause.py)."""
    specs = [
        StudySpec(patient_id=f"MRN-KEPT-{n}", accession_number=f"ACC-KEPT-{n}", rows=8, columns=8)
        for n in range(40)
    ]
    for n, spec in enumerate(specs):
        write_study(spec, tmp_path / "src" / str(n))
    orthanc.upload_folder(tmp_path / "src")
    client = make_vna_client(_settings(orthanc, queries_per_second=100_000))
    try:
        missed = 0
        for _ in range(8):
            for spec in specs:
                try:
                    assert (
                        client.find_study(StudyQuery(spec.study_uid, "", "")).study_uid
                        == spec.study_uid
                    )
                except StudyNotFound:
                    missed += 1
        assert missed == 0
        assert client.associations_opened == 1  # type: ignore[union-attr]
    finally:
        client.close()
