"""The demo VNA answers C-FIND, C-MOVE and C-GET like an archive (queried with plain pynetdicom)."""

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt

from tests.peers import free_port
from voxl_assets.demo.vna import DemoVna
from voxl_assets.dicom_constants import (
    CT_IMAGE_STORAGE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, StudySpec, StudySpec]:
    first = StudySpec("MRN1", "ACC1", series=[SeriesSpec(2), SeriesSpec(3, number=2)])
    second = StudySpec("MRN2", "ACC2")
    write_study(first, tmp_path / "vna" / "a")
    write_study(second, tmp_path / "vna" / "b")
    return tmp_path / "vna", first, second


def _answers(assoc: Any, query: Dataset) -> list[Dataset]:
    return [
        i
        for s, i in assoc.send_c_find(query, STUDY_ROOT_FIND)
        if s and s.Status == 0xFF00 and i is not None
    ]


def _query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = keys.pop("level", "STUDY")
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.NumberOfStudyRelatedInstances = ""
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def test_find_by_uid_and_by_mrn_accession(archive: tuple[Path, StudySpec, StudySpec]) -> None:
    folder, first, _ = archive
    port = free_port()
    with DemoVna(folder, port=port) as vna:
        ae = AE()
        ae.add_requested_context(STUDY_ROOT_FIND)
        assoc = ae.associate("127.0.0.1", port, ae_title="DEMOVNA")
        assert assoc.is_established
        answers = _answers(assoc, _query(StudyInstanceUID=first.study_uid))
        assert len(answers) == 1 and int(answers[0].NumberOfStudyRelatedInstances) == 5
        by_ids = _answers(assoc, _query(PatientID="MRN1", AccessionNumber="ACC1"))
        assert [a.StudyInstanceUID for a in by_ids] == [first.study_uid]
        none = _answers(assoc, _query(StudyInstanceUID="1.2.3.4"))
        assert none == []
        assoc.release()
        assert vna.requests == 3


def test_get_and_move_deliver_every_instance(archive: tuple[Path, StudySpec, StudySpec]) -> None:
    folder, first, _ = archive
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    port, store_port = free_port(), free_port()
    with DemoVna(folder, port=port, move_destinations={"RECEIVER": ("127.0.0.1", store_port)}):
        ae = AE(ae_title="RECEIVER")
        ae.add_requested_context(STUDY_ROOT_GET)
        ae.add_requested_context(CT_IMAGE_STORAGE)
        role = build_role(CT_IMAGE_STORAGE, scp_role=True)
        assoc = ae.associate(
            "127.0.0.1", port, ext_neg=[role], evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        statuses = [
            s.Status
            for s, _ in assoc.send_c_get(_query(StudyInstanceUID=first.study_uid), STUDY_ROOT_GET)
            if s
        ]
        assoc.release()
        assert statuses[-1] == 0x0000 and len(received) == 5

        received.clear()
        receiver = AE(ae_title="RECEIVER")
        for context in StoragePresentationContexts:
            if context.abstract_syntax:
                receiver.add_supported_context(context.abstract_syntax)
        server = receiver.start_server(
            ("127.0.0.1", store_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        try:
            mover = AE()
            mover.add_requested_context(STUDY_ROOT_MOVE)
            assoc = mover.associate("127.0.0.1", port)
            statuses = [
                s.Status
                for s, _ in assoc.send_c_move(
                    _query(StudyInstanceUID=first.study_uid),
                    "RECEIVER",
                    STUDY_ROOT_MOVE,
                )
                if s
            ]
            assoc.release()
        finally:
            assert server is not None
            server.shutdown()
        assert statuses[-1] == 0x0000 and len(received) == 5


def test_series_find_instance_listing_and_uid_list_retrieval(
    archive: tuple[Path, StudySpec, StudySpec], tmp_path: Path
) -> None:
    """What VOXL's top-up and series requests ask of an archive, against the demo VNA."""
    from voxl_assets.vna.client import StudyQuery, VnaSettings, make_vna_client

    folder, first, _ = archive
    port = free_port()
    with DemoVna(folder, port=port):
        client = make_vna_client(VnaSettings(port=port, ae_title="DEMOVNA", queries_per_second=100))
        wanted_series = first.series[1].series_uid
        location = client.find_study(StudyQuery(first.study_uid, "", "", wanted_series))
        assert (location.series_uid, location.instances) == (wanted_series, 3)
        whole = client.find_study(StudyQuery(first.study_uid, "", ""))
        listing = client.list_instances(whole)
        assert len(listing) == 5 and {r.series_uid for r in listing} == {
            s.series_uid for s in first.series
        }
        out = tmp_path / "topped"
        out.mkdir()
        picked = [listing[0], listing[3], listing[4]]
        retrieved = client.retrieve_instances(whole, picked, out)
        assert retrieved.received == 3 and len(list(out.iterdir())) == 3
        client.close()
