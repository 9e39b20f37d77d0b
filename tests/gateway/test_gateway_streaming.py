"""Bodies through the proxy: Server-Sent Events live, a 50 MB upload intact, size limits."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.keycloak

UPLOAD_BYTES = 50 * 1024 * 1024


def _payload(total: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """Deterministic, non-repeating bytes (so a reordered or dropped chunk changes the hash)."""
    block = 0
    sent = 0
    while sent < total:
        seed = hashlib.sha256(block.to_bytes(8, "big")).digest()
        piece = (seed * (chunk // len(seed) + 1))[: min(chunk, total - sent)]
        yield piece
        sent += len(piece)
        block += 1


def _digest(total: int) -> str:
    h = hashlib.sha256()
    for piece in _payload(total):
        h.update(piece)
    return h.hexdigest()


@pytest.fixture(params=["fast-upstream", "aiohttp-upstream"])
def streaming_gateway(request: Any, keycloak: Any, start_gateway: Any) -> Any:
    """Both upstream clients: the lean one (bodyless GETs) and aiohttp (everything else)."""
    return start_gateway(
        embedded_op=False,
        fast_upstream=request.param == "fast-upstream",
        issuers=[{"issuer": f"{keycloak.url}/realms/hdc"}],
    )


@pytest.fixture
def auth(keycloak: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {keycloak.token('alice')}"}


def test_sse_passes_through_live(streaming_gateway: Any, auth: dict[str, str]) -> None:
    key = uuid.uuid4().hex
    with (
        httpx.Client(base_url=streaming_gateway.url, headers=auth, timeout=15) as client,
        client.stream("GET", "/svc/events", params={"key": key}) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        first = [next(lines) for _ in range(4)]
        # Event 0 arrived while the backend is still holding the stream open: the
        # gateway did not buffer. Now let the backend finish.
        assert first == ["id: 0", "event: tick", "data: first", ""]
        assert client.post(f"/svc/release/{key}").status_code == 200
        rest = list(lines)
    data = [line for line in rest if line.startswith("data: ")]
    assert data == ["data: payload-1", "data: payload-2", "data: payload-3"]


def test_50mb_upload_is_intact(kc_gateway: Any, auth: dict[str, str]) -> None:
    headers = auth | {
        "Content-Length": str(UPLOAD_BYTES),
        "Content-Type": "application/octet-stream",
    }
    resp = httpx.post(
        f"{kc_gateway.url}/svc/upload", content=_payload(UPLOAD_BYTES), headers=headers, timeout=120
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"sha256": _digest(UPLOAD_BYTES), "bytes": UPLOAD_BYTES}


def test_chunked_upload_is_intact(kc_gateway: Any, auth: dict[str, str]) -> None:
    total = 3 * 1024 * 1024 + 17
    # A generator without Content-Length goes out with Transfer-Encoding: chunked.
    resp = httpx.post(
        f"{kc_gateway.url}/svc/upload", content=_payload(total, 65536), headers=auth, timeout=60
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"sha256": _digest_chunks(total, 65536), "bytes": total}


def _digest_chunks(total: int, chunk: int) -> str:
    h = hashlib.sha256()
    for piece in _payload(total, chunk):
        h.update(piece)
    return h.hexdigest()


def test_oversized_body_gets_413(kc_gateway: Any, auth: dict[str, str]) -> None:
    declared = httpx.post(f"{kc_gateway.url}/small/upload", content=b"x" * 2048, headers=auth)
    assert declared.status_code == 413
    assert "1024" in declared.json()["detail"]
    chunked = httpx.post(
        f"{kc_gateway.url}/small/upload", content=iter([b"x" * 700, b"y" * 700]), headers=auth
    )
    assert chunked.status_code == 413
    within = httpx.post(f"{kc_gateway.url}/small/upload", content=b"z" * 1000, headers=auth)
    assert within.status_code == 200
    assert within.json()["bytes"] == 1000


def test_client_leaving_an_sse_stream_closes_the_upstream(
    streaming_gateway: Any, auth: dict[str, str]
) -> None:
    key = uuid.uuid4().hex
    with httpx.Client(base_url=streaming_gateway.url, headers=auth, timeout=15) as client:
        with client.stream("GET", "/svc/events", params={"key": key}) as resp:
            assert next(resp.iter_lines()) == "id: 0"
        # The client hung up without releasing the stream: the gateway must let go of the
        # upstream connection, so the service's generator ends instead of waiting 20 s.
        deadline = time.monotonic() + 10
        while not client.get(f"/svc/ended/{key}").json()["ended"]:
            assert time.monotonic() < deadline, "upstream stream still open"
            time.sleep(0.05)
