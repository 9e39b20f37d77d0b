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
_sizes: dict[str, int] = {"read": 16, "write": 8}


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
