"""Reads answered on the event loop itself (PostgreSQL, psycopg's asyncio connections).

A GET run in a worker thread crosses threads twice (loop -> thread -> loop), and on a busy
API each crossing waits for the interpreter lock that the POST threads hold and for a CPU:
measured under a burst of creates, those waits were most of a GET's tail. A read sent from
the loop waits only for the database. Rows come back through the same SQLAlchemy column
types as the synchronous path (sealed secrets decrypted, JSON parsed), from statements
compiled once.

SQLite (the embedded mode) has no asyncio driver here: `LoopReads.for_engine` answers None
and the handlers keep their thread-pool path.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa


class CompiledRead:
    """A Core SELECT as driver SQL plus the result processing of its column types."""

    def __init__(self, stmt: sa.Select, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        columns = list(stmt.selected_columns)
        self.row_type = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
        self.processors: list[Callable[[Any], Any] | None] = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ]

    def row(self, values: tuple[Any, ...]) -> Any:
        return self.row_type(
            *(v if p is None else p(v) for p, v in zip(self.processors, values, strict=True))
        )


class _Connections:
    """One event loop's connections: at most `size` in use, idle ones kept for the next read.

    No background tasks (a pool library's refill workers would outlive a loop that an ASGI
    test client starts per request, and hang its shutdown).
    """

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection] = []


class LoopReads:
    """Connections per event loop (tests run several apps, each on a loop of its own)."""

    def __init__(self, conninfo: str, size: int, dialect: sa.Dialect) -> None:
        self.conninfo = conninfo
        self.size = size
        self.dialect = dialect
        self._compiled: dict[int, tuple[sa.Select, CompiledRead]] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connections]
        self._loops = weakref.WeakKeyDictionary()

    @classmethod
    def for_engine(cls, engine: sa.Engine, size: int) -> LoopReads | None:
        """Reads on the loop for the database of `engine` (None: not PostgreSQL)."""
        url = engine.url
        if url.get_backend_name() != "postgresql":
            return None
        args = url.translate_connect_args(username="user", database="dbname")
        args.update({k: v for k, v in url.query.items() if isinstance(v, str)})
        conninfo = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in args.items()})
        return cls(conninfo, size, engine.dialect)

    def compiled(self, stmt: sa.Select) -> CompiledRead:
        """`stmt` compiled for this database, once (statements are module constants)."""
        hit = self._compiled.get(id(stmt))
        if hit is None or hit[0] is not stmt:
            hit = self._compiled[id(stmt)] = (stmt, CompiledRead(stmt, self.dialect))
        return hit[1]

    async def one(self, stmt: sa.Select, params: dict[str, Any]) -> Any | None:
        """The first row (or None). A connection that died meanwhile (a database restart)
        fails its statement and is dropped; the read, which changes nothing, runs once more
        on a fresh one."""
        read = self.compiled(stmt)
        try:
            return await self._one(read, params)
        except psycopg.OperationalError:
            return await self._one(read, params)

    async def _one(self, read: CompiledRead, params: dict[str, Any]) -> Any | None:
        conns = self._for_this_loop()
        async with conns.slots:
            conn = conns.idle.pop() if conns.idle else await self._connect()
            try:
                cur = await conn.execute(read.sql, params)
                values = await cur.fetchone()
            except BaseException:
                await conn.close()  # whatever failed, never hand this one out again
                raise
            conns.idle.append(conn)
        return None if values is None else read.row(values)

    def _for_this_loop(self) -> _Connections:
        loop = asyncio.get_running_loop()
        conns = self._loops.get(loop)
        if conns is None:
            self._forget_closed_loops()
            conns = self._loops[loop] = _Connections(self.size)
        return conns

    def _forget_closed_loops(self) -> None:
        for loop, conns in list(self._loops.items()):
            if loop.is_closed():
                for conn in conns.idle:
                    conn.pgconn.finish()  # its loop is gone: close without awaiting
                del self._loops[loop]

    async def _connect(self) -> psycopg.AsyncConnection:
        # Autocommit: a read is one statement, no BEGIN/ROLLBACK round trips around it.
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        await conn.execute("SET default_transaction_read_only = on")  # these only read
        return conn

    async def close(self) -> None:
        """Close the current loop's connections (the app's lifespan shutdown)."""
        conns = self._loops.pop(asyncio.get_running_loop(), None)
        for conn in conns.idle if conns is not None else ():
            await conn.close()


class ClosesLoopReads:
    """ASGI middleware: closes the loop's read pool when the server shuts down (lifespan)."""

    def __init__(self, app: Any, reads: LoopReads) -> None:
        self.app = app
        self.reads = reads

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched() -> dict:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.reads.close()
            return message

        await self.app(scope, watched, send)
