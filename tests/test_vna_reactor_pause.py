"""A kept association's reactor stays out of the way of the next request.

pynetdicom pauses an association's reactor before each request and believed it paused as soon
as its flag said so, which stayed true while a reactor woken by the previous request's end had
not run yet: it then took the next request's first answer off the queue (a C-FIND that found
nothing, about one study in 70 on a reused association, marked failed as "not found").
"""

import threading
import time
from pathlib import Path
from typing import Any

from tests.peers import free_port
from voxl_assets.demo.vna import DemoVna
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
            with client._association("find") as assoc:
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
