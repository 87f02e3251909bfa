"""The hospital's archives, searched in priority order, each with its own connection, rate limit
and time window.

Most sites have one archive (the VNA) and configure it with ``VOXL_VNA_*`` variables. A site with a
second one (say the clinical PACS, which holds emergency imaging the VNA has not ingested yet)
lists both in a YAML file named by ``VOXL_ARCHIVES_FILE``:

    archives:
      - name: vna
        priority: 1
        host: vna.example.org
        port: 104
        ae_title: VNA
        retrieve: c-move
        queries_per_second: 5
      - name: pacs
        priority: 2
        host: pacs.example.org
        port: 104
        ae_title: PACS
        retrieve: c-move
        queries_per_second: 1
        window:
          timezone: Europe/London
          open:
            - days: mon-fri
              hours: ["00:00-08:00", "20:00-24:00"]
            - days: sat-sun
              hours: all day

Lower ``priority`` is asked first. The file holds no secrets (DIMSE has none; a DICOMweb archive
behind authentication would name environment variables, as project destinations do).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from voxl_assets.config_files import ConfigFileError, read_yaml
from voxl_assets.vna.client import VnaClient, VnaSettings, make_vna_client
from voxl_assets.vna.windows import TimeWindow, WindowConfigError, parse_window


class ArchiveConfigError(ValueError):
    """The archives file is wrong; the message names the file, the archive and the field."""


def _check_address(value: str) -> str:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(
            "must be an IP address or network (10.0.0.5, 10.0.0.0/24); host names are not taken"
        ) from None
    return value.strip()


def parse_move_source_addresses(value: str, where: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses or networks (``VOXL_VNA_MOVE_SOURCE_ADDRESSES``).

    Raises:
        ArchiveConfigError: an entry is not an address or network; the message names ``where``.
    """
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    try:
        return tuple(_check_address(entry) for entry in entries)
    except ValueError as exc:
        raise ArchiveConfigError(f"{where}: {exc}") from None


class _ArchiveModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    priority: int = 0
    kind: Literal["dimse", "dicomweb"] = "dimse"
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    ae_title: str = Field(default="VNA", max_length=16)
    retrieve: Literal["c-get", "c-move"] = "c-get"
    dicomweb_url: str = ""
    queries_per_second: float = Field(default=5.0, gt=0)
    timeout_seconds: float = Field(default=120.0, gt=0)
    window: dict[str, Any] | None = None
    # Where the archive's C-MOVE C-STOREs come from, when not from ``host`` (a cluster's nodes).
    move_source_addresses: list[Annotated[str, AfterValidator(_check_address)]] = Field(
        default_factory=list
    )


class _ArchivesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    archives: list[_ArchiveModel] = Field(min_length=1)


@dataclass(frozen=True)
class ArchiveConfig:
    name: str
    settings: VnaSettings
    priority: int = 0
    window: TimeWindow | None = None

    def is_open(self, now: datetime) -> bool:
        return self.window is None or self.window.is_open(now)


def load_archive_configs(path: Path, local: VnaSettings) -> list[ArchiveConfig]:
    """The archives of ``path`` in the order they are asked. ``local`` gives VOXL's own side
    (calling AE title, C-MOVE destination and port), shared by every archive."""
    try:
        raw = read_yaml(path)
    except ConfigFileError as exc:
        raise ArchiveConfigError(f"archives file {exc}") from None
    try:
        parsed = _ArchivesFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ArchiveConfigError(f"{path}: {problems}") from None
    names = [a.name for a in parsed.archives]
    if len(set(names)) != len(names):
        raise ArchiveConfigError(f"{path}: archive names must be unique (got {names})")
    configs = []
    for model in parsed.archives:
        try:
            window = (
                parse_window(model.window, f"{path}: archive {model.name}")
                if model.window
                else None
            )
        except WindowConfigError as exc:
            raise ArchiveConfigError(str(exc)) from None
        if model.kind == "dicomweb" and not model.dicomweb_url:
            raise ArchiveConfigError(f"{path}: archive {model.name} is dicomweb: give dicomweb_url")
        settings = replace(
            local,
            kind=model.kind,
            host=model.host,
            port=model.port,
            ae_title=model.ae_title,
            retrieve=model.retrieve,
            dicomweb_url=model.dicomweb_url,
            queries_per_second=model.queries_per_second,
            network_timeout=model.timeout_seconds,
            dimse_timeout=model.timeout_seconds,
            move_source_addresses=tuple(model.move_source_addresses),
        )
        configs.append(ArchiveConfig(model.name, settings, model.priority, window))
    return sorted(configs, key=lambda c: c.priority)  # stable: ties keep the file's order


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def store_scp_warnings(configs: list[ArchiveConfig]) -> list[str]:
    """C-MOVE set-ups that cannot work as configured: an archive on another host moving to a
    Storage SCP that listens on loopback only, or a Storage SCP port the archive cannot know."""
    warnings = []
    for config in configs:
        s = config.settings
        if s.kind != "dimse" or s.retrieve != "c-move":
            continue
        if _is_loopback(s.store_scp_host) and not _is_loopback(s.host):
            warnings.append(
                f"archive {config.name} retrieves with C-MOVE from {s.host}, but VOXL's Storage "
                f"SCP listens on {s.store_scp_host} only: set VOXL_STORE_SCP_HOST to this host's "
                "address on the archive's network"
            )
        if s.store_scp_port == 0:
            warnings.append(
                f"archive {config.name} retrieves with C-MOVE but VOXL_STORE_SCP_PORT is 0 (a new "
                "port each time): fix it and register it with the archive"
            )
    return warnings


@dataclass
class Archive:
    config: ArchiveConfig
    client: VnaClient

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class ArchiveSet:
    """The archives in the order they are asked, with the clock that decides their windows."""

    archives: list[Archive]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @classmethod
    def single(cls, client: VnaClient, name: str = "vna") -> ArchiveSet:
        """One always-open archive: the usual site, and most tests."""
        settings = getattr(client, "settings", VnaSettings())
        return cls([Archive(ArchiveConfig(name, settings), client)])

    @classmethod
    def from_configs(
        cls,
        configs: list[ArchiveConfig],
        make_client: Callable[[VnaSettings], VnaClient] = make_vna_client,
        clock: Callable[[], datetime] | None = None,
    ) -> ArchiveSet:
        archives = [Archive(c, make_client(c.settings)) for c in configs]
        return cls(archives, clock) if clock else cls(archives)

    def __iter__(self) -> Iterator[Archive]:
        return iter(self.archives)

    def close(self) -> None:
        for archive in self.archives:
            archive.client.close()

    def release_associations(self) -> None:
        """End the associations the clients keep between studies (a batch has ended)."""
        for archive in self.archives:
            release = getattr(archive.client, "release_associations", None)
            if release is not None:
                release()
