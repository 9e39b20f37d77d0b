"""Wiring: settings -> database, bus, engine, workers, reconciler, REST app."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from connexion.resolver import Resolver
from hdc_common.bus import Bus
from hdc_common.db import check_connection, create_engine, migrate, session_factory
from hdc_common.http import create_openapi_app
from hdc_common.identity import HEADER, InternalTokenVerifier
from hdc_common.require_identity import require_identity
from hdc_common.service import Components, Service

from hdc_im.api import ImApi
from hdc_im.commands import CommandHandlers
from hdc_im.engine import Engine, Events, Worker
from hdc_im.reconciler import Reconciler
from hdc_im.secrets import Vault, load_fernet
from hdc_im.settings import ImSettings
from hdc_im.sites import DriverFactory

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def _gateway_identity(settings: ImSettings) -> Any:
    pem = settings.identity_key_pem()
    if not pem:
        return lambda _headers: None
    verifier = InternalTokenVerifier(pem)

    def who(headers: Any) -> str | None:
        token = headers.get(HEADER)
        if not token:
            return None
        try:
            return verifier.verify(token).key
        except Exception:  # an invalid identity header is the same as none
            return None

    return who


class _BusComponent:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def start(self) -> None:
        self.bus.start()

    def stop(self) -> None:
        self.bus.stop()


def build_parts(settings: ImSettings) -> dict[str, Any]:
    """Everything the service is made of (tests use the parts directly)."""
    url = settings.resolved_database_url()
    # every request thread, worker thread and the relay hold a connection at once; a pool
    # that small would open and close SQLite connections (and re-run their PRAGMAs) per call
    db = (
        create_engine(url, pool_size=48, max_overflow=16)
        if url.startswith("sqlite")
        else (create_engine(url))
    )
    check_connection(db)
    migrate(db, HERE / "migrations")
    sessions = session_factory(db)
    vault = Vault(load_fernet(settings.secret_key, settings.data_dir))
    bus = Bus(settings.bus_url, service="im", sessions=sessions)
    factory = DriverFactory(settings)
    engine = Engine(
        sessions,
        vault,
        factory,
        Events(bus.emit),
        lease_s=settings.job_lease_s,
        api_min_interval_s=settings.api_min_interval_s,
        max_attempts=settings.job_max_attempts,
        ready_timeout_s=settings.sync_timeout_s,
    )
    CommandHandlers(engine, settings).register(bus)
    api = ImApi(settings, sessions, engine, _gateway_identity(settings))
    app = create_openapi_app(
        HERE / "openapi.yaml",
        service="im",
        resolver=Resolver(function_resolver=lambda op: getattr(api, op.rsplit(".", 1)[-1])),
        strict_validation=False,
    )
    if settings.identity_key_pem():
        # In the platform every caller comes through the gateway; IM-native username/password
        # lines are honoured only by a standalone im started without the gateway's key.
        verifier = InternalTokenVerifier(settings.identity_key_pem())
        require_identity(app, verifier, open_operations={"api.get_version"})
    sites = [
        (lambda sid=sid, conf=conf: factory({"id": sid, "type": conf.type}, None))
        for sid, conf in settings.sites.items()
        if conf.type not in ("dummy", "local")
    ]
    # this machine's processes (the embedded mode's site) are always watched
    sites.append(lambda: factory({"id": "local", "type": "local"}, None))
    worker = Worker(engine, threads=settings.workers, poll_s=settings.job_poll_s)
    reconciler = Reconciler(sites, sessions, settings.reconcile_interval_s)
    return {
        "db": db,
        "sessions": sessions,
        "bus": bus,
        "engine": engine,
        "api": api,
        "app": app,
        "worker": worker,
        "reconciler": reconciler,
    }


def build(settings: ImSettings) -> Components:
    parts = build_parts(settings)
    return Components(
        asgi_app=parts["app"],
        background=[_BusComponent(parts["bus"]), parts["worker"], parts["reconciler"]],
    )


SERVICE = Service(name="im", settings_cls=ImSettings, build=build)
