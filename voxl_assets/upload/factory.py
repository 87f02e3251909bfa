"""Build the uploader a project's destination names, reading secrets from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voxl_assets import settings
from voxl_assets.project_config import (
    AzureBlobDestination,
    AzureDicomDestination,
    DicomWebDestination,
    FtpsDestination,
    LocalDirectoryDestination,
    NoDestination,
    SftpDestination,
)
from voxl_assets.upload.base import UploadError

Destination = (
    NoDestination
    | LocalDirectoryDestination
    | DicomWebDestination
    | AzureDicomDestination
    | FtpsDestination
    | SftpDestination
    | AzureBlobDestination
)


def _secret(env: Mapping[str, str], name: str | None, what: str) -> str | None:
    if name is None:
        return None
    value = env.get(name)
    if not value:
        raise UploadError(f"environment variable {name} ({what}) is not set")
    return value


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = _secret(env, name, what)
    assert value is not None
    return value


def make_uploader(
    destination: Destination, env: Mapping[str, str] | None = None, *, credential: Any = None
) -> Any:
    """The uploader for ``destination`` (None for kind 'none'). ``credential`` replaces the Azure
    AD credential (tests: the token endpoint cannot run here)."""
    env = os.environ if env is None else env
    if isinstance(destination, NoDestination):
        return None
    if isinstance(destination, LocalDirectoryDestination):
        from voxl_assets.upload.local import LocalUploader

        root = Path(destination.path)
        return LocalUploader(root if root.is_absolute() else settings.voxl_home() / root)
    if isinstance(destination, DicomWebDestination):
        from voxl_assets.upload.dicomweb import DicomWebUploader

        token = _secret(env, destination.token_env, "DICOMweb token")
        return DicomWebUploader(
            destination.url,
            username=_secret(env, destination.username_env, "DICOMweb user"),
            password=_secret(env, destination.password_env, "DICOMweb password"),
            token_provider=(lambda: token) if token else None,
            verify=destination.ca_bundle or destination.verify_tls,
            batch_size=destination.batch_size,
        )
    if isinstance(destination, AzureDicomDestination):
        from voxl_assets.upload.azure_dicom import azure_dicom_uploader

        if credential is None:
            from azure.identity import ClientSecretCredential

            credential = ClientSecretCredential(
                _required(env, destination.tenant_id_env, "Azure tenant id"),
                _required(env, destination.client_id_env, "Azure client id"),
                _required(env, destination.client_secret_env, "Azure client secret"),
            )
        return azure_dicom_uploader(
            destination.url, credential, destination.scope, batch_size=destination.batch_size
        )
    if isinstance(destination, FtpsDestination):
        from voxl_assets.upload.ftps import FtpsUploader

        return FtpsUploader(
            destination.host,
            destination.port,
            _required(env, destination.username_env, "FTPS user"),
            _required(env, destination.password_env, "FTPS password"),
            remote_root=destination.remote_root,
            verify_tls=destination.verify_tls,
            ca_bundle=destination.ca_bundle,
        )
    if isinstance(destination, SftpDestination):
        from voxl_assets.upload.sftp import SftpUploader

        return SftpUploader(
            destination.host,
            destination.port,
            _required(env, destination.username_env, "SFTP user"),
            _required(env, destination.private_key_path_env, "SFTP private key path"),
            destination.known_host_key,
            remote_root=destination.remote_root,
        )
    if isinstance(destination, AzureBlobDestination):
        from voxl_assets.upload.azure_blob import AzureBlobUploader

        return AzureBlobUploader(
            _required(env, destination.connection_string_env, "Azure Blob connection string"),
            destination.container,
            prefix=destination.prefix,
            max_concurrency=destination.max_concurrency,
        )
    raise UploadError(f"unknown destination kind {destination.kind}")
