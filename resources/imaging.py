"""Dagster resources for the imaging stages: the hospital's archives and the local stores.

Every field is a setting of the deployment, given in ``voxl_assets/definitions.py`` (from an
environment variable where one is set, documented in the README), so the UI's resource page shows
how the deployment reaches its archives and where it keeps studies. Nothing here reads the
environment: the defaults below are the embedded default's.
"""

from __future__ import annotations

import threading
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from voxl_assets.at_rest import make_private_dir
from voxl_assets.db import VoxlDatabase
from voxl_assets.deid.store import DEFAULT_MAX_BYTES, AnonymisedStore
from voxl_assets.vna.archives import (
    Archive,
    ArchiveConfig,
    ArchiveSet,
    load_archive_configs,
    parse_move_source_addresses,
)
from voxl_assets.vna.cache import RawCache
from voxl_assets.vna.client import DicomWebVna, DimseVna, VnaSettings, make_vna_client

# Shared per process: one C-MOVE Storage SCP per settings, one index handle per cache folder.
_clients: dict[tuple[VnaSettings, str, str], DimseVna | DicomWebVna] = {}
_archive_sets: dict[tuple[tuple[ArchiveConfig, ...], str], ArchiveSet] = {}
_caches: dict[tuple[str, int], RawCache] = {}
_anonymised_stores: dict[tuple[str, int, int], AnonymisedStore] = {}
_lock = threading.Lock()


class VnaResource(ConfigurableResource):
    """The hospital's archives. The fields describe the one archive most sites have (the VNA);
    ``archives_file`` lists several instead, each with its own priority, rate limit and time
    window, and then only VOXL's own side (AE title, Storage SCP) is taken from here."""

    archives_file: str = Field(default="", description="YAML listing several archives (optional)")
    kind: str = Field(default="dimse", description="dimse or dicomweb")
    host: str = Field(default="127.0.0.1", description="the VNA's DIMSE address")
    port: int = Field(default=4242, description="the VNA's DIMSE port")
    ae_title: str = Field(default="VNA", description="the VNA's called AE title")
    calling_ae_title: str = Field(
        default="VOXL", description="VOXL's AE title: calling AE and C-MOVE destination"
    )
    retrieve: str = Field(default="c-get", description="c-get, or c-move to VOXL's Storage SCP")
    store_scp_port: int = Field(default=0, description="Storage SCP port for C-MOVE (0: any)")
    store_scp_host: str = Field(default="127.0.0.1", description="address the Storage SCP uses")
    move_source_addresses: str = Field(
        default="", description="addresses or networks the VNA's C-STOREs may come from"
    )
    dicomweb_url: str = Field(default="", description="the VNA's DICOMweb root (kind dicomweb)")
    queries_per_second: float = Field(default=5.0, description="query and retrieval rate limit")
    timeout_seconds: float = Field(default=120.0, description="DIMSE and network timeout")
    retry_delay_seconds: float = Field(
        default=2.0, description="first backoff delay of retries (3 attempts, doubling)"
    )
    study_workers: int = Field(
        default=4, description="studies in flight per run (each may hold an association)"
    )

    def settings(self) -> VnaSettings:
        """The single archive's settings (VOXL's own side for an archives file).

        Raises:
            ArchiveConfigError: ``move_source_addresses`` holds something that is not an address.
        """
        return VnaSettings(
            kind=self.kind,  # type: ignore[arg-type]
            host=self.host,
            port=self.port,
            ae_title=self.ae_title,
            calling_ae_title=self.calling_ae_title,
            retrieve=self.retrieve,  # type: ignore[arg-type]
            move_destination_ae=self.calling_ae_title,
            store_scp_port=self.store_scp_port,
            store_scp_host=self.store_scp_host,
            move_source_addresses=parse_move_source_addresses(
                self.move_source_addresses, "VOXL_VNA_MOVE_SOURCE_ADDRESSES"
            ),
            dicomweb_url=self.dicomweb_url,
            queries_per_second=self.queries_per_second,
            network_timeout=self.timeout_seconds,
            dimse_timeout=self.timeout_seconds,
        )

    def archive_configs(self) -> list[ArchiveConfig]:
        """The archives in the order they are asked.

        Raises:
            ArchiveConfigError: the archives file is wrong (the message names file and field).
        """
        if not self.archives_file:
            return [ArchiveConfig("vna", self.settings())]
        return load_archive_configs(Path(self.archives_file), self.settings())

    def archives(self, database: VoxlDatabase | None = None) -> ArchiveSet:
        """The archives in priority order, with one client each (shared per process). With
        ``database``, each archive's query rate is the one recorded there, global to every process
        and host on PostgreSQL (``voxl_assets/vna/rate.py``); without, each client keeps its own."""
        configs = tuple(self.archive_configs())
        key = (configs, database.url if database is not None else "")
        with _lock:
            if key not in _archive_sets:
                _archive_sets[key] = ArchiveSet(
                    [Archive(c, _client_unlocked(c, database)) for c in configs]
                )
            return _archive_sets[key]


def _client_unlocked(
    config: ArchiveConfig, database: VoxlDatabase | None
) -> DimseVna | DicomWebVna:
    key = (config.settings, config.name, database.url if database is not None else "")
    if key not in _clients:
        limiter = None
        if database is not None:
            from voxl_assets.vna.rate import archive_rate_limiter

            limiter = archive_rate_limiter(
                database, config.name, config.settings.queries_per_second
            )
        _clients[key] = make_vna_client(config.settings, limiter)
    return _clients[key]


class StoresResource(ConfigurableResource):
    """The local stores: the raw cache (identifiable, bounded: keep it on encrypted local disk),
    the anonymised store and the per-extract export folders."""

    raw_cache_dir: str = Field(description="the raw cache (identifiable)")
    raw_cache_max_bytes: int = Field(
        default=50 * 1024**3, description="size bound of the raw cache (LRU eviction)"
    )
    anonymised_dir: str = Field(description="anonymised studies waiting for upload")
    anonymised_max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES,
        description="size bound of the anonymised store (delivered studies leave first)",
    )
    anonymised_retention_hours: int = Field(
        default=0,
        description="hours a delivered study stays in the anonymised store (0: removed at once)",
    )
    export_dir: str = Field(description="per-extract export bundles")

    def raw_cache(self) -> RawCache:
        key = (self.raw_cache_dir, self.raw_cache_max_bytes)
        with _lock:
            if key not in _caches:
                _caches[key] = RawCache(make_private_dir(Path(self.raw_cache_dir)), key[1])
            return _caches[key]

    def anonymised(self) -> AnonymisedStore:
        key = (self.anonymised_dir, self.anonymised_max_bytes, self.anonymised_retention_hours)
        with _lock:
            if key not in _anonymised_stores:
                _anonymised_stores[key] = AnonymisedStore(
                    make_private_dir(Path(self.anonymised_dir)), key[1], key[2]
                )
            return _anonymised_stores[key]

    def exports(self) -> Path:
        return make_private_dir(Path(self.export_dir))
