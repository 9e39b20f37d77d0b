"""FAKE OpenID Provider for tests: a real HTTP server on loopback issuing real signed JWTs.

It speaks the parts of OIDC a site agent and the registry use, the way Keycloak does:
discovery (`/.well-known/openid-configuration`), a JWKS endpoint, and the token endpoint with
the `client_credentials` grant (client id/secret in the form or HTTP Basic). Access tokens
are RS256 JWTs carrying `iss`, `sub`, `azp`, `client_id`, `iat`, `exp`, `jti`, `scope`.
`rotate_key()` replaces the signing key (the old one stays published, as Keycloak does
during a rotation) so tests can exercise JWKS refresh. It is a fake: one realm, no users.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class FakeOIDCProvider:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, token_ttl_s: int = 300) -> None:
        self.clients: dict[str, str] = {}
        self.token_ttl_s = token_ttl_s
        self.token_requests = 0
        self._keys: list[tuple[str, Any]] = []
        self.rotate_key()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.issuer = f"http://{host}:{self.port}/realms/hdc"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeOIDCProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOIDCProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --------------------------------------------------------------

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def add_client(self, client_id: str, secret: str) -> None:
        self.clients[client_id] = secret

    def rotate_key(self) -> str:
        kid = uuid.uuid4().hex[:16]
        self._keys.insert(0, (kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self._keys:
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append(jwk | {"kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def issue_token(self, client_id: str, /, **overrides: Any) -> str:
        """A token as the token endpoint would issue it (overrides let tests forge claims;
        an override of None removes that claim)."""
        kid, key = self._keys[0]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer}/{client_id}")),
            "azp": client_id,
            "client_id": client_id,
            "typ": "Bearer",
            "scope": "profile email",
            "iat": now,
            "exp": now + self.token_ttl_s,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    # -- HTTP -----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        op = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/realms/hdc/.well-known/openid-configuration":
                    self._json(
                        200,
                        {
                            "issuer": op.issuer,
                            "token_endpoint": op.token_endpoint,
                            "jwks_uri": op.jwks_uri,
                            "grant_types_supported": ["client_credentials"],
                            "token_endpoint_auth_methods_supported": [
                                "client_secret_basic",
                                "client_secret_post",
                            ],
                            "id_token_signing_alg_values_supported": ["RS256"],
                        },
                    )
                elif path == "/realms/hdc/protocol/openid-connect/certs":
                    self._json(200, op.jwks())
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if self.path.split("?")[0] != "/realms/hdc/protocol/openid-connect/token":
                    self._json(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                client_id, secret = form.get("client_id"), form.get("client_secret")
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    try:
                        client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                    except ValueError:
                        self._json(401, {"error": "invalid_client"})
                        return
                if form.get("grant_type") != "client_credentials":
                    self._json(400, {"error": "unsupported_grant_type"})
                    return
                if not client_id or op.clients.get(client_id) != secret:
                    self._json(
                        401,
                        {
                            "error": "invalid_client",
                            "error_description": "Invalid client credentials",
                        },
                    )
                    return
                op.token_requests += 1
                self._json(
                    200,
                    {
                        "access_token": op.issue_token(client_id),
                        "expires_in": op.token_ttl_s,
                        "token_type": "Bearer",
                        "scope": "profile email",
                    },
                )

        return Handler
