"""Build the uploader a project's destination names, reading secrets from the environment.

A destination names environment variables, never values; a missing variable is an ``UploadError``
that names the variable (never a value). Imports are lazy so a deployment needs only the SDKs of
the destinations it uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voxl_assets.project_config import (
    AzureBlobDestination,
    AzureDicomDestination,
    DicomWebDestination,
    FtpsDestination,
    LocalDirectoryDestination,
    NoDestination,
    SftpDestination,
)
from voxl_assets.upload.base import FileUploader, ImageUploader, UploadError

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
    assert value is not None  # _secret raises when a named variable is unset
    return value


def local_uploader(destination: LocalDirectoryDestination, root: Path | None = None) -> Any:
    """The uploader into a ``kind: local`` folder: its ``path`` under ``root`` (default
    ``VOXL_LOCAL_DESTINATION_ROOT``), checked again now, so a link planted since the definition
    was loaded is caught.

    Raises:
        UploadError: the folder resolves outside ``root``.
    """
    from voxl_assets.at_rest import make_private_dir
    from voxl_assets.confinement import PathEscapeError
    from voxl_assets.project_config import local_destination_path
    from voxl_assets.upload.local import LocalUploader

    try:
        folder = local_destination_path(destination, root)
        return LocalUploader(make_private_dir(folder, tighten=False))
    except PathEscapeError as exc:
        raise UploadError(f"local destination {destination.path}: {exc}") from None


def _ftps(destination: FtpsDestination, env: Mapping[str, str]) -> Any:
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


def _sftp(destination: SftpDestination, env: Mapping[str, str]) -> Any:
    from voxl_assets.upload.sftp import SftpUploader

    return SftpUploader(
        destination.host,
        destination.port,
        _required(env, destination.username_env, "SFTP user"),
        _required(env, destination.private_key_path_env, "SFTP private key path"),
        destination.known_host_key,
        remote_root=destination.remote_root,
        ssh_client=destination.ssh_client,
    )


def _azure_blob(destination: AzureBlobDestination, env: Mapping[str, str]) -> Any:
    from voxl_assets.upload.azure_blob import AzureBlobUploader

    return AzureBlobUploader(
        _required(env, destination.connection_string_env, "Azure Blob connection string"),
        destination.container,
        prefix=destination.prefix,
        max_concurrency=destination.max_concurrency,
    )


def _dicomweb(destination: DicomWebDestination, env: Mapping[str, str]) -> Any:
    from voxl_assets.upload.dicomweb import DicomWebUploader

    token = _secret(env, destination.token_env, "DICOMweb bearer token")
    username = _secret(env, destination.username_env, "DICOMweb user")
    password = _secret(env, destination.password_env, "DICOMweb password")
    if password is not None and username is None:
        raise UploadError("the DICOMweb destination names password_env but no username_env")
    if token is not None and username is not None:
        raise UploadError("the DICOMweb destination names both a token and a user: choose one")
    verify: bool | str = destination.verify_tls
    if destination.verify_tls and destination.ca_bundle:
        verify = destination.ca_bundle
    return DicomWebUploader(
        destination.url,
        username=username,
        password=password,
        token_provider=(lambda: token) if token is not None else None,
        verify=verify,
        batch_size=destination.batch_size,
        batch_max_bytes=destination.batch_max_mib << 20,
    )


def _azure_dicom(
    destination: AzureDicomDestination,
    env: Mapping[str, str],
    credential: Any,
    credential_options: Mapping[str, Any] | None = None,
) -> Any:
    from voxl_assets.upload.azure_dicom import AzureDicomUploader

    if credential is None:
        from azure.identity import ClientSecretCredential

        credential = ClientSecretCredential(
            _required(env, destination.tenant_id_env, "Azure tenant id"),
            _required(env, destination.client_id_env, "Azure client id"),
            _required(env, destination.client_secret_env, "Azure client secret"),
            **(credential_options or {}),
        )
    return AzureDicomUploader(
        destination.url,
        credential,
        destination.scope,
        batch_size=destination.batch_size,
        batch_max_bytes=destination.batch_max_mib << 20,
    )


def make_image_uploader(
    destination: Destination,
    env: Mapping[str, str] = os.environ,
    *,
    credential: Any = None,
    credential_options: Mapping[str, Any] | None = None,
) -> ImageUploader | None:
    """The uploader of anonymised studies for ``destination``; None for kind 'none'.

    ``credential`` replaces the Azure AD client-secret credential (``azure_dicom`` only), e.g. a
    managed identity, or a fake in tests (the token endpoint cannot run there);
    ``credential_options`` are passed to the client-secret credential (``authority`` of a
    sovereign cloud, ``connection_verify``...).

    Raises:
        UploadError: an environment variable the destination names is unset (the message names
            the variable), or the destination is inconsistent.
    """
    if isinstance(destination, NoDestination):
        return None
    if isinstance(destination, LocalDirectoryDestination):
        uploader = local_uploader(destination)
    elif isinstance(destination, DicomWebDestination):
        uploader = _dicomweb(destination, env)
    elif isinstance(destination, AzureDicomDestination):
        uploader = _azure_dicom(destination, env, credential, credential_options)
    elif isinstance(destination, FtpsDestination):
        uploader = _ftps(destination, env)
    elif isinstance(destination, SftpDestination):
        uploader = _sftp(destination, env)
    elif isinstance(destination, AzureBlobDestination):
        uploader = _azure_blob(destination, env)
    else:
        raise UploadError(f"unknown destination kind {getattr(destination, 'kind', '?')}")
    result: ImageUploader = uploader
    return result


def make_file_uploader(
    destination: Destination, env: Mapping[str, str] = os.environ
) -> FileUploader | None:
    """The uploader of files (EHR bundles) for ``destination``; None for kind 'none'.

    Raises:
        UploadError: as ``make_image_uploader``, or the kind cannot take files (DICOMweb).
    """
    if isinstance(destination, NoDestination):
        return None
    if isinstance(destination, LocalDirectoryDestination):
        uploader = local_uploader(destination)
    elif isinstance(destination, FtpsDestination):
        uploader = _ftps(destination, env)
    elif isinstance(destination, SftpDestination):
        uploader = _sftp(destination, env)
    elif isinstance(destination, AzureBlobDestination):
        uploader = _azure_blob(destination, env)
    else:
        raise UploadError(
            f"a {getattr(destination, 'kind', '?')} destination cannot receive files (EHR bundles)"
        )
    result: FileUploader = uploader
    return result


def make_uploader(
    destination: Destination, env: Mapping[str, str] | None = None, *, credential: Any = None
) -> Any:
    """The first version's entry point: an uploader with ``upload_study`` and, for file
    destinations, ``upload_tree``. Prefer ``make_image_uploader`` / ``make_file_uploader``."""
    return make_image_uploader(
        destination, os.environ if env is None else env, credential=credential
    )
