"""The Azure Health Data Services DICOM service: STOW-RS with an Azure AD bearer token.

The token comes from a client-credentials grant (azure-identity) and is refreshed five minutes
before it expires. The credential is injectable: the Azure AD endpoint cannot run in tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from voxl_assets.upload.dicomweb import DicomWebUploader

REFRESH_MARGIN_SECONDS = 300


class TokenCredential(Protocol):
    def get_token(self, *scopes: str) -> Any: ...  # returns an object with .token, .expires_on


class CachedToken:
    def __init__(self, credential: TokenCredential, scope: str, clock: Any = time.time) -> None:
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() > self._expires_on - REFRESH_MARGIN_SECONDS:
                access = self._credential.get_token(self._scope)
                self._token, self._expires_on = str(access.token), float(access.expires_on)
            return self._token


def azure_dicom_uploader(
    url: str,
    credential: TokenCredential,
    scope: str,
    *,
    batch_size: int = 50,
    retry_delay: float = 2.0,
) -> DicomWebUploader:
    uploader = DicomWebUploader(
        url,
        token_provider=CachedToken(credential, scope),
        batch_size=batch_size,
        retry_delay=retry_delay,
    )
    uploader.kind = "azure_dicom"
    return uploader
