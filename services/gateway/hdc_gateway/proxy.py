"""Forwarding one ASGI request to an upstream over a pooled aiohttp client, streaming both ways
(the general path: requests with bodies, https upstreams; see fast_upstream for GETs).

Request bodies are streamed as they arrive (a 50 MB upload never sits in memory), and
responses are relayed chunk by chunk as the upstream writes them, so Server-Sent Events
reach the client live. Small responses with a known length take a one-read fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from multidict import CIMultiDict

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
SMALL_BODY = 256 * 1024
SKIP_AUTO = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class UpstreamError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Proxy:
    def __init__(
        self, *, pool_size: int, connect_timeout_s: float, header_timeout_s: float
    ) -> None:
        self._header_timeout = header_timeout_s
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                # Upstream cookies belong to the client, never to the gateway's jar.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=SKIP_AUTO,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, read_timeout_s: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(read_timeout_s)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout, sock_read=read_timeout_s
            )
            self._timeouts[read_timeout_s] = timeout
        return timeout

    async def forward(
        self,
        receive: Receive,
        send: Send,
        *,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        has_body: bool,
        max_body: int | None,
        read_timeout_s: float | None,
        extra_response_headers: list[tuple[bytes, bytes]],
    ) -> int:
        """Relay the exchange and return the upstream's status.

        Raises UpstreamError/BodyTooLarge/ClientGone before any byte is sent."""
        body = _stream_body(receive, max_body) if has_body else None
        try:
            resp_cm = self.session().request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=self._timeout(read_timeout_s),
            )
            # The response head must come within header_timeout_s even when the body may
            # then idle indefinitely (SSE).
            resp = await asyncio.wait_for(resp_cm.__aenter__(), self._header_timeout)
        except (BodyTooLarge, ClientGone):
            raise
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(502, f"upstream unreachable: {exc.os_error}") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(504, "upstream did not answer in time") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, BodyTooLarge):
                raise BodyTooLarge() from None
            raise UpstreamError(502, f"upstream failed: {type(exc).__name__}: {exc}") from None
        try:
            # RFC 9110 §7.6.1: names the upstream lists in Connection are hop-by-hop too.
            listed = {
                t.strip().lower().encode()
                for t in resp.headers.get("Connection", "").split(",")
                if t.strip()
            }
            out_headers = [
                (k, v)
                for k, v in resp.raw_headers
                if k.lower() not in HOP_BY_HOP_BYTES and k.lower() not in listed
            ]
            present = {k.lower() for k, _ in out_headers}
            out_headers.extend(h for h in extra_response_headers if h[0] not in present)
            length = resp.content_length
            if length is not None and length <= SMALL_BODY:
                data = await resp.read()
                await send(
                    {"type": "http.response.start", "status": resp.status, "headers": out_headers}
                )
                await send({"type": "http.response.body", "body": data})
                return resp.status
            await send(
                {"type": "http.response.start", "status": resp.status, "headers": out_headers}
            )
            await _relay_stream(resp, receive, send, watch_disconnect=not has_body)
            return resp.status
        finally:
            await resp_cm.__aexit__(None, None, None)


async def _stream_body(receive: Receive, max_body: int | None) -> AsyncIterator[bytes]:
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            seen += len(chunk)
            if max_body is not None and seen > max_body:
                raise BodyTooLarge()
            yield chunk
        if not message.get("more_body", False):
            return


async def _relay_stream(
    resp: aiohttp.ClientResponse, receive: Receive, send: Send, *, watch_disconnect: bool
) -> None:
    """Copy the upstream body to the client until it ends or the client goes away."""

    async def copy() -> None:
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    if not watch_disconnect:
        # The request body was consumed by the upstream call; a failed send ends the copy.
        await copy()
        return

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    copier = asyncio.ensure_future(copy())
    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({copier, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (copier, watcher):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    if copier.done() and not copier.cancelled() and copier.exception() is not None:
        raise copier.exception()  # type: ignore[misc]
