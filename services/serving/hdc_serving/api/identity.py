"""Refusing callers that skipped the gateway: the model API wants a gateway-signed identity.

When the server is given the gateway's identity public key (`identity_public_key`, flag
`--identity-public-key`), every `/v2/...` and `/oip/...` request must carry a valid
`X-HDC-Identity`; a request straight to the model's port without one gets 401. Health,
readiness, metrics, the API documents and the catalog stay open: probes and the platform
read them without a user behind.
"""

from __future__ import annotations

from typing import Any

from hdc_common.errors import ConfigError, Problem
from hdc_common.identity import InternalTokenVerifier, identity_from_headers

from hdc_serving.api.requests import problem

# OIP health probes are the protocol's liveness/readiness endpoints: open like /healthz.
_OPEN_OIP = "/oip/v2/health/"


def guarded(path: str) -> bool:
    if path == "/v2" or path.startswith("/v2/"):
        return True
    return (path == "/oip" or path.startswith("/oip/")) and not path.startswith(_OPEN_OIP)


def verifier_from_pem(pem: str) -> InternalTokenVerifier:
    try:
        return InternalTokenVerifier(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity_public_key: not a usable public key ({exc})") from None


class RequireIdentity:
    """ASGI middleware: 401 for a model API request without a verified identity."""

    def __init__(self, app: Any, verifier: InternalTokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and guarded(scope["path"]):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                identity = identity_from_headers(headers, self.verifier)
            except Problem as exc:
                exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="hdc"')
                await problem(exc)(scope, receive, send)
                return
            scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)
