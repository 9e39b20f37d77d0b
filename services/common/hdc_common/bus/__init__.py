"""The hdc message bus: CloudEvents over RabbitMQ (or in-process), outbox, exactly-once handling.

The contract is the "The bus" section of services/common/README.md. In short:

    bus = Bus(url, service="orchestrator", sessions=Session)  # amqp://... or memory://
    with Session.begin() as s:                                # outbox: commits with the change
        bus.emit(s, "orchestrator.deployment.created", {"uuid": u}, subject=u)  # -> hdc.events
        bus.send(s, "im", "im.infrastructure.create", {...})                    # -> hdc.commands
    bus.publish(event, EVENTS, routing_key)     # direct, confirmed, outside any transaction

    @bus.on_command("im.infrastructure.create")                      # from <service>.commands
    @bus.on_event("orchestrator.deployment.*", queue="ranker.history")
    def handler(session, event: CloudEvent) -> None: ...   # in a DB transaction; do not commit

    bus.start(); bus.stop()

Handlers must not commit: the bus commits their transaction together with the processed-
message row, then acks. Deliveries that arrive together are committed as one group (a
handler that raises is retried alone), so a handler may run more than once for one
message; only its database effects are guaranteed to happen exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hdc_common.bus.bus import Bus, DeadLetter
from hdc_common.bus.consumer import topic_matches
from hdc_common.bus.events import CONTENT_TYPE, CloudEvent, InvalidEvent
from hdc_common.bus.link import (
    ATTEMPT_HEADER,
    COMMANDS,
    ERROR_HEADER,
    EVENTS,
    BusUnavailable,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "ATTEMPT_HEADER",
    "COMMANDS",
    "CONTENT_TYPE",
    "ERROR_HEADER",
    "EVENTS",
    "Bus",
    "BusUnavailable",
    "CloudEvent",
    "DeadLetter",
    "InvalidEvent",
    "create_tables",
    "migrations_path",
    "topic_matches",
]

VERSION_TABLE = "alembic_version_hdc_bus"


def migrations_path() -> str:
    """Alembic script location of the bus tables (run by `hdc_common.db.migrate` first)."""
    return str(Path(__file__).parent / "migrations")


def create_tables(engine: Engine) -> None:
    """Bring only the bus tables up to date (for tools and tests without a service schema)."""
    from alembic import command
    from alembic.config import Config

    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", migrations_path())
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = VERSION_TABLE
        command.upgrade(cfg, "head")
