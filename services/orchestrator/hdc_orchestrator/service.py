"""Wiring: settings -> database, bus, gRPC clients, engine, HTTP app, background loops."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hdc_common.bus import Bus
from hdc_common.db import check_connection, create_engine, migrate, session_factory
from hdc_common.errors import ConfigError
from hdc_common.identity import InternalTokenVerifier
from hdc_common.service import Components, Service, run_service

from hdc_orchestrator import pools, sealing
from hdc_orchestrator.acting_identity import load_private_key
from hdc_orchestrator.api import AppState
from hdc_orchestrator.app import create_app
from hdc_orchestrator.engine import Engine
from hdc_orchestrator.loop_reads import LoopReads
from hdc_orchestrator.placement import PlacementClient
from hdc_orchestrator.settings import OrchestratorSettings
from hdc_orchestrator.vrouter_client import VRouterClient
from hdc_orchestrator.workers import CallbackSender, Sweeper, register_handlers

MIGRATIONS = Path(__file__).with_name("migrations")


def callback_secret(settings: OrchestratorSettings) -> bytes:
    if settings.callback_secret:
        return settings.callback_secret.encode()
    path = settings.data_dir / "orchestrator-callback.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def read_engine(url: str, threads: int) -> sa.Engine | None:
    """The GET handlers' own pool: never waits for a connection a worker or a write holds.

    On PostgreSQL its connections run in autocommit: a read is one statement, so no BEGIN
    and ROLLBACK round trips around it (reads of several statements see committed data
    of each moment, which is all an API read promises). On SQLite its transactions begin
    DEFERRED, so WAL readers never queue behind a writer's lock.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return None  # a second engine would open a different, empty database
        return create_engine(url, read_only=True)
    return create_engine(
        url,
        read_only=True,
        pool_size=threads,
        max_overflow=threads,  # SSE streams poll from threads of their own
        isolation_level="AUTOCOMMIT",
        # One round trip per GET, not two: a dead connection is caught by the read's own
        # statement instead, and the read retried (pools.reads).
        pool_pre_ping=False,
    )


def build(settings: OrchestratorSettings) -> Components:
    if settings.role != "all" and settings.bus_url.startswith("memory://"):
        raise ConfigError(
            f"role {settings.role!r} splits the orchestrator over processes, which need a "
            "shared broker: set bus_url to amqp://... (the in-process bus has role 'all')"
        )
    sealing.add_key(sealing.key_from(settings.secret_key, settings.data_dir))
    if settings.gil_switch_interval_s > 0:
        sys.setswitchinterval(settings.gil_switch_interval_s)
    pools.configure(settings.api_read_threads, settings.api_write_threads)
    url = settings.resolved_database_url()
    db = create_engine(url)
    check_connection(db)
    migrate(db, MIGRATIONS)
    sessions = session_factory(db)
    reads_db = read_engine(url, settings.api_read_threads)
    bus = Bus(settings.bus_url, service="orchestrator", sessions=sessions)
    # A second consumer for the im's events (its relay also drains the shared outbox, which
    # is safe: relays claim rows with SKIP LOCKED, as replicas do).
    events_bus = Bus(settings.bus_url, service="orchestrator", sessions=sessions)
    # The ranker and the vrouter refuse calls without a gateway-signed identity: the
    # orchestrator signs one for each deployment's owner with the gateway's key.
    private_key = load_private_key(settings.identity_private_key)
    placement = PlacementClient(
        settings.infoprovider_target,
        settings.ranker_target,
        settings.grpc_deadline_s,
        settings.tenant,
        private_key_pem=private_key,
        slas=settings.slas,
        images_per_candidate=settings.placement_images_per_candidate,
    )
    vrouter = VRouterClient(settings.vrouter_target, settings.grpc_deadline_s, private_key)
    public = settings.public_url.rstrip("/") or f"http://{settings.http_host}:{settings.http_port}"
    engine = Engine(bus, settings, placement, base_url=lambda: public, vrouter=vrouter)
    workers = settings.role in ("all", "workers")
    if workers:
        register_handlers(bus, events_bus, engine)
    state = AppState(
        settings=settings,
        sessions=sessions,
        engine=engine,
        verifier=InternalTokenVerifier(settings.identity_key_pem()),
        read_sessions=session_factory(reads_db) if reads_db is not None else None,
        loop_reads=LoopReads.for_engine(db, settings.api_read_threads),
    )

    def database() -> None:
        with db.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    app = create_app(state, readiness=[database])
    # The API's writes go out through `bus`'s outbox relay in every role.
    background: list[Any] = [bus]
    if workers:
        background += [
            events_bus,
            Sweeper(sessions, engine, settings.sweep_interval_s),
            CallbackSender(
                sessions,
                callback_secret(settings),
                interval=min(settings.sweep_interval_s, 1.0),
                max_attempts=settings.callback_max_attempts,
                backoff_s=settings.callback_backoff_s,
                timeout_s=settings.callback_timeout_s,
            ),
        ]
    background.append(_Closer(placement, vrouter, db, *([reads_db] if reads_db else [])))
    return Components(asgi_app=app, background=background)


class _Closer:
    """Releases channels and pooled connections at shutdown (stopped last)."""

    def __init__(self, placement: PlacementClient, vrouter: VRouterClient, *dbs: sa.Engine) -> None:
        self.placement, self.vrouter, self.dbs = placement, vrouter, dbs

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.placement.close()
        self.vrouter.close()
        for db in self.dbs:
            db.dispose()


SERVICE = Service(name="orchestrator", settings_cls=OrchestratorSettings, build=build)


def main() -> None:
    run_service(SERVICE)
