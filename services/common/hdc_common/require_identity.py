"""Services answer only the gateway's callers: every API operation needs a gateway-signed identity.

REST: the `X-HDC-Identity` header, checked by an ASGI middleware placed after connexion's
routing and before its request validation, so a caller that skips the gateway learns nothing
about the API (it gets 401, never a 400 about its body). `/healthz`, `/readyz`, `/metrics`,
`/openapi.json` and `/ui/` are not OpenAPI operations and stay open for probes and docs.
gRPC: the `x-hdc-identity` call metadata, which hdc_common's server interceptor puts in
`caller_identity_token`. Both go through `hdc_common.identity.identity_from_headers`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import grpc
from connexion.middleware import MiddlewarePosition
from connexion.middleware.abstract import ROUTING_CONTEXT
from starlette.datastructures import Headers

from hdc_common.errors import PROBLEM_JSON, Problem
from hdc_common.grpc import caller_identity_token
from hdc_common.identity import HEADER, Identity, InternalTokenVerifier, identity_from_headers


def require_identity(
    app: Any, verifier: InternalTokenVerifier, open_operations: Collection[str] = ()
) -> None:
    """Make a connexion app refuse every operation called without a gateway-signed identity.

    open_operations: operationIds anyone may call (a version string clients ask for unsigned).
    """
    app.add_middleware(
        IdentityMiddleware,
        position=MiddlewarePosition.BEFORE_VALIDATION,
        verifier=verifier,
        open_operations=frozenset(open_operations),
    )


def grpc_caller(verifier: InternalTokenVerifier, context: grpc.ServicerContext) -> Identity:
    """The verified caller of the gRPC call being served; aborts UNAUTHENTICATED otherwise."""
    token = caller_identity_token.get()
    try:
        return identity_from_headers({HEADER: token} if token else {}, verifier)
    except Problem as exc:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.detail or exc.title)
        raise  # abort raises; this keeps type checkers sure nothing is returned


class IdentityMiddleware:
    """ASGI middleware (connexion position BEFORE_VALIDATION) refusing unsigned calls."""

    def __init__(
        self,
        app: Any,
        verifier: InternalTokenVerifier,
        open_operations: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.open_operations = open_operations

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        routing = scope.get("extensions", {}).get(ROUTING_CONTEXT, {})
        operation = routing.get("operation_id")
        if scope["type"] == "http" and operation and operation not in self.open_operations:
            try:
                identity_from_headers(Headers(scope=scope), self.verifier)
            except Problem as exc:
                await _send_problem(send, exc)
                return
        await self.app(scope, receive, send)


async def _send_problem(send: Any, problem: Problem) -> None:
    body = json.dumps(problem.to_dict()).encode()
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in (problem.headers or {}).items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
