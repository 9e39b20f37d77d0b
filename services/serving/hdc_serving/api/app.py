"""The ASGI app: DEEPaaS API v2 routes, OIP v2, docs, health, metrics and catalog.

Starlette directly rather than connexion: the routes are few and fixed, but the arguments
are each model's own, so validation runs through the model's marshmallow fields (exactly
what a DEEPaaS module declares) and the OpenAPI document is generated from the same fields.
The predict path does as little as possible on the event loop: parse, validate, hand off to
a worker, which returns the encoded answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from hdc_common.errors import Problem
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hdc_serving import catalog
from hdc_serving.api import oip, openapi
from hdc_serving.api.identity import RequireIdentity, verifier_from_pem
from hdc_serving.api.requests import Arguments, problem
from hdc_serving.args import ArgumentError, negotiate
from hdc_serving.jobs.manager import JobError
from hdc_serving.pool import PoolError
from hdc_serving.runtime import Runtime
from hdc_serving.settings import ServingSettings


def _version(root: str) -> dict[str, Any]:
    return {
        "version": "stable",
        "id": "v2",
        "links": [{"rel": "self", "type": "application/json", "href": f"{root}/v2/"}],
    }


def create_app(
    settings: ServingSettings, runtime: Runtime | None = None, pool: Any = None
) -> Starlette:
    rt = runtime or Runtime(settings, pool=pool)
    doc = openapi.build(
        rt.models, enable_train=settings.enable_train, enable_predict=settings.enable_predict
    )
    doc_bytes = json.dumps(doc).encode()

    def label(name: str) -> str:
        return name if name in rt.models else "unknown"

    def meta_doc(name: str, meta: Any, href: str) -> dict[str, Any]:
        m: dict[str, Any] = {"id": name, "name": name, "links": [{"rel": "self", "href": href}]}
        if isinstance(meta, dict):
            m.update(meta)
        else:
            m["description"] = f"the model '{name}' declares no metadata"
        return m

    async def guarded(request: Request, endpoint: str, fn: Any) -> Response:
        """Time, count and turn every failure into a problem answer; a model error stays one request's."""
        start = time.perf_counter()
        name = request.path_params.get("name", "")
        code = 500
        try:
            resp = await fn()
            code = resp.status_code
            return resp
        except Problem as exc:
            code = exc.status
            return problem(exc)
        except ArgumentError as exc:
            code = exc.status
            return problem(Problem(exc.status, "Invalid arguments", str(exc), errors=exc.errors))
        except (PoolError, JobError) as exc:
            code = exc.status
            title = {
                504: "Gateway Timeout",
                503: "Service Unavailable",
                429: "Too Many Requests",
            }.get(exc.status, "Model Error" if exc.status >= 500 else "Bad Request")
            return problem(Problem(exc.status, title, exc.message))
        finally:
            rt.metrics.observe(label(name), endpoint, code, time.perf_counter() - start)

    # -- versions and metadata --------------------------------------------------------

    async def versions(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return JSONResponse(
            {
                "versions": [_version(root)],
                "links": [
                    {"rel": "help", "type": "text/html", "href": f"{root}/api"},
                    {
                        "rel": "describedby",
                        "type": "application/json",
                        "href": f"{root}/openapi.json",
                    },
                ],
            }
        )

    async def v2(request: Request) -> Response:
        return JSONResponse(_version(request.scope.get("root_path", "")))

    async def models_index(request: Request) -> Response:
        async def run() -> Response:
            root = request.scope.get("root_path", "")
            names = sorted(rt.models)
            metas = await asyncio.gather(*(rt.metadata(n) for n in names))
            return JSONResponse(
                {
                    "models": [
                        meta_doc(n, m, f"{root}/v2/models/{n}")
                        for n, m in zip(names, metas, strict=True)
                    ]
                }
            )

        return await guarded(request, "models", run)

    async def model_get(request: Request) -> Response:
        async def run() -> Response:
            name = request.path_params["name"]
            rt.model(name)
            meta = await rt.metadata(name)
            return JSONResponse(meta_doc(name, meta, request.url.path.rstrip("/")))

        return await guarded(request, "metadata", run)

    # -- predict ----------------------------------------------------------------------

    async def predict(request: Request) -> Response:
        args = Arguments()
        name = request.path_params["name"]
        # Tell the pool a request is on its way, so it can wait for it to join a batch.
        expecting = name in rt.pool.batchable
        if expecting:
            rt.pool.expect(name)

        async def run() -> Response:
            nonlocal expecting
            info = rt.model(name)
            if not settings.enable_predict:
                raise Problem(
                    402, "Payment Required", "the predict endpoint is disabled on this server"
                )
            spec = info.predict
            accept = None
            if spec.accept:
                accept = negotiate(spec.accept, request.headers.get("accept"))
                if accept is None:
                    raise Problem(
                        406,
                        "Not Acceptable",
                        f"model '{name}' answers in {', '.join(spec.accept)}; "
                        f"the Accept header asks for {request.headers.get('accept')}",
                        argument="accept",
                    )
            raw = await args.read(
                request,
                spec,
                max_request=settings.max_request_bytes,
                max_upload=settings.max_upload_bytes,
                uploads_dir=rt.uploads_dir,
            )
            if accept is not None:
                raw["accept"] = accept
            kwargs = spec.load(raw)
            submitted, expecting = expecting, False
            reply = await rt.pool.submit(
                "predict",
                name,
                (kwargs, accept),
                timeout=settings.predict_timeout_s,
                expected=submitted,
            )
            _, body, media = reply
            return Response(body, media_type=media)

        try:
            return await guarded(request, "predict", run)
        finally:
            if expecting:
                rt.pool.unexpect(name)
            args.close()

    # -- training ---------------------------------------------------------------------

    def train_enabled(name: str) -> None:
        info = rt.model(name)
        if not settings.enable_train:
            raise Problem(402, "Payment Required", "the train endpoint is disabled on this server")
        if not info.has_train:
            raise Problem(501, "Not Implemented", f"model '{name}' does not implement train()")

    async def train_start(request: Request) -> Response:
        args = Arguments()

        async def run() -> Response:
            name = request.path_params["name"]
            train_enabled(name)
            spec = rt.models[name].train
            raw = await args.read(
                request,
                spec,
                max_request=settings.max_request_bytes,
                max_upload=settings.max_upload_bytes,
                uploads_dir=rt.uploads_dir,
            )
            kwargs = spec.load(raw)
            return JSONResponse(rt.jobs.start(name, kwargs))

        try:
            return await guarded(request, "train", run)
        finally:
            args.close()

    async def train_list(request: Request) -> Response:
        async def run() -> Response:
            name = request.path_params["name"]
            train_enabled(name)
            return JSONResponse(await asyncio.to_thread(rt.jobs.list, name))

        return await guarded(request, "train_list", run)

    async def train_get(request: Request) -> Response:
        async def run() -> Response:
            name = request.path_params["name"]
            train_enabled(name)
            return JSONResponse(
                await asyncio.to_thread(rt.jobs.get, name, request.path_params["uuid"])
            )

        return await guarded(request, "train_get", run)

    async def train_delete(request: Request) -> Response:
        async def run() -> Response:
            name = request.path_params["name"]
            train_enabled(name)
            return JSONResponse(await rt.jobs.delete(name, request.path_params["uuid"]))

        return await guarded(request, "train_delete", run)

    # -- docs, health, metrics, catalog -------------------------------------------------

    async def openapi_json(_: Request) -> Response:
        return Response(doc_bytes, media_type="application/json")

    async def swagger(request: Request) -> Response:
        return HTMLResponse(openapi.SWAGGER_HTML.format(root=request.scope.get("root_path", "")))

    async def to_swagger(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/api")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "serving"})

    async def readyz(_: Request) -> Response:
        reasons = rt.readiness()
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "service": "serving",
                "models": sorted(rt.models),
                "workers": rt.pool.ready_workers,
            }
        )

    async def metrics(_: Request) -> Response:
        data = await asyncio.to_thread(generate_latest, rt.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def catalog_index(_: Request) -> Response:
        entries = [m.catalog for _, m in sorted(rt.models.items()) if m.catalog is not None]
        return JSONResponse({"models": entries})

    async def catalog_schema(_: Request) -> Response:
        return JSONResponse(catalog.schema())

    async def catalog_entry(request: Request) -> Response:
        async def run() -> Response:
            name = request.path_params["name"]
            info = rt.model(name)
            if info.catalog is None:
                raise Problem(404, "Not Found", f"model '{name}' ships no catalog entry")
            return JSONResponse(info.catalog)

        return await guarded(request, "catalog", run)

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(
            Problem(404, "Not Found", f"no such resource: {request.method} {request.url.path}")
        )

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return problem(
            Problem(
                405, "Method Not Allowed", f"{request.method} is not allowed on {request.url.path}"
            )
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        return problem(Problem(500, "Internal Server Error", f"{type(exc).__name__}: {exc}"))

    # The predict routes come first: the router tries routes in order, and they are the hot path.
    routes: list[Any] = [
        Route("/v2/models/{name}/predict/", predict, methods=["POST"]),
        Route("/v2/models/{name}/predict", predict, methods=["POST"]),
        Route("/", versions, methods=["GET"]),
        Route("/v2", v2, methods=["GET"]),
        Route("/v2/", v2, methods=["GET"]),
        Route("/v2/models", models_index, methods=["GET"]),
        Route("/v2/models/", models_index, methods=["GET"]),
    ]
    for suffix in ("", "/"):
        routes += [
            Route(f"/v2/models/{{name}}{suffix}", model_get, methods=["GET"]),
            Route(f"/v2/models/{{name}}/train{suffix}", train_start, methods=["POST"]),
            Route(f"/v2/models/{{name}}/train{suffix}", train_list, methods=["GET"]),
            Route(f"/v2/models/{{name}}/train/{{uuid}}{suffix}", train_get, methods=["GET"]),
            Route(f"/v2/models/{{name}}/train/{{uuid}}{suffix}", train_delete, methods=["DELETE"]),
            Route(f"/v2/models/{{name}}/catalog{suffix}", catalog_entry, methods=["GET"]),
        ]
    routes += oip.routes(rt)
    routes += [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/swagger.json", openapi_json, methods=["GET"]),
        Route("/api", swagger, methods=["GET"]),
        Route("/api/", swagger, methods=["GET"]),
        Route("/ui", to_swagger, methods=["GET"]),
        Route("/ui/", to_swagger, methods=["GET"]),
        Mount("/api/static", StaticFiles(directory=_swagger_dir()), name="swagger-static"),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/catalog", catalog_index, methods=["GET"]),
        Route("/catalog/schema.json", catalog_schema, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed, 500: server_error},
    )
    app.state.runtime = rt
    if settings.identity_public_key:
        app.add_middleware(RequireIdentity, verifier=verifier_from_pem(settings.identity_key_pem()))
    return app


def _swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)
