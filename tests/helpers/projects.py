"""Throwaway project registries for tests."""

from __future__ import annotations

from pathlib import Path

import yaml

# The least a project's allow-list holds: the identity every written instance needs, and Modality.
MINIMAL_TAG_OPERATIONS = {
    "operations": [
        {"keyword": "SOPClassUID", "op": "keep"},
        {"keyword": "SOPInstanceUID", "op": "replace_uid"},
        {"keyword": "StudyInstanceUID", "op": "replace_uid"},
        {"keyword": "SeriesInstanceUID", "op": "replace_uid"},
        {"keyword": "Modality", "op": "keep"},
    ]
}


def write_project(
    directory: Path,
    slug: str = "test-extract-uclh-omop-cdm",
    *,
    name: str = "Test Extract - UCLH OMOP CDM",
    modalities: tuple[str, ...] = ("CT", "MR", "DX"),
    extra: dict[str, object] | None = None,
) -> Path:
    """Write a valid project YAML (and a minimal tag-operation file) into ``directory``."""
    ops = directory / "tag-operations"
    ops.mkdir(parents=True, exist_ok=True)
    base = ops / "base.yaml"
    if not base.exists():
        base.write_text(yaml.safe_dump(MINIMAL_TAG_OPERATIONS))
    definition: dict[str, object] = {
        "project": {"slug": slug, "name": name, "modalities": list(modalities)},
        "tag_operations": {"base": ["base.yaml"]},
    }
    definition.update(extra or {})
    path = directory / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path
