"""Gateway contract tests without Keycloak: the embedded OpenID provider signs the tokens,
a small real backend verifies the forwarded identity, uvicorn serves both on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from hdc_common.errors import Problem
from hdc_common.identity import InternalTokenVerifier, generate_keypair, identity_from_headers
from hdc_gateway.service import build_app
from hdc_gateway.settings import GatewaySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                proxy_headers=False,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keypair()


@pytest.fixture(scope="module")
def echo_backend(keys: tuple[str, str]) -> Iterator[Served]:
    verifier = InternalTokenVerifier(keys[1])

    async def whoami(request: Request) -> Response:
        try:
            who = identity_from_headers(request.headers, verifier)
        except Problem as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        return JSONResponse(
            {
                "subject": who.subject,
                "issuer": who.issuer,
                "groups": list(who.groups),
                "roles": list(who.roles),
                "path": request.url.path,
                "authorization": request.headers.get("authorization"),
                "xff": request.headers.get("x-forwarded-for"),
                "hop": request.headers.get("x-hop-only"),
                "kept": request.headers.get("x-end-to-end"),
            },
            headers={"X-Frame-Options": "SAMEORIGIN"},
        )

    async def slow(_request: Request) -> Response:
        await asyncio.sleep(1.5)
        return JSONResponse({"late": True})

    server = Served(
        Starlette(
            routes=[
                Route("/slow", slow, methods=["GET", "POST"]),
                Route("/{rest:path}", whoami, methods=["GET", "POST"]),
            ]
        )
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def embedded_gateway(
    keys: tuple[str, str], echo_backend: Served, tmp_path: Path
) -> Iterator[Callable[..., Served]]:
    """Start a gateway with the embedded OP on; keyword arguments override settings."""
    started: list[Served] = []

    def start(**overrides: Any) -> Served:
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "identity_private_key": keys[0],
            "identity_public_key": keys[1],
            "routes": [
                {"prefix": "/svc", "upstream": echo_backend.url, "strip_prefix": True},
                {"prefix": "/team", "upstream": echo_backend.url, "groups": ["ml-team"]},
                {"prefix": "/open", "upstream": echo_backend.url, "access": "optional"},
                {"prefix": "/down", "upstream": f"http://127.0.0.1:{free_port()}"},
            ],
        }
        values.update(overrides)
        served = Served(build_app(GatewaySettings(**values))).start()
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


class FakeOpaqueTokenServer:
    """FAKE OAuth 2.0 authorization server for opaque tokens: no such server runs here
    (Keycloak and INDIGO IAM issue JWTs), so this one follows the protocols faithfully:
    RFC 6749 §4.4 client credentials with HTTP Basic client authentication, RFC 7662
    introspection (itself requiring client authentication) and RFC 7009 revocation."""

    ISSUER = "https://opaque-as.test/"

    def __init__(self) -> None:
        import base64
        import secrets

        clients = {"agent-7": "agent-secret", "hdc-gateway": "gw-secret"}
        tokens: dict[str, dict[str, Any]] = {}

        def client_of(request: Request) -> str | None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "basic":
                return None
            user, _, password = base64.b64decode(value).decode().partition(":")
            return user if clients.get(user) == password else None

        async def token(request: Request) -> Response:
            client = client_of(request)
            form = await request.form()
            if client is None:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            if form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            value = secrets.token_urlsafe(32)
            now = int(time.time())
            tokens[value] = {
                "sub": f"client:{client}",
                "client_id": client,
                "iss": self.ISSUER,
                "aud": "hdc-gateway",
                "scope": str(form.get("scope", "")),
                "iat": now,
                "exp": now + 300,
                "groups": ["site-agents"],
            }
            return JSONResponse(
                {"access_token": value, "token_type": "Bearer", "expires_in": 300},
                headers={"Cache-Control": "no-store"},
            )

        async def introspect(request: Request) -> Response:
            if client_of(request) is None:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            form = await request.form()
            claims = tokens.get(str(form.get("token", "")))
            if claims is None or claims["exp"] < time.time():
                return JSONResponse({"active": False})
            return JSONResponse({"active": True, "token_type": "Bearer", **claims})

        async def revoke(request: Request) -> Response:
            if client_of(request) is None:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            form = await request.form()
            tokens.pop(str(form.get("token", "")), None)
            return Response(status_code=200)

        self.app = Starlette(
            routes=[
                Route("/token", token, methods=["POST"]),
                Route("/introspect", introspect, methods=["POST"]),
                Route("/revoke", revoke, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="module")
def opaque_as() -> Iterator[Served]:
    served = Served(FakeOpaqueTokenServer().app).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[Any], Served]]:
    """Serve an ASGI app on a free loopback port for the module (stopped at its end)."""
    started: list[Served] = []

    def start(app: Any) -> Served:
        served = Served(app).start()
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
