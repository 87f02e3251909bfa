"""Two real Orthancs as the hospital's archives: a primary VNA and a secondary PACS with an
out-of-hours window. Found only in the secondary; the secondary's window closed (injected clock,
no sleeping), then open; a partly cached study topped up with exactly the missing instances; a
series-level request for one series of a three-series study."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.peers.orthanc import VOXL_AE, OrthancServer, start_orthanc
from voxl_assets.db import StudyStatus
from voxl_assets.retry import TransientError
from voxl_assets.study_state import StudyRequest
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.vna import client as vna_client
from voxl_assets.vna.archives import Archive, ArchiveConfig, ArchiveSet
from voxl_assets.vna.cache import RawCache
from voxl_assets.vna.client import StudyNotFound, VnaClient, VnaSettings, make_vna_client
from voxl_assets.vna.raw import ArchiveWindowClosed, retrieve_raw_study
from voxl_assets.vna.windows import parse_window

OUT_OF_HOURS = parse_window(
    {
        "timezone": "Europe/London",
        "open": [
            {"days": "mon-fri", "hours": ["00:00-08:00", "20:00-24:00"]},
            {"days": "sat-sun", "hours": "all day"},
        ],
    },
    "test",
)
WEDNESDAY_NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # the PACS is closed to VOXL
WEDNESDAY_EVENING = datetime(2026, 11, 25, 20, 30, tzinfo=UTC)  # open


@pytest.fixture(scope="module")
def pacs_session(orthanc_session: OrthancServer) -> Iterator[OrthancServer]:
    # Both archives move to the same VOXL destination (AE title and port), as at a real site.
    modalities = {
        "voxl": {"AET": VOXL_AE, "Host": "127.0.0.1", "Port": orthanc_session.move_scp_port}
    }
    yield from start_orthanc(ae_title="PACS", extra_config={"DicomModalities": modalities})


@pytest.fixture
def pacs(pacs_session: OrthancServer) -> OrthancServer:
    pacs_session.clear()
    return pacs_session


def _settings(
    server: OrthancServer, retrieve: str = "c-get", port_for_move: int = 0
) -> VnaSettings:
    return VnaSettings(
        port=server.dicom_port,
        ae_title=server.ae_title,
        calling_ae_title=VOXL_AE,
        move_destination_ae=VOXL_AE,
        store_scp_port=port_for_move,
        retrieve=retrieve,  # type: ignore[arg-type]
        queries_per_second=100,
    )


@dataclass
class CountingClient:
    """The real client, counting the searches it is asked for (to show a closed archive is not
    contacted). Everything else passes straight through."""

    inner: VnaClient
    searches: list[str] = field(default_factory=list)

    def find_study(self, query: Any) -> Any:
        self.searches.append("find")
        return self.inner.find_study(query)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _archives(
    vna: OrthancServer,
    pacs: OrthancServer,
    retrieve: str = "c-get",
    clock: datetime = WEDNESDAY_EVENING,
) -> tuple[ArchiveSet, CountingClient]:
    move_port = vna.move_scp_port if retrieve == "c-move" else 0
    vna_settings, pacs_settings = (
        _settings(vna, retrieve, move_port),
        _settings(pacs, retrieve, move_port),
    )
    pacs_client = CountingClient(make_vna_client(pacs_settings))
    archives = ArchiveSet(
        [
            Archive(ArchiveConfig("vna", vna_settings, 1), make_vna_client(vna_settings)),
            Archive(ArchiveConfig("pacs", pacs_settings, 2, OUT_OF_HOURS), pacs_client),
        ],
        clock=lambda: clock,
    )
    return archives, pacs_client


def _request(spec: StudySpec, series_uid: str = "") -> StudyRequest:
    return StudyRequest(
        7,
        "p",
        spec.patient_id,
        spec.accession_number,
        spec.study_uid,
        series_uid,
        None,
        StudyStatus.QUEUED,
        None,
    )


def _load(server: OrthancServer, spec: StudySpec, root: Path) -> list[Path]:
    files = write_study(spec, root)
    for path in files:
        server.upload(path)
    return files


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_study_found_only_in_the_secondary(
    orthanc: OrthancServer, pacs: OrthancServer, tmp_path: Path, retrieve: str
) -> None:
    on_vna = StudySpec(patient_id="MRN-V", accession_number="ACC-V")
    on_pacs = StudySpec(
        patient_id="MRN-P", accession_number="ACC-P", series=[SeriesSpec(instances=4)]
    )
    _load(orthanc, on_vna, tmp_path / "v")
    _load(pacs, on_pacs, tmp_path / "p")
    archives, pacs_client = _archives(orthanc, pacs, retrieve)
    cache = RawCache(tmp_path / "cache", 10**9)
    try:
        from_vna = retrieve_raw_study(_request(on_vna), archives, cache, initial_delay=0.01)
        assert from_vna.archive == "vna" and pacs_client.searches == []  # primary first
        from_pacs = retrieve_raw_study(_request(on_pacs), archives, cache, initial_delay=0.01)
        assert from_pacs.archive == "pacs" and from_pacs.study.instances == 4
        assert from_pacs.metadata()["archive"] == "pacs"
        nowhere = StudySpec(patient_id="MRN-N", accession_number="ACC-N")
        with pytest.raises(
            StudyNotFound, match=r"not found on any archive \(vna, pacs\)"
        ) as caught:
            retrieve_raw_study(_request(nowhere), archives, cache, initial_delay=0.01)
        assert "MRN-N" not in str(caught.value) and nowhere.study_uid not in str(caught.value)
    finally:
        archives.close()


def test_secondary_window_closed_then_open(
    orthanc: OrthancServer, pacs: OrthancServer, tmp_path: Path
) -> None:
    spec = StudySpec(patient_id="MRN-W", accession_number="ACC-W", series=[SeriesSpec(instances=2)])
    _load(pacs, spec, tmp_path / "p")
    cache = RawCache(tmp_path / "cache", 10**9)
    closed, pacs_client = _archives(orthanc, pacs, clock=WEDNESDAY_NOON)
    with pytest.raises(ArchiveWindowClosed) as caught:
        retrieve_raw_study(_request(spec), closed, cache, initial_delay=0.01)
    waiting = caught.value
    assert waiting.not_before == datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
    assert str(waiting) == (
        "archive pacs window (Mon-Fri 00:00-08:00, 20:00-24:00; Sat-Sun all day "
        "(Europe/London)); opens 2026-11-25 20:00 UTC"
    )
    assert pacs_client.searches == []  # the PACS was not asked while closed
    assert cache.used_bytes() == 0
    closed.close()

    opened, pacs_client = _archives(orthanc, pacs, clock=WEDNESDAY_EVENING)
    try:
        result = retrieve_raw_study(_request(spec), opened, cache, initial_delay=0.01)
    finally:
        opened.close()
    assert result.archive == "pacs" and result.study.instances == 2
    assert pacs_client.searches == ["find"]


def _three_series() -> StudySpec:
    return StudySpec(
        patient_id="MRN-T",
        accession_number="ACC-T",
        series=[
            SeriesSpec(instances=4, number=1),
            SeriesSpec(instances=3, number=2, description="CORONAL"),
            SeriesSpec(instances=3, number=3, description="SAGITTAL"),
        ],
    )


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_interrupted_retrieval_is_topped_up_with_exactly_the_missing_instances(
    orthanc: OrthancServer,
    pacs: OrthancServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retrieve: str,
) -> None:
    spec = _three_series()
    _load(orthanc, spec, tmp_path / "v")
    cache = RawCache(tmp_path / "cache", 10**9)
    archives, _ = _archives(orthanc, pacs, retrieve)

    # VOXL's disk fails after 4 instances: the archive's C-STORE sub-operations then fail.
    real_write = vna_client.InstanceWriter.write
    written = {"n": 0}

    def failing_write(self: Any, meta: Any, data: bytes) -> None:
        if written["n"] >= 4:
            raise OSError(28, "No space left on device")
        written["n"] += 1
        real_write(self, meta, data)

    monkeypatch.setattr(vna_client.InstanceWriter, "write", failing_write)
    try:
        # C-GET reports failed sub-operations; Orthanc's C-MOVE gives up at the first one.
        with pytest.raises(TransientError, match="4 of 10 instances arrived"):
            retrieve_raw_study(_request(spec), archives, cache, attempts=1, initial_delay=0.01)
        monkeypatch.setattr(vna_client.InstanceWriter, "write", real_write)
        key = next(iter(cache.keys_by_age()))
        partial = cache.lookup(key, partial=True)
        assert partial is not None and not partial.complete and partial.instances == 4
        assert cache.lookup(key) is None  # a partial study is never used as if complete

        result = retrieve_raw_study(_request(spec), archives, cache, initial_delay=0.01)
    finally:
        archives.close()
    assert result.topped_up == 6  # instances VOXL received in the top-up
    assert result.archive_sent == 6  # the archive's own count of C-STORE sub-operations
    assert result.study.instances == 10 and result.study.complete and result.series == 3


def test_instances_added_to_the_archive_since_are_fetched_on_request(
    orthanc: OrthancServer, pacs: OrthancServer, tmp_path: Path
) -> None:
    spec = _three_series()
    files = write_study(spec, tmp_path / "v")
    for path in files[:7]:
        orthanc.upload(path)
    cache = RawCache(tmp_path / "cache", 10**9)
    archives, _ = _archives(orthanc, pacs)
    try:
        first = retrieve_raw_study(_request(spec), archives, cache, initial_delay=0.01)
        assert first.study.instances == 7
        for path in files[7:]:
            orthanc.upload(path)
        again = retrieve_raw_study(_request(spec), archives, cache, initial_delay=0.01)
        assert again.cache_hit and again.study.instances == 7  # a hit does not ask the archive
        topped = retrieve_raw_study(
            _request(spec), archives, cache, initial_delay=0.01, top_up_cached=True
        )
        assert (topped.topped_up, topped.archive_sent, topped.study.instances) == (3, 3, 10)
        unchanged = retrieve_raw_study(
            _request(spec), archives, cache, initial_delay=0.01, top_up_cached=True
        )
        assert (unchanged.topped_up, unchanged.study.instances) == (0, 10)
    finally:
        archives.close()


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_series_level_request_retrieves_one_series_of_three(
    orthanc: OrthancServer, pacs: OrthancServer, tmp_path: Path, kind: str
) -> None:
    from dataclasses import replace

    spec = _three_series()
    _load(pacs, spec, tmp_path / "p")  # in the secondary, to cross both features
    archives, _ = _archives(orthanc, pacs)
    if kind == "dicomweb":
        for archive in archives:
            server = orthanc if archive.name == "vna" else pacs
            settings = replace(
                archive.config.settings, kind="dicomweb", dicomweb_url=server.dicomweb_url
            )
            archive.client = make_vna_client(settings)
    wanted = spec.series[1]
    cache = RawCache(tmp_path / "cache", 10**9)
    try:
        result = retrieve_raw_study(
            _request(spec, series_uid=wanted.series_uid), archives, cache, initial_delay=0.01
        )
        assert result.archive == "pacs"
        assert (result.study.instances, result.series) == (3, 1)
        from pydicom import dcmread

        assert {str(dcmread(p).SeriesInstanceUID) for p in result.study.files()} == {
            wanted.series_uid
        }
        with pytest.raises(StudyNotFound, match=r"requested series not found .*study is on pacs"):
            retrieve_raw_study(
                _request(spec, series_uid="1.2.3.4.5.404"), archives, cache, initial_delay=0.01
            )
    finally:
        archives.close()


def test_a_closed_archive_in_the_middle_stops_the_search(
    orthanc: OrthancServer, pacs: OrthancServer, tmp_path: Path
) -> None:
    """vna (open, lacks the study) -> pacs (closed) -> research archive (open, has it): the study
    waits for the PACS rather than being fetched from the lower-priority archive."""
    spec = StudySpec(patient_id="MRN-M", accession_number="ACC-M", series=[SeriesSpec(instances=2)])
    _load(orthanc, spec, tmp_path / "r")  # only the last archive holds it
    vna_settings, pacs_settings, last_settings = (
        _settings(pacs),
        _settings(pacs),
        _settings(orthanc),
    )

    def archives(clock: datetime) -> tuple[ArchiveSet, CountingClient, CountingClient]:
        closing = CountingClient(make_vna_client(pacs_settings))
        last = CountingClient(make_vna_client(last_settings))
        archive_set = ArchiveSet(
            [
                Archive(ArchiveConfig("vna", vna_settings, 1), make_vna_client(vna_settings)),
                Archive(ArchiveConfig("pacs", pacs_settings, 2, OUT_OF_HOURS), closing),
                Archive(ArchiveConfig("research", last_settings, 3), last),
            ],
            clock=lambda: clock,
        )
        return archive_set, closing, last

    cache = RawCache(tmp_path / "cache", 10**9)
    closed, closing, last = archives(WEDNESDAY_NOON)
    try:
        with pytest.raises(ArchiveWindowClosed, match="archive pacs window"):
            retrieve_raw_study(_request(spec), closed, cache, initial_delay=0.01)
    finally:
        closed.close()
    assert closing.searches == [] and last.searches == []  # neither asked while pacs is closed
    assert cache.used_bytes() == 0
    opened, closing, last = archives(WEDNESDAY_EVENING)
    try:
        result = retrieve_raw_study(_request(spec), opened, cache, initial_delay=0.01)
    finally:
        opened.close()
    assert result.archive == "research" and result.study.instances == 2
    assert closing.searches == ["find"] and last.searches == ["find"]


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_a_series_request_is_topped_up_from_its_own_series_only(
    orthanc: OrthancServer, pacs: OrthancServer, tmp_path: Path, kind: str
) -> None:
    """Instances added to every series since the series was cached: the top-up (C-FIND at IMAGE
    level for the series, or QIDO-RS; then C-GET with a UID list, or WADO-RS per instance) fetches
    the requested series' new instances and nothing of the other series."""
    from dataclasses import replace

    spec = _three_series()
    files = write_study(spec, tmp_path / "v")
    by_series: dict[str, list[Path]] = {}
    from pydicom import dcmread

    for path in files:
        by_series.setdefault(str(dcmread(path).SeriesInstanceUID), []).append(path)
    held_back = [paths[-1] for paths in by_series.values()]  # one instance of each series
    for path in files:
        if path not in held_back:
            orthanc.upload(path)
    archives, _ = _archives(orthanc, pacs)
    if kind == "dicomweb":
        for archive in archives:
            server = orthanc if archive.name == "vna" else pacs
            settings = replace(
                archive.config.settings, kind="dicomweb", dicomweb_url=server.dicomweb_url
            )
            archive.client = make_vna_client(settings)
    wanted = spec.series[1].series_uid
    cache = RawCache(tmp_path / "cache", 10**9)
    request = _request(spec, series_uid=wanted)
    try:
        first = retrieve_raw_study(request, archives, cache, initial_delay=0.01)
        assert first.study.instances == 2
        for path in held_back:
            orthanc.upload(path)
        topped = retrieve_raw_study(
            request, archives, cache, initial_delay=0.01, top_up_cached=True
        )
    finally:
        archives.close()
    assert (topped.topped_up, topped.study.instances, topped.series) == (1, 3, 1)
    assert {str(dcmread(p).SeriesInstanceUID) for p in topped.study.files()} == {wanted}
