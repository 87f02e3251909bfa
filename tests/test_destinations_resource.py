"""The destinations resource: a run's clients, one per project and role, kept for the run's next
study and closed when the run ends (a real sshd counts the SSH connections), and swapped for one
folder in a test or on a laptop, through the study pipeline itself."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize

from resources.destinations import (
    DestinationsResource,
    FolderDestinationsResource,
    ProjectDestinationsResource,
)
from resources.hashing import HashingResource
from resources.imaging import StoresResource, VnaResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from tests.helpers.projects import write_project
from tests.helpers.studies import add_studies, update_study
from tests.peers._dropping_proxy import DroppingProxy
from tests.peers._upload_study import TARGET, anonymised_study, zip_names
from tests.peers.sftp import SshServer
from voxl_assets.assets.imaging import study_pipeline
from voxl_assets.db import Study, StudyStatus, VoxlDatabase
from voxl_assets.db.models import study_partition_key
from voxl_assets.partitions import STUDIES
from voxl_assets.project_config import ProjectDefinition, ProjectRegistry
from voxl_assets.upload.base import UploadError
from voxl_assets.upload.destinations import DestinationClients, Role


class _Client:
    def __init__(self, role: Role, slug: str) -> None:
        self.role, self.slug, self.closed = role, slug, 0

    def close(self) -> None:
        self.closed += 1


def _project(tmp_path: Path, slug: str, destinations: dict[str, Any] | None = None) -> Any:
    folder = tmp_path / "projects"
    write_project(folder, slug, extra={"destinations": destinations} if destinations else None)
    return ProjectRegistry.load(folder).get(slug)


def test_a_client_per_project_and_role_built_once_and_closed_together(tmp_path: Path) -> None:
    built: list[_Client] = []

    def build(role: Role, project: ProjectDefinition) -> _Client:
        built.append(_Client(role, project.slug))
        return built[-1]

    clients = DestinationClients(build)
    first, second = _project(tmp_path, "first"), _project(tmp_path, "second")
    assert clients.images(first) is clients.images(first)  # kept for the next study
    assert clients.ehr(first) is not clients.images(first)
    clients.images(second)
    assert [(c.role, c.slug) for c in built] == [
        (Role.IMAGES, "first"),
        (Role.EHR, "first"),
        (Role.IMAGES, "second"),
    ]
    clients.close()
    assert [c.closed for c in built] == [1, 1, 1]
    assert clients.images(first) is not built[0]  # after close: a new client


def test_a_client_that_could_not_be_built_is_tried_again(tmp_path: Path) -> None:
    attempts: list[str] = []

    def build(role: Role, project: ProjectDefinition) -> _Client:
        attempts.append(project.slug)
        if len(attempts) == 1:
            raise UploadError("environment variable SFTP_KEY (SFTP private key path) is not set")
        return _Client(role, project.slug)

    clients = DestinationClients(build)
    project = _project(tmp_path, "p")
    with pytest.raises(UploadError, match="SFTP_KEY"):
        clients.images(project)
    assert isinstance(clients.images(project), _Client)
    assert attempts == ["p", "p"]


def test_project_destinations_keep_local_folders_inside_their_root(tmp_path: Path) -> None:
    project = _project(tmp_path, "p", {"images": {"kind": "local", "path": "out/images"}})
    destinations = ProjectDestinationsResource(local_root=str(tmp_path / "root"))
    uploader = destinations.images(project)
    assert uploader is not None
    uploader.upload_study(anonymised_study(tmp_path / "anon"), TARGET)
    assert (tmp_path / "root" / "out" / "images" / TARGET.relative_zip_path).is_file()
    assert destinations.ehr(project) is None  # kind none
    destinations.close()


@pytest.mark.parametrize("run_fails", [False, True], ids=["run-succeeds", "run-fails"])
def test_a_run_keeps_one_sftp_session_for_its_studies_and_closes_it_when_it_ends(
    sftp_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_fails: bool
) -> None:
    proxy = DroppingProxy(sftp_server.port, after_bytes=1 << 40, drops=0)
    monkeypatch.setenv("SFTP_USER", sftp_server.username)
    monkeypatch.setenv("SFTP_KEY", str(sftp_server.private_key))
    sftp = {
        "kind": "sftp",
        "host": "127.0.0.1",
        "port": proxy.port,
        "username_env": "SFTP_USER",
        "private_key_path_env": "SFTP_KEY",
        "known_host_key": sftp_server.known_host_line,
        "remote_root": str(sftp_server.root),
    }
    project = _project(tmp_path, "p", {"images": sftp})
    files = anonymised_study(tmp_path / "anon")
    during: list[tuple[int, int]] = []

    @asset
    def deliver_three_studies(destinations: DestinationsResource) -> None:
        for number in range(3):
            uploader = destinations.images(project)
            assert uploader is not None
            uploader.upload_study(files, replace(TARGET, pseudo_study_uid=f"2.25.{number}"))
        during.append((proxy.connections, proxy.open_connections()))
        if run_fails:
            raise RuntimeError("the run fails after its uploads")

    try:
        result = materialize(
            [deliver_three_studies],
            resources={"destinations": ProjectDestinationsResource(local_root=str(tmp_path))},
            raise_on_error=False,
        )
        assert result.success is not run_fails
        assert during == [(1, 1)]  # one SSH connection for three studies, open while the run is
        deadline = time.monotonic() + 10
        while proxy.open_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.open_connections() == 0  # closed when the run's resources were torn down
    finally:
        proxy.close()
    for number in range(3):
        target = replace(TARGET, pseudo_study_uid=f"2.25.{number}")
        assert zip_names(sftp_server.root / target.relative_zip_path) == {p.name for p in files}


def test_the_study_pipeline_delivers_through_the_destinations_it_is_given(
    tmp_path: Path,
) -> None:
    """A project whose destination is a DICOMweb server nobody runs: with every delivery sent to
    one folder, the upload stage puts the study there and contacts nothing."""
    projects = tmp_path / "projects"
    write_project(
        projects,
        "p",
        extra={"destinations": {"images": {"kind": "dicomweb", "url": "https://192.0.2.1/dw"}}},
    )
    database = VoxlDatabase(f"sqlite:///{tmp_path / 'voxl.db'}")
    (study_id,) = add_studies(database, "p", [StudyStatus.ANONYMISED.value])
    update_study(database, study_id, pseudo_study_uid="2.25.271828")
    anonymised = tmp_path / "anon-store"
    files = anonymised_study(tmp_path / "made")
    shutil.copytree(files[0].parent, anonymised / "p" / str(study_id))
    key = study_partition_key("p", study_id)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(STUDIES, [key])
        result = materialize(
            [study_pipeline],
            selection=[AssetKey("destination_upload")],
            partition_key=key,
            instance=instance,
            resources={
                "voxl_db": VoxlDatabaseResource(url=database.url),
                "projects": ProjectRegistryResource(directory=str(projects)),
                "hashing": HashingResource(key="not-used-by-the-upload-stage"),
                "vna": VnaResource(),
                "stores": StoresResource(
                    raw_cache_dir=str(tmp_path / "raw-cache"),
                    anonymised_dir=str(anonymised),
                    export_dir=str(tmp_path / "exports"),
                ),
                "destinations": FolderDestinationsResource(root=str(tmp_path / "deliveries")),
            },
        )
    assert result.success
    delivered = tmp_path / "deliveries" / "images" / "p" / "2026-11-01T12-00-00" / "dicom"
    assert zip_names(delivered / "2.25.271828.zip") == {p.name for p in files}
    with database.session() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.status == StudyStatus.UPLOADED.value
