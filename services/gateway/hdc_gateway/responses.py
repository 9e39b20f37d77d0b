"""The gateway's own answers: problem+json errors, JSON documents, Bearer challenges."""

from __future__ import annotations

import json
import re
from typing import Any

from hdc_common.errors import PROBLEM_JSON

from hdc_gateway.proxy import Send

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def _quoted(value: str) -> str:
    # RFC 6750 §3: error_description is limited to printable ASCII without " and \.
    return _UNSAFE.sub("'", value)[:300]


def bearer_challenge(
    realm: str, error: str | None = None, description: str | None = None, scope: str | None = None
) -> str:
    parts = [f'Bearer realm="{_quoted(realm)}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quoted(description)}"')
    if scope:
        parts.append(f'scope="{_quoted(scope)}"')
    return ", ".join(parts)


TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


async def send_json(
    send: Send,
    status: int,
    body: Any,
    *,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes = b"application/json",
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})


async def send_problem(
    send: Send,
    status: int,
    detail: str,
    *,
    headers: list[tuple[bytes, bytes]],
    **extensions: Any,
) -> None:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    body.update(extensions)
    await send_json(send, status, body, headers=headers, content_type=PROBLEM_JSON.encode())


async def send_empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
