"""Send a bundle to the project's EHR destination, once per content: a marker records the
provenance checksum last delivered to each destination, so an unchanged bundle is not resent."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from voxl_assets.export.bundle import PROVENANCE, BundleResult
from voxl_assets.upload.factory import make_uploader


def deliver_bundle(bundle: BundleResult, destination: Any, export_root: Path) -> dict[str, Any]:
    uploader = make_uploader(destination) if destination is not None else None
    if uploader is None:
        return {"ehr_destination": "none", "sent": False}
    checksum = hashlib.sha256((bundle.directory / PROVENANCE).read_bytes()).hexdigest()
    name = hashlib.sha256(uploader.describe().encode()).hexdigest()[:16]
    marker = export_root / ".delivered" / bundle.relative_folder / name
    if marker.exists() and marker.read_text() == checksum:
        return {"ehr_destination": uploader.kind, "sent": False}
    try:
        report = uploader.upload_tree(bundle.directory, bundle.relative_folder)
    finally:
        close = getattr(uploader, "close", None)
        if close is not None:
            close()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(checksum)
    return {
        "ehr_destination": report.kind,
        "sent": True,
        "files_sent": report.instances,
        "bytes_sent": report.bytes,
    }
