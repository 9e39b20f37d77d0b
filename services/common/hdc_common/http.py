"""Spec-first HTTP: a connexion app from a service's OpenAPI document, with hdc's house rules.

Every app gets problem+json errors (RFC 9457), `/healthz` (alive), `/readyz` (dependencies
answer), `/metrics` (Prometheus), `/openapi.json` and a Swagger UI at `/ui/`. Handlers read
the caller with `caller()`, which trusts only the gateway-signed identity header.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import connexion
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.options import SwaggerUIOptions
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hdc_common.errors import PROBLEM_JSON, Problem
from hdc_common.identity import Identity, InternalTokenVerifier, identity_from_headers

log = logging.getLogger(__name__)

REQUESTS = Counter("hdc_http_requests_total", "HTTP requests", ["service", "status"])
LATENCY = Histogram("hdc_http_request_seconds", "HTTP request latency", ["service"])

ReadinessCheck = Callable[[], None]  # raises when the dependency is not ready


def problem_response(problem: Problem) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=problem.status,
        mimetype=PROBLEM_JSON,
        content_type=PROBLEM_JSON,
        body=json.dumps(problem.to_dict()),
        headers=problem.headers,
    )


def _on_problem(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc)


def create_openapi_app(
    spec: str | Path,
    *,
    service: str,
    resolver: Any = None,
    base_path: str | None = None,
    readiness: Iterable[ReadinessCheck] = (),
    arguments: dict[str, Any] | None = None,
    strict_validation: bool = True,
    error_handlers: dict[type[Exception] | int, Callable[..., Any]] | None = None,
) -> connexion.AsyncApp:
    spec = Path(spec)
    app = connexion.AsyncApp(
        service,
        specification_dir=spec.parent,
        swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/ui"),
    )
    app.add_api(
        spec.name,
        resolver=resolver,
        base_path=base_path,
        arguments=arguments or {},
        strict_validation=strict_validation,
        pythonic_params=True,
        validate_responses=False,
    )
    add_health_routes(app, service, list(readiness))
    app.add_error_handler(Problem, _on_problem)
    for key, handler in (error_handlers or {}).items():
        app.add_error_handler(key, handler)
    app.add_middleware(_MetricsMiddleware, service=service)
    return app


def add_health_routes(app: Any, service: str, readiness: list[ReadinessCheck]) -> None:
    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": service})

    async def readyz(_request: Request) -> Response:
        failures = []
        for check in readiness:
            try:
                check()
            except Exception as exc:
                failures.append(f"{getattr(check, '__name__', 'check')}: {exc}")
        if failures:
            return JSONResponse({"status": "not ready", "reasons": failures}, status_code=503)
        return JSONResponse({"status": "ready", "service": service})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


class _MetricsMiddleware:
    def __init__(self, app: Any, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            LATENCY.labels(self.service).observe(time.perf_counter() - start)
            REQUESTS.labels(self.service, str(status["code"])).inc()


def caller(verifier: InternalTokenVerifier) -> Identity:
    """The identity of the current connexion request, verified; Problem(401) otherwise."""
    from connexion import request

    return identity_from_headers(request.headers, verifier)
