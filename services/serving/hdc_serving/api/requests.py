"""Reading a request's arguments within the size limits, and answering with problems."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hdc_common.errors import PROBLEM_JSON, Problem
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from hdc_serving.args import ArgSpec
from hdc_serving.uploads import UploadedFile

BODY_TIMEOUT_S = 60
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def problem(exc: Problem) -> Response:
    return Response(
        json.dumps(exc.to_dict()).encode(),
        status_code=exc.status,
        media_type=PROBLEM_JSON,
        headers=exc.headers,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before reading them all."""
    if hasattr(request, "_body"):
        return request._body
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Problem(400, "Bad Request", "Content-Length is not a number") from None
        if size > limit:
            raise Problem(
                413,
                "Content Too Large",
                f"the request body is {size} bytes, over the {limit} byte limit",
            )
    chunks, total = [], 0
    # A client that stalls mid-body must not hold a connection and its buffers forever. A
    # bare timer (not asyncio.timeout) keeps this cheap on the hot path.
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if task is not None:
            task.cancel()

    timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT_S, expire)
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise Problem(
                    413, "Content Too Large", f"the request body is over the {limit} byte limit"
                )
            chunks.append(chunk)
    except asyncio.CancelledError:
        if not expired:
            raise
        raise Problem(
            408, "Request Timeout", f"the request body did not arrive within {BODY_TIMEOUT_S} s"
        ) from None
    finally:
        timer.cancel()
    body = b"".join(chunks)
    request._body = body  # Starlette's form parser reads the cached body
    return body


class Arguments:
    """Raw argument values of one request; temporary upload copies are removed by `close`."""

    def __init__(self) -> None:
        self.temp_files: list[str] = []

    def close(self) -> None:
        for path in self.temp_files:
            # A file moved away (into a training job's directory) is no longer ours to remove.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def read(
        self,
        request: Request,
        spec: ArgSpec,
        *,
        max_request: int,
        max_upload: int,
        uploads_dir: Path,
    ) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body: dict[str, Any] | None = None
        form = None
        if media == "application/json":
            data = await read_body(request, max_request)
            if data.strip():
                try:
                    body = json.loads(data)
                except ValueError as exc:
                    raise Problem(
                        400, "Bad Request", f"the body is not valid JSON: {exc}"
                    ) from None
                if not isinstance(body, dict):
                    raise Problem(
                        400,
                        "Bad Request",
                        "the JSON body must be an object mapping argument names to values",
                    )
        elif media in FORM_TYPES:
            data = await read_body(request, max_request)
            if media == "multipart/form-data":
                _check_multipart(request.headers.get("content-type", ""), data)
            try:
                form = await request.form(max_files=100, max_fields=1000, max_part_size=max_upload)
            except Exception as exc:
                detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
                raise Problem(400, "Bad Request", f"malformed {media} body: {detail}") from None
            for key, value in form.multi_items():
                if (
                    isinstance(value, UploadFile)
                    and value.size is not None
                    and value.size > max_upload
                ):
                    raise Problem(
                        413,
                        "Content Too Large",
                        f"file argument '{key}' is {value.size} bytes, over the {max_upload} byte limit",
                        argument=key,
                    )
        else:
            data = await read_body(request, max_request)
            if data.strip():
                raise Problem(
                    415,
                    "Unsupported Media Type",
                    f"cannot read a {media or 'untyped'} body; send application/json, "
                    "multipart/form-data or application/x-www-form-urlencoded",
                )
        raw = spec.collect(request.query_params, form, body, request.headers)
        for name in spec.file_args:
            value = raw.get(name)
            if isinstance(value, UploadFile):
                raw[name] = await self._keep(name, value, uploads_dir)
        return raw

    async def _keep(self, name: str, upload: UploadFile, uploads_dir: Path) -> UploadedFile:
        fd, path = tempfile.mkstemp(dir=uploads_dir, prefix="upload-")
        self.temp_files.append(path)

        def copy() -> None:
            upload.file.seek(0)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(upload.file, out)

        await asyncio.to_thread(copy)
        return UploadedFile(
            name=name,
            filename=path,
            content_type=upload.content_type,
            original_filename=upload.filename,
        )


def _check_multipart(content_type: str, data: bytes) -> None:
    """python-multipart quietly drops a part cut short; a truncated upload must be an error."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise Problem(
            400,
            "Bad Request",
            "malformed multipart/form-data body: the Content-Type has no boundary",
        )
    if b"--" + boundary.encode("latin-1") + b"--" not in data:
        raise Problem(
            400,
            "Bad Request",
            "malformed multipart/form-data body: the closing boundary is missing (truncated upload?)",
        )
