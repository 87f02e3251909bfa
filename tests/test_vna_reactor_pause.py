"""A kept association's reactor stays out of the way of the next request.

pynetdicom pauses an association's reactor before each request and believed it paused as soon
as its flag said so, which stayed true while a reactor woken by the previous request's end had
not run yet: it then took the next request's first answer off the queue (a C-FIND that found
nothing, about one study in 70 on a reused association, marked failed as "not found").
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from tests.peers import free_port
from voxl_assets.demo.vna import DemoVna
from voxl_assets.dicom_constants import STUDY_ROOT_FIND, STUDY_ROOT_GET
from voxl_assets.synthetic import StudySpec, write_study
from voxl_assets.vna.client import DimseVna, VnaSettings, _pause_reactor


def _client(port: int) -> DimseVna:
    return DimseVna(
        VnaSettings(port=port, ae_title="DEMOVNA", queries_per_second=100_000, retrieve="c-get")
    )


def test_a_paused_reactor_takes_nothing_off_the_queue_until_it_is_let_go(tmp_path: Path) -> None:
    write_study(StudySpec("MRN-PAUSE", "ACC-PAUSE", rows=8, columns=8), tmp_path / "vna")
    port = free_port()
    with DemoVna(tmp_path / "vna", port=port):
        client = _client(port)
        try:
            with client._association("get") as assoc:
                taken_while_paused = 0
                paused = threading.Event()
                get_msg = assoc.dimse.get_msg

                def watched_get_msg(block: bool = False) -> Any:
                    nonlocal taken_while_paused
                    if threading.current_thread() is assoc and paused.is_set():
                        taken_while_paused += 1
                    return get_msg(block)

                assoc.dimse.get_msg = watched_get_msg
                for _ in range(100):
                    paused.clear()
                    assoc._reactor_checkpoint.set()  # as the end of a request lets it go
                    _pause_reactor(assoc)  # as the next request (or the pool) holds it again
                    assert assoc._is_paused
                    paused.set()
                    time.sleep(0.001)  # a reactor that was only woken would run now
                assert taken_while_paused == 0
        finally:
            client.release_associations()


class _Context:
    def __init__(self, abstract_syntax: str) -> None:
        self.abstract_syntax = abstract_syntax


class _RefusesFindHere:
    """An association on which the archive accepted the retrieval but not C-FIND."""

    accepted_contexts = [_Context(STUDY_ROOT_GET)]


class _AnswersFind:
    accepted_contexts = [_Context(STUDY_ROOT_FIND)]

    def send_c_find(self, _identifier: Any, _model: str) -> Any:
        pending, answer, success = Dataset(), Dataset(), Dataset()
        pending.Status, answer.StudyInstanceUID, success.Status = 0xFF00, "1.2.3", 0x0000
        yield pending, answer
        yield success, None


def test_queries_go_on_their_own_association_when_the_archive_refuses_them_on_the_retrieval_one(
    monkeypatch: Any,
) -> None:
    """A real archive that takes C-GET but not C-FIND on one association is not at hand: the
    associations are stand-ins, the choice between them is the client's own."""
    client = _client(1)
    kinds: list[str] = []

    @contextmanager
    def association(kind: str) -> Iterator[Any]:
        kinds.append(kind)
        yield _AnswersFind() if kind == "find" else _RefusesFindHere()

    monkeypatch.setattr(client, "_association", association)
    assert [str(a.StudyInstanceUID) for a in client._c_find(Dataset())] == ["1.2.3"]
    assert kinds == ["get", "find"]
    assert len(client._c_find(Dataset())) == 1
    assert kinds == ["get", "find", "find"]  # remembered: no second try on the retrieval's
