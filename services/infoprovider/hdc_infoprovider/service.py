"""Wiring of the infoprovider service: settings, database, bus, REST, gRPC, workers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hdc_common.bus import Bus, CloudEvent
from hdc_common.db import create_engine, migrate, session_factory
from hdc_common.http import create_openapi_app
from hdc_common.identity import InternalTokenVerifier
from hdc_common.require_identity import require_identity
from hdc_common.service import Components, Service, run_service
from hdc_common.settings import ServiceSettings, service_config
from pydantic import Field, model_validator
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from hdc_infoprovider.agent_auth import AgentClient, AgentTokenVerifier, TrustedIssuer, client_map
from hdc_infoprovider.grpc_api import servicer_entry
from hdc_infoprovider.ingest import Ingestor
from hdc_infoprovider.liveness import DownDetector
from hdc_infoprovider.placement import Catalog, CatalogWarmer
from hdc_infoprovider.rest import SPEC, RestApi

log = logging.getLogger(__name__)

REPORT_COMMAND = "infoprovider.site.report"
MIGRATIONS = Path(__file__).parent / "migrations"


class InfoProviderSettings(ServiceSettings):
    model_config = service_config("infoprovider")

    http_port: int = 8103
    grpc_port: int | None = 9103
    # OPs whose tokens agents may present (Keycloak realm URL, INDIGO IAM, ...).
    trusted_issuers: list[TrustedIssuer] = Field(default_factory=list)
    # Which OIDC client speaks for which site; a client maps to exactly one site.
    agent_clients: list[AgentClient] = Field(default_factory=list)
    token_leeway_s: int = Field(60, ge=0, le=3600)
    max_report_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    down_check_interval_s: float = Field(30.0, gt=0)
    operator_role: str = "platform-admin"
    rejected_keep_days: int = Field(30, ge=1)
    # Consumers of the report queue in this process, each with its own connection and
    # transaction: while one waits for PostgreSQL to write its reports, another validates
    # and diffs the next ones (the in-process broker of embedded mode keeps one).
    report_consumers: int = Field(2, ge=1, le=16)

    @model_validator(mode="after")
    def _one_site_per_client(self) -> InfoProviderSettings:
        client_map(self.agent_clients)
        known = {i.issuer.rstrip("/") for i in self.trusted_issuers}
        for c in self.agent_clients:
            if c.issuer.rstrip("/") not in known:
                raise ValueError(
                    f"agent client {c.client_id!r} names issuer {c.issuer} which is not in "
                    "trusted_issuers"
                )
        return self


def ingest_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions of the report consumers: the same database, without the pool's pre-ping.

    The pre-ping is a round trip before every transaction, i.e. before every report the
    consumers apply one at a time. Without it, a connection that died meanwhile (a database
    restart) fails the transaction's first statement instead; the pool then drops every
    connection older than the failure, and the bus applies the deliveries again on fresh
    ones (a group that failed is retried message by message; a lone message goes back to
    the queue as transient, no attempt spent). The processed-message ledger makes that
    exactly-once even when the connection died during the commit.
    """
    if engine.dialect.name != "postgresql":
        return session_factory(engine)  # SQLite has no server connection to lose
    url = engine.url.render_as_string(hide_password=False)
    return session_factory(create_engine(url, pool_pre_ping=False))


def build(settings: InfoProviderSettings) -> Components:
    engine = create_engine(settings.resolved_database_url())
    migrate(engine, MIGRATIONS)
    sessions = session_factory(engine)
    consumer_sessions = ingest_sessions(engine)
    bus = Bus(settings.bus_url, service="infoprovider", sessions=consumer_sessions)

    def emit(session: Session, type: str, data: dict[str, Any], subject: str) -> None:
        bus.emit(session, type, data, subject=subject)

    def emit_row(session: Session, type: str, data: dict[str, Any], subject: str) -> dict[str, Any]:
        return bus.emit_row(session, type, data, subject=subject)

    verifier = AgentTokenVerifier(
        settings.trusted_issuers, settings.agent_clients, leeway_s=settings.token_leeway_s
    )
    ingestor = Ingestor(
        verifier, emit=emit, emit_row=emit_row, max_report_bytes=settings.max_report_bytes
    )

    def on_report(session: Session, event: CloudEvent) -> None:
        # Refusals are recorded and return normally; only IdpUnavailable raises (retried).
        ingestor.handle_envelope(session, event.data, event_id=event.id, transport="amqp")

    consumers = 1 if settings.bus_url.startswith("memory:") else settings.report_consumers
    # Reports of one site are serialised by its row lock, whichever consumer takes them.
    report_buses = [bus] + [
        Bus(settings.bus_url, service="infoprovider", sessions=consumer_sessions)
        for _ in range(consumers - 1)
    ]
    for b in report_buses:
        b.on_command(REPORT_COMMAND)(on_report)

    catalog = Catalog()
    # Only the gateway's signed identities are trusted (no key configured: every call is
    # refused). Agents reporting over HTTP come through the gateway too, which forwards
    # their bearer token for the registry's own site check.
    identity = InternalTokenVerifier(settings.identity_key_pem())
    api = RestApi(sessions, ingestor, identity, catalog, operator_role=settings.operator_role)
    app = create_openapi_app(SPEC, service="infoprovider", resolver=api.resolver())
    require_identity(app, identity)
    detector = DownDetector(
        sessions,
        emit,
        interval_s=settings.down_check_interval_s,
        rejected_keep_days=settings.rejected_keep_days,
    )
    return Components(
        asgi_app=app,
        grpc_servicers=[servicer_entry(sessions, catalog, identity)],
        background=[*report_buses, detector, CatalogWarmer(sessions, catalog)],
    )


SERVICE = Service(name="infoprovider", settings_cls=InfoProviderSettings, build=build)


def main() -> None:
    """Console script `hdc-infoprovider [--config FILE]`: the registry on its own."""
    run_service(SERVICE)
