"""WriteAdmission: writes enter the app a few at a time, after their body has arrived;
GETs are never held at the door."""

from __future__ import annotations

import asyncio
from typing import Any

from hdc_orchestrator import pools
from hdc_orchestrator.pools import WriteAdmission


class Recorder:
    """An ASGI app that holds each write until released and records what it saw."""

    def __init__(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()
        self.gets = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["method"] == "GET":
            self.gets += 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await self.release.wait()
        self.inside -= 1
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(app: Any, method: str, chunks: list[bytes]) -> int:
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(0)  # a body arrives over several loop turns
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": "/deployments"}, receive, send)
    return sent[0]["status"]


def test_writes_enter_two_at_a_time_and_gets_pass() -> None:
    async def scenario() -> None:
        pools.configure(read_threads=16, write_threads=2)
        inner = Recorder()
        app = WriteAdmission(inner)
        writes = [
            asyncio.create_task(call(app, "POST", [b"part-%d-" % i, b"end"])) for i in range(5)
        ]
        for _ in range(50):
            await asyncio.sleep(0)
        assert inner.inside == 2  # the other three wait at the door
        # GETs are answered while writes are held inside and queued outside.
        assert await call(app, "GET", [b""]) == 200
        assert inner.gets == 1
        inner.release.set()
        assert await asyncio.gather(*writes) == [201] * 5
        assert inner.most_inside == 2
        # Every body reached the app whole, although it arrived in two parts.
        assert sorted(inner.bodies) == sorted(b"part-%d-end" % i for i in range(5))

    try:
        asyncio.run(scenario())
    finally:
        pools.configure(read_threads=16, write_threads=2)
