"""Bulkheads for the API: reads and writes run in thread pools of their own.

connexion runs every sync handler in one shared pool. Under a burst of POSTs (each a few
milliseconds of template checks and ORM work) that pool and the GIL fill up with writes,
and a GET waits behind them. Here the handlers are declared `@reads` or `@writes`: a burst of
writes queues for its own few threads (in the event loop, where waiting is free) while a
GET always finds a read thread, and with it a connection of the read-only pool
(`AppState.read_sessions`) that the workers never hold.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import sqlalchemy as sa

F = TypeVar("F", bound=Callable[..., Any])

# Per event loop: anyio limiters belong to the loop they were made in (tests run several).
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, anyio.CapacityLimiter]]
_limiters = weakref.WeakKeyDictionary()
_sizes: dict[str, int] = {"read": 16, "write": 2}


def configure(read_threads: int, write_threads: int) -> None:
    """Pool sizes (from the settings); applies to limiters made after the call."""
    _sizes.update(read=read_threads, write=write_threads)


def _limiter(kind: str) -> anyio.CapacityLimiter:
    per_loop = _limiters.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get(kind)
    if limiter is None:
        limiter = per_loop[kind] = anyio.CapacityLimiter(_sizes[kind])
    return limiter


def _runs_in(kind: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def handler(*args: Any, **kwargs: Any) -> Any:
            # The request context (connexion's `request`, the app state) is a context
            # variable; anyio runs the function in a copy of the current context.
            call = functools.partial(fn, *args, **kwargs)
            if kind == "read":
                call = functools.partial(once_more_if_disconnected, call)
            return await anyio.to_thread.run_sync(call, limiter=_limiter(kind))

        return handler  # type: ignore[return-value]

    return decorate


def once_more_if_disconnected(call: Callable[[], Any]) -> Any:
    """The read pool skips the pre-ping round trip on every checkout; a connection that died
    meanwhile (a database restart) fails its first statement instead, the pool drops it,
    and the read, which changes nothing, simply runs again on a fresh one."""
    try:
        return call()
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return call()


reads = _runs_in("read")
writes = _runs_in("write")


_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class WriteAdmission:
    """Admits at most `api_write_threads` writes into the app at once (ASGI middleware).

    The handler pools above bound the threads, but a request has spent event-loop time
    before its handler runs: connexion parses and validates its body, checks its identity
    and routes it, all on the one event-loop thread every GET needs too. Under a burst of
    32 concurrent POSTs a GET queued behind all of that. Here a write waits at the door,
    after its body has arrived (so a slow upload holds no slot) and before any of that
    work, where waiting costs nothing; a GET never waits here.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._gates = weakref.WeakKeyDictionary()

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(_sizes["write"])
        return gate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in _WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        received: list[dict] = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> dict:
            return received.pop(0) if received else await receive()

        async with self._gate():
            await self.app(scope, replay, send)
