"""Dagster resources for the imaging stages: the VNA, the local stores, hashing and uploads.

Every setting has an environment variable (documented in the README), so the same definitions
serve the demo and production; secrets are read with ``EnvVar`` or named by the project YAML.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from voxl_assets import settings
from voxl_assets.at_rest import make_private_dir
from voxl_assets.deid.store import AnonymisedStore
from voxl_assets.vna.archives import (
    ArchiveConfig,
    ArchiveSet,
    archives_file,
    load_archive_configs,
    parse_move_source_addresses,
)
from voxl_assets.vna.cache import RawCache
from voxl_assets.vna.client import DicomWebVna, DimseVna, VnaSettings, make_vna_client

_clients: dict[VnaSettings, DimseVna | DicomWebVna] = {}
_archive_sets: dict[tuple[ArchiveConfig, ...], ArchiveSet] = {}
_caches: dict[tuple[str, int], RawCache] = {}
_lock = threading.Lock()


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class VnaResource(ConfigurableResource):
    """The hospital's archives. Empty fields fall back to ``VOXL_VNA_*`` environment variables,
    which describe the one archive most sites have; ``archives_file`` (``VOXL_ARCHIVES_FILE``)
    lists several, each with its own priority, rate limit and time window."""

    archives_file: str = ""

    kind: str = ""
    host: str = ""
    port: int = 0
    ae_title: str = ""
    calling_ae_title: str = ""
    retrieve: str = ""
    move_destination_ae: str = ""
    store_scp_port: int = -1
    store_scp_host: str = ""
    move_source_addresses: str = ""
    dicomweb_url: str = ""
    queries_per_second: float = 0.0
    network_timeout: float = 0.0

    def settings(self) -> VnaSettings:
        return VnaSettings(
            kind=self.kind or _env("VOXL_VNA_KIND", "dimse"),  # type: ignore[arg-type]
            host=self.host or _env("VOXL_VNA_HOST", "127.0.0.1"),
            port=self.port or int(_env("VOXL_VNA_PORT", "4242")),
            ae_title=self.ae_title or _env("VOXL_VNA_AE_TITLE", "VNA"),
            calling_ae_title=self.calling_ae_title or _env("VOXL_AE_TITLE", "VOXL"),
            retrieve=self.retrieve or _env("VOXL_VNA_RETRIEVE", "c-get"),  # type: ignore[arg-type]
            move_destination_ae=self.move_destination_ae or _env("VOXL_AE_TITLE", "VOXL"),
            store_scp_port=self.store_scp_port
            if self.store_scp_port >= 0
            else int(_env("VOXL_STORE_SCP_PORT", "0")),
            store_scp_host=self.store_scp_host or _env("VOXL_STORE_SCP_HOST", "127.0.0.1"),
            move_source_addresses=parse_move_source_addresses(
                self.move_source_addresses or _env("VOXL_VNA_MOVE_SOURCE_ADDRESSES", ""),
                "VOXL_VNA_MOVE_SOURCE_ADDRESSES",
            ),
            dicomweb_url=self.dicomweb_url or _env("VOXL_VNA_DICOMWEB_URL", ""),
            queries_per_second=self.queries_per_second
            or float(_env("VOXL_VNA_QUERIES_PER_SECOND", "5")),
            network_timeout=self.network_timeout or float(_env("VOXL_VNA_TIMEOUT_SECONDS", "120")),
            dimse_timeout=self.network_timeout or float(_env("VOXL_VNA_TIMEOUT_SECONDS", "120")),
        )

    def client(self) -> DimseVna | DicomWebVna:
        """One client per process and settings: the C-MOVE Storage SCP is started once."""
        return _client(self.settings())

    def archive_configs(self) -> list[ArchiveConfig]:
        from pathlib import Path

        path = Path(self.archives_file) if self.archives_file else archives_file()
        if path is None:
            return [ArchiveConfig("vna", self.settings())]
        return load_archive_configs(path, self.settings())

    def archives(self) -> ArchiveSet:
        """The archives in priority order, with one client each (shared per process)."""
        configs = tuple(self.archive_configs())
        with _lock:
            if configs not in _archive_sets:
                _archive_sets[configs] = ArchiveSet.from_configs(list(configs), _client_unlocked)
            return _archive_sets[configs]


def _client_unlocked(settings_: VnaSettings) -> DimseVna | DicomWebVna:
    if settings_ not in _clients:
        _clients[settings_] = make_vna_client(settings_)
    return _clients[settings_]


def _client(settings_: VnaSettings) -> DimseVna | DicomWebVna:
    with _lock:
        return _client_unlocked(settings_)


class StoresResource(ConfigurableResource):
    """The raw cache (identifiable, bounded) and the anonymised store, on local disk."""

    raw_cache_dir: str = ""
    raw_cache_max_bytes: int = 0
    anonymised_dir: str = ""
    export_dir: str = ""

    def raw_cache(self) -> RawCache:
        root = self.raw_cache_dir or str(settings.raw_cache_dir())
        limit = self.raw_cache_max_bytes or int(_env("VOXL_RAW_CACHE_MAX_BYTES", str(50 * 1024**3)))
        with _lock:
            if (root, limit) not in _caches:
                _caches[(root, limit)] = RawCache(make_private_dir(Path(root)), limit)
            return _caches[(root, limit)]

    def anonymised(self) -> AnonymisedStore:
        root = Path(self.anonymised_dir) if self.anonymised_dir else settings.anon_store_dir()
        return AnonymisedStore(make_private_dir(root))

    def exports(self) -> Any:
        return make_private_dir(Path(self.export_dir) if self.export_dir else settings.export_dir())
