"""The Azure Health Data Services DICOM service: STOW-RS with an Azure AD bearer token.

The token comes from a client-credentials grant (azure-identity ``ClientSecretCredential``), is
cached, and is refreshed once less than five minutes of its life remain, so a long study never sends
an expired token. The credential is injectable (anything with ``get_token(*scopes)``): the Azure AD
endpoint cannot run in tests. VOXL's pseudonymous UIDs are at most 64 characters, as the service
requires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from voxl_assets.upload.base import TransientUploadError, UploadError
from voxl_assets.upload.dicomweb import DEFAULT_BATCH_MAX_BYTES, DicomWebUploader
from voxl_assets.upload.retrying import DEFAULT_ATTEMPTS, DEFAULT_RETRY_DELAY

REFRESH_MARGIN_SECONDS = 300
DEFAULT_SCOPE = "https://dicom.healthcareapis.azure.com/.default"


class TokenCredential(Protocol):
    def get_token(self, *scopes: str) -> Any: ...  # an AccessToken: .token, .expires_on (epoch s)


class CachedToken:
    """``token()`` returns a bearer token valid for at least five more minutes."""

    def __init__(
        self, credential: TokenCredential, scope: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() > self._expires_on - REFRESH_MARGIN_SECONDS:
                try:
                    access = self._credential.get_token(self._scope)
                except ClientAuthenticationError:
                    raise UploadError(
                        "Azure AD refused the client credentials (tenant, client id or secret)"
                    ) from None
                except ServiceRequestError as exc:
                    raise TransientUploadError(
                        f"Azure AD unreachable ({type(exc).__name__})"
                    ) from None
                self._token, self._expires_on = str(access.token), float(access.expires_on)
            return self._token


class AzureDicomUploader(DicomWebUploader):
    kind = "azure_dicom"

    def __init__(
        self,
        url: str,
        credential: TokenCredential,
        scope: str = DEFAULT_SCOPE,
        *,
        batch_size: int = 50,
        batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
        timeout: float = 120.0,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        attempts: int = DEFAULT_ATTEMPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = CachedToken(credential, scope, clock)
        super().__init__(
            url,
            token_provider=self.token,
            batch_size=batch_size,
            batch_max_bytes=batch_max_bytes,
            timeout=timeout,
            retry_delay=retry_delay,
            attempts=attempts,
        )


def azure_dicom_uploader(
    url: str,
    credential: TokenCredential,
    scope: str = DEFAULT_SCOPE,
    *,
    batch_size: int = 50,
    retry_delay: float = DEFAULT_RETRY_DELAY,
) -> AzureDicomUploader:
    """Kept for callers of the first version; prefer ``AzureDicomUploader``."""
    return AzureDicomUploader(
        url, credential, scope, batch_size=batch_size, retry_delay=retry_delay
    )
