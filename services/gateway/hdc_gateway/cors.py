"""CORS for the dashboard and other browser clients: preflights and response headers."""

from __future__ import annotations

from hdc_gateway.proxy import Send
from hdc_gateway.responses import send_empty, send_problem
from hdc_gateway.settings import CorsSettings


class Cors:
    def __init__(self, settings: CorsSettings, security_headers: list[tuple[bytes, bytes]]) -> None:
        self._s = settings
        self._origins = frozenset(settings.allow_origins)
        self._security = security_headers

    def allowed(self, origin: str) -> bool:
        # "*" never goes with credentials (the settings refuse that combination anyway).
        return origin in self._origins or ("*" in self._origins and not self._s.allow_credentials)

    def headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """What an answer to a request from `origin` carries (nothing for other origins)."""
        if origin is None or not self._origins or not self.allowed(origin.decode("latin-1")):
            return []
        headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if self._s.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if self._s.expose_headers:
            headers.append(
                (b"access-control-expose-headers", ", ".join(self._s.expose_headers).encode())
            )
        return headers

    async def preflight(self, send: Send, origin: bytes) -> int:
        """Answer an OPTIONS preflight without authentication; returns the status sent."""
        if not self.allowed(origin.decode("latin-1")):
            await send_problem(
                send,
                403,
                "origin is not allowed by the gateway's CORS policy",
                headers=list(self._security),
            )
            return 403
        headers = [
            *self._security,
            *self.headers(origin),
            (b"access-control-allow-methods", ", ".join(self._s.allow_methods).encode()),
            (b"access-control-allow-headers", ", ".join(self._s.allow_headers).encode()),
            (b"access-control-max-age", str(self._s.max_age_s).encode()),
        ]
        await send_empty(send, 204, headers)
        return 204
