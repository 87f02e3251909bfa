"""Run as a separate process: upload one study with ``upload_study_once`` and die (SIGKILL) the
moment the destination has it, before VOXL records it: the real crash window of a delivery.

``python -m tests.helpers.killed_upload <database-url> <study-id> <destination-json> <files...>``
with the destination as the project definition's JSON and secrets in the environment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from tests.peers._upload_study import TARGET
from voxl_assets.db import VoxlDatabase
from voxl_assets.project_config import DicomWebDestination, FtpsDestination
from voxl_assets.upload.base import UploadReport, UploadTarget
from voxl_assets.upload.exactly_once import upload_study_once
from voxl_assets.upload.factory import make_image_uploader


class DiesAfterDelivery:
    """The real uploader; the process is killed as soon as its upload returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def describe(self) -> str:
        return str(self.inner.describe())

    def upload_study(self, files: Sequence[Path], target: UploadTarget) -> UploadReport:
        report: UploadReport = self.inner.upload_study(files, target)
        os.kill(os.getpid(), signal.SIGKILL)
        return report  # never reached


def main(argv: list[str]) -> None:
    url, study_id, destination_json, *files = argv
    destination = TypeAdapter(DicomWebDestination | FtpsDestination).validate_python(
        json.loads(destination_json)
    )
    uploader = make_image_uploader(destination)
    assert uploader is not None
    upload_study_once(
        VoxlDatabase(url),
        int(study_id),
        DiesAfterDelivery(uploader),  # type: ignore[arg-type]
        [Path(f) for f in files],
        TARGET,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
