"""The ASGI app: connexion from openapi.yaml, plus INDIGO-shaped errors and per-app state."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hdc_common.http import create_openapi_app

from hdc_orchestrator.api import AppState, current_state
from hdc_orchestrator.loop_reads import ClosesLoopReads
from hdc_orchestrator.pools import WriteAdmission

SPEC = Path(__file__).with_name("openapi.yaml")
# Paths served by hdc_common.http itself keep problem+json.
_OWN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/ui")


class IndigoErrors:
    """Rewrite problem+json answers (ours and connexion's validation errors) as INDIGO's
    `{"code", "title", "message"}`, which orchent and the INDIGO dashboards parse."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(_OWN_PATHS):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                ctype = headers.get(b"content-type", b"")
                if ctype.startswith(b"application/problem+json"):
                    held["start"], held["body"] = message, b""
                    return
                await send(message)
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    await _send_indigo(send, held["start"], held["body"])
            else:
                await send(message)

        await self.app(scope, receive, wrapped)


async def _send_indigo(send: Any, start: dict, body: bytes) -> None:
    try:
        problem = json.loads(body or b"{}")
    except ValueError:
        problem = {}
    status = int(problem.get("status") or start["status"])
    # connexion appends the whole JSON-schema dump after a blank line: keep the sentence.
    message = str(problem.get("detail") or problem.get("title") or "").split("\n\n")[0].strip()
    out = json.dumps(
        {"code": status, "title": problem.get("title") or "Error", "message": message}
    ).encode()
    headers = [
        (k, v)
        for k, v in start.get("headers") or []
        if k.lower() not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": start["status"], "headers": headers})
    await send({"type": "http.response.body", "body": out})


class WithState:
    """Makes this app's state visible to its handlers (a context variable per request)."""

    def __init__(self, app: Any, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        token = current_state.set(self.state)
        try:
            await self.app(scope, receive, send)
        finally:
            current_state.reset(token)


class ServerTiming:
    """Adds `Server-Timing: app;dur=<ms>` (W3C Server-Timing): the time from the request's
    arrival to its response, so a client can tell server time from network and its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers") or [])
                headers.append((b"server-timing", f"app;dur={ms:.2f}".encode()))
                message = message | {"headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def create_app(state: AppState, readiness: list[Any] | None = None) -> Any:
    app = create_openapi_app(SPEC, service="orchestrator", readiness=readiness or [])
    app = ServerTiming(WriteAdmission(WithState(IndigoErrors(app), state)))
    return app if state.loop_reads is None else ClosesLoopReads(app, state.loop_reads)
