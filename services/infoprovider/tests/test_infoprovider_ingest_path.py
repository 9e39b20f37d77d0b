"""The report consumers' write path: the change event written by the ingest statement itself,
and consumers that skip the pool's pre-ping but survive the database dropping them."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hdc_common.bus import Bus, CloudEvent
from hdc_common.bus.tables import outbox
from hdc_common.db import create_engine, migrate, session_factory
from hdc_infoprovider import models as m
from hdc_infoprovider import synthetic
from hdc_infoprovider.agent_auth import AgentClient, AgentTokenVerifier, TrustedIssuer
from hdc_infoprovider.ingest import EVENT_SITE_CHANGED, Ingestor
from hdc_infoprovider.report import utcnow
from hdc_infoprovider.service import MIGRATIONS, REPORT_COMMAND

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.infoprovider.harness import Registry, registry_settings, wait_for


@pytest.fixture
def op():
    with FakeOIDCProvider() as provider:
        yield provider


def envelope(op: Any, index: int = 0, created_ago_s: float = 60, seed: int = 1) -> dict[str, Any]:
    created = utcnow() - timedelta(seconds=created_ago_s)
    return {
        "access_token": op.issue_token(f"agent-{index}"),
        "report": synthetic.site_report(index, created, flavors=5, images=20, seed=seed),
    }


def accepted(sessions: Any, site_id: str) -> int:
    with sessions() as s:
        return s.scalar(sa.select(m.Site.reports_accepted).where(m.Site.id == site_id)) or 0


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_the_change_event_goes_out_with_the_ingest_statement(db, op, request):
    """With `emit_row` the outbox row is one more write of the report's own statement (no
    ORM flush): the relay still publishes it, woken by the commit; an unchanged or a refused
    report writes none."""
    engine = create_engine(request.getfixturevalue(f"{db}_url"))
    migrate(engine, MIGRATIONS)
    sessions = session_factory(engine)
    url = f"memory:///ip-{uuid.uuid4().hex[:8]}"
    bus = Bus(url, service="infoprovider", sessions=sessions, relay_interval=30.0)
    watcher = Bus(url, service="watcher", sessions=sessions)
    seen: list[CloudEvent] = []

    @watcher.on_event(EVENT_SITE_CHANGED, queue="watcher.site-changed")
    def record(session: Any, event: CloudEvent) -> None:
        seen.append(event)

    def no_orm_emit(*_: Any) -> None:
        raise AssertionError("the event must be written by the ingest statement")

    verifier = AgentTokenVerifier(
        [TrustedIssuer(issuer=op.issuer)],
        [AgentClient(site_id="site-0000", client_id="agent-0", issuer=op.issuer)],
    )
    ingestor = Ingestor(
        verifier,
        emit=no_orm_emit,
        emit_row=lambda s, type, data, subject: bus.emit_row(s, type, data, subject=subject),
    )
    watcher.start()
    bus.start()
    try:
        with sessions.begin() as s:
            result = ingestor.handle_envelope(s, envelope(op))
            assert result.accepted, result.reason
            assert not s.new  # nothing left for the unit of work to flush
        # Published within the relay's 30 s poll: the commit woke it.
        wait_for(lambda: seen, timeout=10, what="the site.changed event")
        with sessions.begin() as s:  # the same catalog, reported again: nothing to announce
            assert ingestor.handle_envelope(s, envelope(op, created_ago_s=30)).accepted
        with sessions.begin() as s:  # an older report: refused, nothing to announce
            assert not ingestor.handle_envelope(s, envelope(op, created_ago_s=90)).accepted
        assert bus.drain(5) and watcher.drain(5)
    finally:
        bus.stop()
        watcher.stop()
        engine.dispose()
    [event] = seen
    assert event.type == EVENT_SITE_CHANGED and event.subject == "site-0000"
    assert event.data["site_id"] == "site-0000"
    assert (event.data["status"], event.data["previous_status"]) == ("up", "new")
    assert event.data["changes"]["images"]["added"] == 20
    with sessions() as s:
        rows = s.execute(sa.select(outbox.c.event_id, outbox.c.sent_at)).all()
    assert [r.event_id for r in rows] == [event.id] and rows[0].sent_at is not None


def test_report_consumers_survive_the_database_dropping_their_connections(op, postgres_url):
    """The consumers' pool has no pre-ping: after the server ends every connection (as a
    restart does), the next report fails on a dead connection, is applied again on a fresh
    one, and nothing is lost or refused."""
    registry = Registry(
        **registry_settings(
            op,
            {f"agent-{i}": f"site-{i:04d}" for i in range(2)},
            database_url=postgres_url,
            bus_url=f"memory:///ip-{uuid.uuid4().hex[:8]}",
        )
    ).start()
    consumer = registry.components.background[0]
    assert isinstance(consumer, Bus)
    assert not consumer.sessions.kw["bind"].pool._pre_ping
    agent = Bus(registry.settings.bus_url, service="agents")
    admin = sa.create_engine(postgres_url.rsplit("/", 1)[0] + "/postgres")
    checks = create_engine(postgres_url)  # pre-pinged: the test's own reads never fail
    look = session_factory(checks)
    try:

        def report(index: int, created_ago_s: float) -> None:
            event = agent.new_event(REPORT_COMMAND, envelope(op, index, created_ago_s))
            agent.publish(event, exchange="hdc.commands", routing_key="infoprovider")

        report(0, 60)
        wait_for(lambda: accepted(look, "site-0000") == 1, what="first report")
        database = postgres_url.rsplit("/", 1)[1]
        with admin.begin() as c:
            ended = c.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
        assert ended >= 1
        time.sleep(0.2)  # the server has closed them; the pool does not know yet
        report(0, 30)
        report(1, 30)
        wait_for(
            lambda: (accepted(look, "site-0000"), accepted(look, "site-0001")) == (2, 1),
            what="reports after the connections died",
        )
        assert registry.rejected() == []
        assert consumer.stats()["dead_lettered"] == 0
    finally:
        agent.stop()
        admin.dispose()
        checks.dispose()
        registry.stop()
