"""The predict worker process: loads the models once, then answers requests from a pipe.

Everything CPU-bound happens here, off the server's event loop: the model call, checking
the answer against the model's response schema, and encoding it as JSON. Messages in:
`(op, model, payload)`; out: `("ready", pid, warm_errors)` once, then `(cpu_seconds, reply)`
per request. An exception in a model becomes an error reply for that request only.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import os
import signal
import time
import traceback
from typing import Any

JSON_TYPES = ("application/json", "*/*")


def main(conn: Any, names: list[str], env: dict[str, str]) -> None:
    os.environ.update(env)
    # A pool of processes each running a many-threaded BLAS on a few cores only fights itself.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # Ctrl-C goes to the whole process group; the server decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from hdc_serving.loading import load_object, response_schema

    models: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in names:
        try:
            obj = load_object(name)
            models[name] = obj
            schemas[name] = response_schema(obj)
            warm = getattr(obj, "warm", None)
            if warm is not None:
                # DEEPaaS treats NotImplementedError from warm() as "nothing to warm".
                with contextlib.suppress(NotImplementedError):
                    warm()
        except Exception as exc:
            # A model that could not load or warm answers 503 (and /readyz says why) rather
            # than half-work on whatever state the failure left.
            models.pop(name, None)
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    conn.send(("ready", os.getpid(), errors))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        op, name, payload = msg
        started = time.process_time()
        try:
            if name not in models:
                raise ModelUnavailable(
                    f"model '{name}' failed to load: {errors.get(name, 'unknown')}"
                )
            reply = handle(models[name], schemas[name], op, payload)
        except Exception as exc:
            reply = error_reply(exc)
        # CPU seconds, not wall time: the pool's batching decisions must not depend on how
        # busy the machine is with other processes.
        cpu = time.process_time() - started
        try:
            conn.send((cpu, reply))
        except Exception as exc:  # an answer that cannot be pickled is still an answer
            conn.send((cpu, error_reply(exc)))


class ModelUnavailable(Exception):
    status_code = 503


def handle(obj: Any, schema: Any, op: str, payload: Any) -> Any:
    if op == "predict":
        kwargs, accept = payload
        return render(obj.predict(**kwargs), accept, schema)
    if op == "batch":
        items = payload
        try:
            results = obj.predict_batch([kw for kw, _ in items])
            if len(results) != len(items):
                raise RuntimeError(
                    f"predict_batch returned {len(results)} answers for {len(items)} requests"
                )
        except Exception:
            # One bad request must not fail its neighbours: answer each one on its own.
            return [_one(obj, schema, kw, accept) for kw, accept in items]
        return [
            _safe_render(r, accept, schema) for r, (_, accept) in zip(results, items, strict=True)
        ]
    if op == "metadata":
        fn = getattr(obj, "get_metadata", None)
        try:
            meta = fn() if fn is not None else None
        except NotImplementedError:
            meta = None
        return ("ok", meta)
    if op == "infer":
        return ("ok", obj.infer(payload))
    raise ValueError(f"unknown operation {op}")


def _one(obj: Any, schema: Any, kwargs: dict, accept: str | None) -> Any:
    try:
        return render(obj.predict(**kwargs), accept, schema)
    except Exception as exc:
        return error_reply(exc)


def _safe_render(ret: Any, accept: str | None, schema: Any) -> Any:
    try:
        return render(ret, accept, schema)
    except Exception as exc:
        return error_reply(exc)


def render(ret: Any, accept: str | None, schema: Any) -> tuple:
    """("body", bytes, media_type) ready to send, or ("error", status, message)."""
    if isinstance(ret, io.IOBase):
        with ret:
            ret = ret.read()
    elif type(ret).__name__ == "ReturnedFile" and getattr(ret, "filename", None):
        with open(ret.filename, "rb") as fh:
            ret = fh.read()
    if accept and accept not in JSON_TYPES:
        if isinstance(ret, str):
            return ("body", ret.encode(), accept)
        if isinstance(ret, bytes | bytearray | memoryview):
            return ("body", bytes(ret), accept)
        return ("body", dumps(ret), accept)
    if schema is not None:
        import marshmallow

        try:
            schema().load(ret)
        except marshmallow.ValidationError as exc:
            return (
                "error",
                500,
                f"the model's answer does not match its declared schema: {exc.messages}",
            )
        return ("body", dumps(ret), "application/json")
    return ("body", dumps({"status": "OK", "predictions": ret}), "application/json")


def error_reply(exc: BaseException) -> tuple:
    status = _status_of(exc)
    text = getattr(exc, "text", None) or getattr(exc, "reason", None) or str(exc)
    if status >= 500 and not isinstance(exc, ModelUnavailable):
        traceback.print_exception(exc)
        text = f"the model raised {type(exc).__name__}: {text}"
    return ("error", status, str(text))


def _status_of(exc: BaseException) -> int:
    # DEEP modules signal bad input with aiohttp's HTTPBadRequest & co.; honour any 4xx.
    if isinstance(exc, ModelUnavailable):
        return 503
    for attr in ("status_code", "status", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 400 <= value < 500:
            return value
    if isinstance(exc, NotImplementedError):
        return 501
    return 500


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(obj).decode()
    if isinstance(obj, dt.date | dt.datetime | dt.time):
        return obj.isoformat()
    if isinstance(obj, set | tuple):
        return list(obj)
    return str(obj)


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default, separators=(",", ":")).encode()
