"""Wiring: settings -> database, bus, gRPC clients, engine, HTTP app, background loops."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hdc_common.bus import Bus
from hdc_common.db import check_connection, create_engine, migrate, session_factory
from hdc_common.identity import InternalTokenVerifier
from hdc_common.service import Components, Service, run_service

from hdc_orchestrator import sealing
from hdc_orchestrator.acting_identity import load_private_key
from hdc_orchestrator.api import AppState
from hdc_orchestrator.app import create_app
from hdc_orchestrator.engine import Engine
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


def build(settings: OrchestratorSettings) -> Components:
    sealing.add_key(sealing.key_from(settings.secret_key, settings.data_dir))
    db = create_engine(settings.resolved_database_url())
    check_connection(db)
    migrate(db, MIGRATIONS)
    sessions = session_factory(db)
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
    )
    vrouter = VRouterClient(settings.vrouter_target, settings.grpc_deadline_s, private_key)
    public = settings.public_url.rstrip("/") or f"http://{settings.http_host}:{settings.http_port}"
    engine = Engine(bus, settings, placement, base_url=lambda: public, vrouter=vrouter)
    register_handlers(bus, events_bus, engine)
    state = AppState(
        settings=settings,
        sessions=sessions,
        engine=engine,
        verifier=InternalTokenVerifier(settings.identity_key_pem()),
    )

    def database() -> None:
        with db.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    app = create_app(state, readiness=[database])
    background: list[Any] = [
        bus,
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
        _Closer(placement, vrouter, db),
    ]
    return Components(asgi_app=app, background=background)


class _Closer:
    """Releases channels and pooled connections at shutdown (stopped last)."""

    def __init__(self, placement: PlacementClient, vrouter: VRouterClient, db: sa.Engine) -> None:
        self.placement, self.vrouter, self.db = placement, vrouter, db

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.placement.close()
        self.vrouter.close()
        self.db.dispose()


SERVICE = Service(name="orchestrator", settings_cls=OrchestratorSettings, build=build)


def main() -> None:
    run_service(SERVICE)
