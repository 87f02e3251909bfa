"""Build a de-identification engine for tests from the repository's tag-operation files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voxl_assets import settings
from voxl_assets.db import VoxlDatabase
from voxl_assets.deid.engine import Deidentifier
from voxl_assets.deid.hashing import LocalHashing, ProjectHasher, SaltStore
from voxl_assets.deid.operations import TagPolicy, load_policy
from voxl_assets.project_config import ProjectDefinition, tag_operations_dir

TEST_KEY = "test-hashing-key-0123456789abcdef"


def make_project(slug: str = "deid-test", **overrides: Any) -> ProjectDefinition:
    definition: dict[str, Any] = {
        "project": {"slug": slug, "name": slug, "modalities": ["CT", "MR", "DX", "US"]},
        "tag_operations": {
            "base": ["base.yaml", "ct.yaml", "mr.yaml", "dx-cr.yaml", "us.yaml"],
            "manufacturer_overrides": ["manufacturer-overrides/siemens.yaml"],
        },
        "series_filters": {"description_patterns": ["locali[sz]er", "scout"], "min_instances": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(definition.get(key), dict):
            definition[key] = {**definition[key], **value}
        else:
            definition[key] = value
    return ProjectDefinition.model_validate(definition)


def make_engine(
    tmp_path: Path, project: ProjectDefinition | None = None, policy: TagPolicy | None = None
) -> Deidentifier:
    """An engine for ``project`` (a default one when None), its allow-list from the repository's
    tag-operation files unless ``policy`` is given."""
    project = project or make_project()
    if policy is None:
        ops_dir = tag_operations_dir(settings.REPO_ROOT / "project_definitions")
        policy = load_policy(
            ops_dir, project.tag_operations.base, project.tag_operations.manufacturer_overrides
        )
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'hash.db'}")
    hasher = ProjectHasher(LocalHashing(TEST_KEY, SaltStore(database)), project.slug)
    return Deidentifier(project, policy, hasher)
