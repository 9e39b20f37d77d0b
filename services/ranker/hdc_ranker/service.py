"""Wiring of the ranker service: settings -> engine, database, bus consumer, REST and gRPC."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from connexion.resolver import Resolver
from hdc_common.db import check_connection, create_engine, session_factory
from hdc_common.errors import ConfigError
from hdc_common.http import create_openapi_app
from hdc_common.identity import InternalTokenVerifier
from hdc_common.require_identity import require_identity
from hdc_common.service import Components, Service, run_service
from sqlalchemy.engine import Engine

from hdc_ranker.engine import Defaults, Ranker
from hdc_ranker.grpc_api import servicer_entry
from hdc_ranker.history import EVENT_PATTERN, QUEUE, HistoryStore
from hdc_ranker.memory import retain_freed_memory
from hdc_ranker.plugins import default_registry
from hdc_ranker.response import warm_up
from hdc_ranker.rest_api import RestApi
from hdc_ranker.settings import RankerSettings

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
MIGRATIONS = PACKAGE_DIR / "migrations"


def migrate_schema(engine: Engine) -> None:
    """The ranker's tables (and the bus tables first, when the shared bus is installed)."""
    try:
        from hdc_common.bus import migrations_path  # noqa: F401 - probe only
    except ImportError:
        # The shared bus is not there yet: migrate only our own schema, the same way.
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = "alembic_version"
            command.upgrade(cfg, "head")
        return
    from hdc_common.db import migrate

    migrate(engine, str(MIGRATIONS))


def build_ranker(settings: RankerSettings, history: Any = None) -> Ranker:
    registry = default_registry(settings.plugins, settings.disabled)
    unknown = sorted(set(settings.weights) - set(registry.scorers))
    if unknown:
        raise ConfigError(
            f"weights: unknown criteria {unknown} (known: {sorted(registry.scorers)})"
        )
    defaults = Defaults(
        weights=settings.weights,
        seed=settings.seed,
        tie_epsilon=settings.tie_epsilon,
        max_age_s=settings.max_age_s,
        monitoring_half_life_s=settings.monitoring_half_life_s,
    )
    return Ranker(registry, defaults, history)


def _bus_consumer(settings: RankerSettings, sessions: Any, history: HistoryStore) -> Any:
    """The consumer of orchestrator deployment events, or None if the bus is unavailable."""
    try:
        from hdc_common.bus import Bus
    except ImportError:
        log.warning("hdc_common.bus not available: deployment history will not be learned")
        return None
    bus = Bus(settings.bus_url, service="ranker", sessions=sessions)
    bus.on_event(EVENT_PATTERN, queue=QUEUE)(history.handle_event)
    return bus


def build(settings: RankerSettings) -> Components:
    engine = create_engine(settings.resolved_database_url())
    check_connection(engine)
    migrate_schema(engine)
    sessions = session_factory(engine)
    history = HistoryStore(
        sessions, half_life_s=settings.history_half_life_s, window=settings.history_window
    )
    ranker = build_ranker(settings, history)
    retain_freed_memory(settings.malloc_retain_mb)
    warm_up()
    api = RestApi(ranker)
    # Only the gateway's identities are trusted (empty key: every call is refused).
    verifier = InternalTokenVerifier(settings.identity_key_pem())

    def db_ready() -> None:
        check_connection(engine)

    app = create_openapi_app(
        PACKAGE_DIR / "openapi.yaml",
        service="ranker",
        resolver=Resolver(function_resolver=lambda op_id: getattr(api, op_id)),
        readiness=[db_ready],
    )
    require_identity(app, verifier)
    background = []
    bus = _bus_consumer(settings, sessions, history)
    if bus is not None:
        background.append(bus)
    return Components(
        asgi_app=app, grpc_servicers=[servicer_entry(ranker, verifier)], background=background
    )


SERVICE = Service(name="ranker", settings_cls=RankerSettings, build=build)


def main() -> None:
    run_service(SERVICE)
