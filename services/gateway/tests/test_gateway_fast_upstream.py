"""The lean upstream client against raw HTTP/1.1 servers that behave in awkward but legal
ways: closing kept-alive connections, close-delimited bodies, chunking, garbage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hdc_gateway.fast_upstream import FastUpstream
from hdc_gateway.proxy import UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def _get(client: FastUpstream, port: int, path: str = "/x") -> tuple[int, list, bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status = await client.forward(
        receive,
        send,
        host="127.0.0.1",
        port=port,
        method="GET",
        target=path,
        headers=[("X-Test", "1")],
        read_timeout_s=5,
        extra_response_headers=[(b"x-extra", b"1")],
    )
    headers = sent[0]["headers"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, headers, body


def test_connection_closed_while_idle_is_retried_on_a_new_one() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        # Keep-alive promised, then the connection is dropped right after the response.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, port = await _serve(handler)
        client = FastUpstream(connect_timeout_s=2, max_idle_per_upstream=4)
        try:
            # With a pause the close arrives before reuse; without, the request is written
            # into a connection that is already going away and must be retried.
            for pause in (0.05, 0, 0.05, 0, 0):
                status, headers, body = await _get(client, port)
                assert (status, body) == (200, b"ok")
                assert (b"x-extra", b"1") in headers
                if pause:
                    await asyncio.sleep(pause)
        finally:
            client.close()
            server.close()
        assert connections == 5

    asyncio.run(scenario())


def test_close_delimited_and_chunked_bodies() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if request.startswith(b"GET /close"):
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil-the-end")
            await writer.drain()
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-Gone\r\n"
            b"X-Gone: hop\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, port = await _serve(handler)
        client = FastUpstream(connect_timeout_s=2, max_idle_per_upstream=4)
        try:
            status, _, body = await _get(client, port, "/close")
            assert (status, body) == (200, b"until-the-end")
            status, headers, body = await _get(client, port, "/chunked")
            assert (status, body) == (200, b"hello world")
            names = {k.lower() for k, _ in headers}
            assert b"transfer-encoding" not in names and b"x-gone" not in names
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


def test_invalid_http_and_refused_connections_are_502() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        server, port = await _serve(handler)
        client = FastUpstream(connect_timeout_s=2, max_idle_per_upstream=4)
        try:
            with pytest.raises(UpstreamError) as bad:
                await _get(client, port)
            assert bad.value.status == 502
            server.close()
            await server.wait_closed()
            with pytest.raises(UpstreamError) as refused:
                await _get(client, port)
            assert refused.value.status == 502
        finally:
            client.close()

    asyncio.run(scenario())
