"""Fixtures for the gateway's integration tests: a real Keycloak, a real backend service
that trusts only `X-HDC-Identity` (through `hdc_common.identity`), and gateways built
from settings, each served by uvicorn on a loopback port in a background thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hdc_common.errors import Problem
from hdc_common.identity import InternalTokenVerifier, generate_keypair, identity_from_headers
from hdc_gateway.app import GatewayApp
from hdc_gateway.service import build_app
from hdc_gateway.settings import GatewaySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
KC_URL = os.environ.get("HDC_TEST_KEYCLOAK_URL", "http://127.0.0.1:18080")
KC_HEALTH = os.environ.get("HDC_TEST_KEYCLOAK_HEALTH", "http://127.0.0.1:19000/health/ready")
KC_ADMIN = (
    os.environ.get("HDC_KEYCLOAK_ADMIN", "admin"),
    os.environ.get("HDC_KEYCLOAK_ADMIN_PASSWORD", "admin"),
)
HDC_ISSUER = f"{KC_URL}/realms/hdc"
UNTRUSTED_ISSUER = f"{KC_URL}/realms/untrusted"
FORGE_KEY_NAME = "hdc-test-forge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- servers -----------------------------------------------------------------------------


class ServerThread:
    """uvicorn serving an ASGI app on 127.0.0.1:<port> in a daemon thread."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# -- the backend service -------------------------------------------------------------------


def backend_app(identity_public_pem: str) -> Starlette:
    """A small hdc-style service: every route except /healthz needs a verified identity."""
    verifier = InternalTokenVerifier(identity_public_pem)
    releases: dict[str, asyncio.Event] = {}
    ended: set[str] = set()

    def who(request: Request) -> dict[str, Any]:
        identity = identity_from_headers(request.headers, verifier)
        return {
            "subject": identity.subject,
            "issuer": identity.issuer,
            "groups": list(identity.groups),
            "roles": list(identity.roles),
            "scopes": list(identity.scopes),
            "client_id": identity.client_id,
        }

    async def whoami(request: Request) -> Response:
        body = who(request)
        body["path"] = request.url.path
        body["query"] = request.url.query
        body["forwarded_prefix"] = request.headers.get("x-forwarded-prefix")
        return JSONResponse(body)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def upload(request: Request) -> Response:
        who(request)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse({"sha256": digest.hexdigest(), "bytes": size})

    async def events(request: Request) -> Response:
        """Sends event 0, then waits until the test releases it: a buffering proxy would
        keep event 0 from the client forever, so the test would time out instead of pass."""
        who(request)
        key = request.query_params["key"]
        release = releases.setdefault(key, asyncio.Event())

        async def stream() -> Any:
            try:
                yield b"id: 0\nevent: tick\ndata: first\n\n"
                await asyncio.wait_for(release.wait(), timeout=20)
                for i in range(1, 4):
                    yield f"id: {i}\nevent: tick\ndata: payload-{i}\n\n".encode()
            finally:
                # Runs when the stream ends or when the connection to this service closes.
                releases.pop(key, None)
                ended.add(key)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def release(request: Request) -> Response:
        who(request)
        releases.setdefault(request.path_params["key"], asyncio.Event()).set()
        return JSONResponse({"released": True})

    async def stream_ended(request: Request) -> Response:
        who(request)
        return JSONResponse({"ended": request.path_params["key"] in ended})

    async def on_problem(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return JSONResponse(
            exc.to_dict(), status_code=exc.status, media_type="application/problem+json"
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/upload", upload, methods=["POST", "PUT"]),
            Route("/events", events),
            Route("/release/{key}", release, methods=["POST"]),
            Route("/ended/{key}", stream_ended),
            Route("/{rest:path}", whoami, methods=["GET", "POST", "DELETE"]),
        ],
        exception_handlers={Problem: on_problem},
    )


@dataclass(frozen=True)
class IdentityKeys:
    private_pem: str
    public_pem: str


@pytest.fixture(scope="session")
def identity_keys() -> IdentityKeys:
    private, public = generate_keypair()
    return IdentityKeys(private, public)


@pytest.fixture(scope="session")
def backend(identity_keys: IdentityKeys) -> Iterator[ServerThread]:
    with ServerThread(backend_app(identity_keys.public_pem), free_port()) as server:
        yield server


