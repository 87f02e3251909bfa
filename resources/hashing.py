"""Keyed hashing as a Dagster resource: the key from the environment, salts in the VOXL db."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from voxl_assets.db import VoxlDatabase
from voxl_assets.deid.hashing import HashingBackend, LocalHashing, RemoteHashing, SaltStore


class HashingResource(ConfigurableResource):
    """``key`` is set from ``EnvVar("VOXL_HASHING_KEY")`` in the definitions, never in a file.

    With ``remote_url`` set, hashing is delegated to an HTTP hashing service (which then holds
    the key and salts) and ``key`` is not used.
    """

    key: str = Field(default="", description="the keyed hashing's secret (VOXL_HASHING_KEY)")
    remote_url: str = Field(
        default="", description="an HTTP hashing service instead (VOXL_HASHING_URL, optional)"
    )
    remote_token: str = Field(default="", description="its bearer token (VOXL_HASHING_TOKEN)")

    def backend(self, database: VoxlDatabase) -> HashingBackend:
        if self.remote_url:
            return RemoteHashing(self.remote_url, token=self.remote_token or None)
        return LocalHashing(self.key, SaltStore(database))
