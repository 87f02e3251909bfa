"""The Azure DICOM service's client-credentials grant with the real azure-identity credential:
only the Azure AD token endpoint is stood in for (it cannot run here), by a small HTTPS server on
loopback that records what reaches it. The tenant, client id and secret must arrive in their
places, and the token it issues must be the one STOW-RS sends (to a real Orthanc)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.peers._upload_study import TARGET, anonymised_study
from tests.peers.ftps import make_certificate
from tests.peers.orthanc import OrthancServer
from voxl_assets.project_config import AzureDicomDestination
from voxl_assets.upload.factory import make_image_uploader


@dataclass
class TokenEndpoint:
    url: str
    certificate: Path
    grants: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)


@pytest.fixture
def token_endpoint(tmp_path: Path) -> Iterator[TokenEndpoint]:
    certificate = make_certificate(tmp_path)
    grants: list[tuple[str, dict[str, list[str]]]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # OpenID discovery of the tenant
            tenant = self.path.split("/")[1]
            port = self.server.server_address[1]  # type: ignore[index]
            root = f"https://127.0.0.1:{port}/{tenant}"
            self._json(
                {
                    "token_endpoint": f"{root}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                    "issuer": f"{root}/v2.0",
                }
            )

        def do_POST(self) -> None:  # the client-credentials grant
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            grants.append((self.path, parse_qs(body)))
            self._json({"access_token": "issued-token", "expires_in": 3600, "token_type": "Bearer"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield TokenEndpoint(f"https://127.0.0.1:{server.server_address[1]}", certificate, grants)
    server.shutdown()


def test_tenant_client_id_and_secret_reach_the_token_endpoint_in_their_places(
    token_endpoint: TokenEndpoint, orthanc: OrthancServer, tmp_path: Path
) -> None:
    env = {
        "AZ_TENANT": "tenant-0f3c",
        "AZ_CLIENT": "client-id-7a21",
        "AZ_SECRET": "client-secret-9d4e",
    }
    destination = AzureDicomDestination(
        kind="azure_dicom",
        url=orthanc.dicomweb_url,
        tenant_id_env="AZ_TENANT",
        client_id_env="AZ_CLIENT",
        client_secret_env="AZ_SECRET",
    )
    uploader = make_image_uploader(
        destination,
        env,
        credential_options={
            "authority": token_endpoint.url,
            "disable_instance_discovery": True,
            "connection_verify": str(token_endpoint.certificate),
        },
    )
    assert uploader is not None
    sent_tokens: list[str] = []
    session = uploader._session  # type: ignore[attr-defined]
    session.hooks["response"].append(
        lambda response, *args, **kwargs: sent_tokens.append(
            response.request.headers.get("Authorization", "")
        )
    )
    report = uploader.upload_study(anonymised_study(tmp_path / "anon", instances=3), TARGET)
    assert report.instances == 3 and orthanc.instance_count() == 3
    assert len(token_endpoint.grants) == 1  # cached for the whole study
    path, form = token_endpoint.grants[0]
    assert path == "/tenant-0f3c/oauth2/v2.0/token"
    assert form["client_id"] == ["client-id-7a21"]
    assert form["client_secret"] == ["client-secret-9d4e"]
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["https://dicom.healthcareapis.azure.com/.default"]
    assert sent_tokens and set(sent_tokens) == {"Bearer issued-token"}