def gateway_routes(backend_url: str) -> list[dict[str, Any]]:
    return [
        {"prefix": "/svc", "upstream": backend_url, "strip_prefix": True},
        {"prefix": "/team", "upstream": backend_url, "strip_prefix": True, "groups": ["ml-team"]},
        {
            "prefix": "/write",
            "upstream": backend_url,
            "strip_prefix": True,
            "scopes": ["deployments:write"],
        },
        {
            "prefix": "/agents",
            "upstream": backend_url,
            "strip_prefix": True,
            "roles": ["site-agent"],
        },
        {"prefix": "/public", "upstream": backend_url, "strip_prefix": True, "access": "anonymous"},
        {"prefix": "/small", "upstream": backend_url, "strip_prefix": True, "max_body_bytes": 1024},
    ]


@pytest.fixture
def start_gateway(
    identity_keys: IdentityKeys, backend: ServerThread, tmp_path: Path
) -> Iterator[Callable[..., ServerThread]]:
    """Start a gateway with the test routes; keyword arguments override settings."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        values: dict[str, Any] = {
            "http_host": "127.0.0.1",
            "data_dir": tmp_path / "gw",
            "identity_private_key": identity_keys.private_pem,
            "identity_public_key": identity_keys.public_pem,
            "routes": gateway_routes(backend.url),
            "roles": {"extra_roles": {"site-agent": ["site-agent"]}},
            "jwks_min_refresh_s": 0.2,
        }
        values.update(overrides)
        app: GatewayApp = build_app(GatewaySettings(**values))
        server = ServerThread(app, free_port()).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


# -- Keycloak ----------------------------------------------------------------------------------


def _keycloak_ready() -> bool:
    try:
        return httpx.get(KC_HEALTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Keycloak:
    url: str
    admin: Any  # keycloak.KeycloakAdmin on realm hdc
    forge_key: rsa.RSAPrivateKey  # registered in realm hdc (low priority): signs test tokens
    forge_kid: str

    def token(
        self,
        username: str,
        *,
        client_id: str = "hdc-cli",
        realm: str = "hdc",
        scope: str = "openid",
    ) -> str:
        resp = httpx.post(
            f"{self.url}/realms/{realm}/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": client_id,
                "username": username,
                "password": f"{username}-pass",
                "scope": scope,
            },
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def client_token(self, client_id: str, secret: str) -> str:
        resp = httpx.post(
            f"{self.url}/realms/hdc/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def realm_id(self) -> str:
        return self.admin.get_realm("hdc")["id"]


def _register_forge_key(admin: Any) -> tuple[rsa.RSAPrivateKey, str]:
    """An RSA key of ours, added to realm hdc as a low-priority `rsa` key provider.

    Keycloak keeps signing with its own higher-priority key but publishes this one in its
    JWKS, so the tests can make correctly signed tokens with bad claims (expired, not yet
    valid) that only the claim checks can refuse.
    """
    realm_id = admin.get_realm("hdc")["id"]
    for comp in admin.get_components({"parent": realm_id, "type": "org.keycloak.keys.KeyProvider"}):
        if comp["name"] == FORGE_KEY_NAME:
            admin.delete_component(comp["id"])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    component_id = admin.create_component(
        {
            "name": FORGE_KEY_NAME,
            "providerId": "rsa",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm_id,
            "config": {
                "priority": ["1"],
                "enabled": ["true"],
                "active": ["true"],
                "algorithm": ["RS256"],
                "keyUse": ["sig"],
                "privateKey": [pem],
            },
        }
    )
    for entry in admin.get_keys()["keys"]:
        if entry.get("providerId") == component_id:
            return key, entry["kid"]
    raise RuntimeError("Keycloak did not publish the test key")


@pytest.fixture(scope="session")
def keycloak() -> Keycloak:
    """The real Keycloak of tests/infra/keycloak.sh, started once per session if needed."""
    from keycloak import KeycloakAdmin

    if not _keycloak_ready():
        subprocess.run(["bash", str(REPO / "tests/infra/keycloak.sh")], check=True, timeout=420)
    admin = KeycloakAdmin(
        server_url=KC_URL,
        username=KC_ADMIN[0],
        password=KC_ADMIN[1],
        realm_name="hdc",
        user_realm_name="master",
        timeout=30,
    )
    key, kid = _register_forge_key(admin)
    return Keycloak(KC_URL, admin, key, kid)


@pytest.fixture
def kc_gateway(keycloak: Keycloak, start_gateway: Callable[..., ServerThread]) -> ServerThread:
    """A gateway trusting realm hdc only (not realm untrusted), embedded OP off."""
    return start_gateway(
        embedded_op=False,
        issuers=[{"issuer": HDC_ISSUER, "audiences": ["hdc-gateway"]}],
    )


def unique() -> str:
    return uuid.uuid4().hex[:10]
