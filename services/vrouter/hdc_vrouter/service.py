"""How hdc runs the vrouter controller: `hdc up` (entry point) or `hdc-vrouter` alone."""

from __future__ import annotations

from pathlib import Path

from hdc_common.bus import Bus
from hdc_common.db import check_connection, create_engine, migrate, session_factory
from hdc_common.identity import InternalTokenVerifier
from hdc_common.service import Components, Service, run_service

from hdc_vrouter.controller import Controller
from hdc_vrouter.grpc_api import servicer_entry
from hdc_vrouter.rest import create_app
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.sweeper import OfflineSweeper

MIGRATIONS = Path(__file__).with_name("migrations")


def build(settings: VRouterSettings) -> Components:
    engine = create_engine(settings.resolved_database_url())
    check_connection(engine)
    migrate(engine, MIGRATIONS)
    sessions = session_factory(engine)
    bus = Bus(settings.bus_url, service="vrouter", sessions=sessions)
    controller = Controller(sessions, settings, bus=bus)
    verifier = InternalTokenVerifier(settings.identity_key_pem())

    def database() -> None:
        check_connection(engine)

    return Components(
        asgi_app=create_app(controller, verifier, readiness=[database]),
        grpc_servicers=[servicer_entry(controller, verifier)],
        background=[
            bus,
            OfflineSweeper(controller, interval_s=max(1.0, settings.heartbeat_timeout_s / 3)),
        ],
    )


SERVICE = Service(name="vrouter", settings_cls=VRouterSettings, build=build)


def main() -> None:
    run_service(SERVICE)
