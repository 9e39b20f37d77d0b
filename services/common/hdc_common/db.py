"""Database helpers: engines for SQLite and PostgreSQL, sessions, Alembic migrations, locking.

Each service owns its schema and its Alembic script directory. A service's `env.py` is two
lines:

    from hdc_common.db import run_migrations_env
    run_migrations_env(Base.metadata)

and the service calls `migrate(engine, "<pkg>/migrations")` at start; the bus tables'
migrations run first, each with its own version table.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from hdc_common.errors import ConfigError, Problem

__all__ = [
    "StaleDataError",
    "Versioned",
    "create_engine",
    "migrate",
    "run_migrations_env",
    "session_factory",
    "stale_to_problem",
]


def create_engine(url: str, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """An engine tuned for the backend; a malformed URL is a ConfigError, not a traceback.

    `read_only=True` is for an engine that never writes (e.g. a pool for GET handlers): on
    SQLite its transactions begin DEFERRED, so in WAL mode its reads never wait for a writer.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"database_url {url!r} is not a valid SQLAlchemy URL") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling is broken for SAVEPOINT and DDL, and a deferred
        # transaction that reads then writes fails at once ("database is locked") when another
        # writer committed in between. IMMEDIATE serialises writers behind busy_timeout instead:
        # the embedded mode trades concurrency for never failing; PostgreSQL is for scale.
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    try:
        return sa.create_engine(parsed, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"database_url {url!r}: {exc}") from None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see create_engine)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def check_connection(engine: Engine) -> None:
    """Fail fast at start with one line when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ConfigError(
            f"database {engine.url.render_as_string(hide_password=True)} unreachable: {reason}"
        ) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions.begin() as session:
        yield session


def migrate(
    engine: Engine, script_location: str | Path, version_table: str = "alembic_version"
) -> None:
    """Bring the schema up to date: the bus tables first, then the service's own."""
    from hdc_common.bus import migrations_path

    with engine.begin() as conn:
        _advisory_lock(conn, str(script_location))
        _upgrade(conn, migrations_path(), "alembic_version_hdc_bus")
        _upgrade(conn, str(script_location), version_table)


def _upgrade(conn: sa.Connection, location: str, version_table: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = version_table
    command.upgrade(cfg, "head")


def _advisory_lock(conn: sa.Connection, name: str) -> None:
    """Replicas starting together must not migrate at once (PostgreSQL only).

    A transaction-level lock: it is released when the migration's transaction ends, commit
    included, so a replica that waited for it sees the new schema. (Unlocking before the
    commit let it run the same migrations again and fail on "already exists".)
    """
    if conn.dialect.name != "postgresql":
        return
    key = zlib.crc32(name.encode())
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def run_migrations_env(metadata: sa.MetaData | None) -> None:
    """Body of every service's Alembic env.py (online mode, on the connection migrate gave)."""
    config = context.config
    conn = config.attributes.get("connection")
    version_table = config.attributes.get("version_table", "alembic_version")
    if conn is None:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise ConfigError("alembic: run migrations through hdc_common.db.migrate()")
        with create_engine(url).begin() as conn:
            _configure_and_run(conn, metadata, version_table)
        return
    _configure_and_run(conn, metadata, version_table)


def _configure_and_run(
    conn: sa.Connection, metadata: sa.MetaData | None, version_table: str
) -> None:
    context.configure(
        connection=conn,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=conn.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


class Versioned:
    """Optimistic locking: a row updated by someone else since it was read raises StaleDataError.

    Use as a mixin on a declarative model; the `version` column also makes a good ETag.
    """

    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}


def stale_to_problem(what: str) -> Problem:
    return Problem(
        409, "Conflict", f"{what} was changed by another request; read it again and retry"
    )
