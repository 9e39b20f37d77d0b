"""Open Inference Protocol v2 (KServe / MLServer / Triton REST), mounted at `/oip/v2`.

DEEPaaS owns `/v2/models/{name}/`, so the protocol's `/v2/...` paths live under `/oip`:
`/oip/v2/health/live`, `/oip/v2/health/ready`, `/oip/v2`, `/oip/v2/models/{name}[/versions/{v}]`,
`.../ready` and `.../infer`. A model speaks tensors when its module has `oip_metadata()`
and `infer(dict of numpy arrays) -> dict of numpy arrays`. Errors use the protocol's
`{"error": "..."}` body.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hdc_serving import __version__
from hdc_serving.api.requests import read_body
from hdc_serving.pool import PoolError
from hdc_serving.runtime import Runtime

DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
NP_TO_OIP = {np.dtype(v).name: k for k, v in DTYPES.items() if k != "BYTES"}


class OipError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _err(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _shape_fits(declared: list[int], shape: list[int]) -> bool:
    return len(declared) == len(shape) and all(
        d in (-1, s) for d, s in zip(declared, shape, strict=True)
    )


def decode_inputs(body: Any, declared: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise OipError(400, "the request must be an object with a non-empty 'inputs' list")
    wanted = {d["name"]: d for d in declared}
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(body["inputs"]):
        if not isinstance(tensor, dict):
            raise OipError(400, f"inputs[{i}] must be an object")
        name = tensor.get("name")
        if name not in wanted:
            raise OipError(
                400, f"inputs[{i}]: unknown input '{name}' (expected: {', '.join(wanted)})"
            )
        datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
        if datatype not in DTYPES:
            raise OipError(400, f"input '{name}': unknown datatype {datatype!r}")
        if datatype != wanted[name]["datatype"]:
            raise OipError(
                400,
                f"input '{name}': datatype {datatype} given, {wanted[name]['datatype']} expected",
            )
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise OipError(400, f"input '{name}': 'shape' must be a list of non-negative integers")
        if not _shape_fits(wanted[name]["shape"], shape):
            raise OipError(
                400, f"input '{name}': shape {shape} does not fit {wanted[name]['shape']}"
            )
        if not isinstance(data, list):
            raise OipError(400, f"input '{name}': 'data' must be a list")
        try:
            arr = np.asarray(data, dtype=DTYPES[datatype]).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise OipError(400, f"input '{name}': data is not {datatype}: {exc}") from None
        if arr.size != math.prod(shape):
            raise OipError(400, f"input '{name}': {arr.size} values do not fill shape {shape}")
        out[name] = arr.reshape(shape)
    missing = set(wanted) - set(out)
    if missing:
        raise OipError(400, f"missing input(s): {', '.join(sorted(missing))}")
    return out


def encode_outputs(outputs: dict[str, Any], requested: list[str] | None) -> list[dict[str, Any]]:
    out = []
    for name, value in outputs.items():
        if requested and name not in requested:
            continue
        arr = np.asarray(value)
        datatype = NP_TO_OIP.get(arr.dtype.name, "BYTES")
        data = (
            arr.reshape(-1).tolist() if datatype != "BYTES" else [str(v) for v in arr.reshape(-1)]
        )
        out.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data})
    return out


def routes(rt: Runtime) -> list[Route]:
    def tensor_model(name: str) -> dict[str, Any]:
        info = rt.models.get(name)
        if info is None:
            raise OipError(404, f"unknown model '{name}'")
        if info.tensor is None:
            raise OipError(
                404,
                f"model '{name}' has no tensor interface (no oip_metadata/infer); use /v2/models/{name}/predict/",
            )
        return info.tensor

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        ok = not rt.readiness()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(_: Request) -> Response:
        return JSONResponse({"name": "hdc-serving", "version": __version__, "extensions": []})

    async def model_meta(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            meta = tensor_model(name)
        except OipError as exc:
            return _err(exc.status, exc.message)
        return JSONResponse(
            {
                "name": name,
                "versions": ["1"],
                "platform": meta.get("platform", "python"),
                "inputs": meta.get("inputs", []),
                "outputs": meta.get("outputs", []),
            }
        )

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            tensor_model(name)
        except OipError as exc:
            return _err(exc.status, exc.message)
        ok = rt.pool.ready_workers > 0 and name not in rt.pool.warm_errors
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        start = time.perf_counter()
        name = request.path_params["name"]
        code = 200
        try:
            meta = tensor_model(name)
            data = await read_body(request, rt.settings.max_request_bytes)
            try:
                body = json.loads(data)
            except ValueError as exc:
                raise OipError(400, f"the body is not valid JSON: {exc}") from None
            inputs = decode_inputs(body, meta.get("inputs", []))
            requested = [o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)]
            reply = await rt.pool.submit(
                "infer", name, inputs, timeout=rt.settings.predict_timeout_s
            )
            outputs = reply[1]
            if not isinstance(outputs, dict):
                raise OipError(
                    500,
                    f"model '{name}' infer() returned {type(outputs).__name__}, not a dict of arrays",
                )
            doc = {
                "model_name": name,
                "model_version": "1",
                "id": str(body.get("id") or uuid.uuid4()),
                "outputs": encode_outputs(outputs, requested),
            }
            return JSONResponse(doc)
        except OipError as exc:
            code = exc.status
            return _err(exc.status, exc.message)
        except PoolError as exc:
            code = exc.status
            return _err(exc.status, exc.message)
        except Exception as exc:  # a Problem from the size limit, for instance
            code = getattr(exc, "status", 500)
            return _err(code, getattr(exc, "detail", None) or str(exc))
        finally:
            label = name if name in rt.models else "unknown"  # no label per made-up name
            rt.metrics.observe(label, "oip_infer", code, time.perf_counter() - start)

    return [
        Route("/oip/v2", server_meta, methods=["GET"]),
        Route("/oip/v2/health/live", live, methods=["GET"]),
        Route("/oip/v2/health/ready", ready, methods=["GET"]),
        Route("/oip/v2/models/{name}", model_meta, methods=["GET"]),
        Route("/oip/v2/models/{name}/versions/{version}", model_meta, methods=["GET"]),
        Route("/oip/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/oip/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/oip/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/oip/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ]
