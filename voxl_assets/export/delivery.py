"""Send a bundle to the project's EHR destination, once per content: a marker records the
provenance checksum last delivered to each destination, so an unchanged bundle is not resent.
The client comes from the run's destination clients (``upload/destinations.py``), which close
it when the run ends."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from voxl_assets.cohort.ingest import find_extract
from voxl_assets.db import VoxlDatabase
from voxl_assets.db.models import utcnow
from voxl_assets.export.bundle import PROVENANCE, BundleResult
from voxl_assets.upload.base import FileUploader


def deliver_bundle(
    bundle: BundleResult, uploader: FileUploader | None, export_root: Path
) -> dict[str, Any]:
    """Send ``bundle`` with ``uploader`` (None: the project has no EHR destination) unless the
    same content already went to the same destination; returns the delivery's metadata."""
    if uploader is None:
        return {"ehr_destination": "none", "sent": False}
    checksum = hashlib.sha256((bundle.directory / PROVENANCE).read_bytes()).hexdigest()
    name = hashlib.sha256(uploader.describe().encode()).hexdigest()[:16]
    marker = export_root / ".delivered" / bundle.relative_folder / name
    if marker.exists() and marker.read_text() == checksum:
        return {"ehr_destination": uploader.kind, "sent": False}
    report = uploader.upload_tree(bundle.directory, bundle.relative_folder)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(checksum)
    return {
        "ehr_destination": report.kind,
        "sent": True,
        "files_sent": report.instances,
        "bytes_sent": report.bytes,
    }


def record_delivery(database: VoxlDatabase, extract_key: str, delivery: dict[str, Any]) -> None:
    """Stamp the extract's ``exported_at`` when its bundle went out (or, with no EHR
    destination, was completed in the export folder); an unchanged bundle not resent keeps the
    time of its delivery."""
    with database.session() as session:
        extract = find_extract(session, extract_key)
        if extract is not None and (delivery.get("sent") or extract.exported_at is None):
            extract.exported_at = utcnow()
