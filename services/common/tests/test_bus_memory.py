"""The same bus behaviour on the in-process transport (`memory://`) with SQLite (embedded mode)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from hdc_common.bus import Bus, CloudEvent, create_tables, link
from hdc_common.bus.tables import outbox, processed
from hdc_common.db import create_engine, session_factory
from opentelemetry.sdk.trace import TracerProvider

metadata = sa.MetaData()
applied = sa.Table(
    "applied",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(64), nullable=False),
)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def sessions(sqlite_url: str) -> Iterator:
    engine = create_engine(sqlite_url)
    create_tables(engine)
    metadata.create_all(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def url() -> str:
    return f"memory:///{uuid.uuid4().hex}"  # a private in-process broker per test


def count(sessions, table: sa.Table, *where) -> int:
    with sessions() as s:
        return s.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


def recorder(bus: Bus, pattern: str, queue: str, calls: list | None = None) -> None:
    @bus.on_event(pattern, queue=queue)
    def record(session, event: CloudEvent) -> None:
        session.execute(sa.insert(applied).values(event_id=event.id, queue=queue))
        if calls is not None:
            calls.append(event)


def test_events_fan_out_to_every_subscribed_queue_once(url, sessions):
    orchestrator = Bus(url, service="orchestrator", sessions=sessions)
    ranker = Bus(url, service="ranker", sessions=sessions)
    dashboard = Bus(url, service="dashboard", sessions=sessions)
    recorder(ranker, "orchestrator.deployment.*", "ranker.history")
    recorder(dashboard, "orchestrator.#", "dashboard.feed")
    recorder(dashboard, "im.#", "dashboard.im")  # bound, never matched
    for b in (ranker, dashboard, orchestrator):
        b.start()
    try:
        with sessions.begin() as s:
            created = orchestrator.emit(
                s, "orchestrator.deployment.created", {"uuid": "d1"}, subject="d1"
            )
            orchestrator.emit(s, "orchestrator.other.thing", {})
        wait_for(lambda: count(sessions, applied) == 3)
        assert orchestrator.drain(5) and ranker.drain(5) and dashboard.drain(5)
    finally:
        for b in (orchestrator, ranker, dashboard):
            b.stop()
    assert count(sessions, applied, applied.c.queue == "ranker.history") == 1
    assert count(sessions, applied, applied.c.queue == "dashboard.feed") == 2
    assert count(sessions, applied, applied.c.event_id == created.id) == 2
    assert count(sessions, processed) == 3


def test_a_rolled_back_transaction_sends_nothing(url, sessions):
    bus = Bus(url, service="orchestrator", sessions=sessions)
    calls: list = []
    recorder(bus, "orchestrator.#", "orchestrator.self", calls)
    bus.start()
    try:
        with pytest.raises(RuntimeError), sessions.begin() as s:
            bus.emit(s, "orchestrator.deployment.created", {})
            raise RuntimeError("the business change failed")
        assert bus.pending() == 0
        assert bus.drain(3)
    finally:
        bus.stop()
    assert calls == []


def test_a_rolled_back_savepoint_drops_only_its_own_messages(url, sessions):
    bus = Bus(url, service="orchestrator", sessions=sessions)
    with sessions.begin() as s:
        kept = bus.emit(s, "orchestrator.deployment.created", {})
        nested = s.begin_nested()
        bus.emit(s, "orchestrator.deployment.deleted", {})
        s.flush()  # even once written inside the savepoint
        nested.rollback()
        also_kept = bus.send(s, "im", "im.infrastructure.create", {})
    with sessions() as s:
        assert s.scalars(sa.select(outbox.c.event_id).order_by(outbox.c.id)).all() == [
            kept.id,
            also_kept.id,
        ]


def test_duplicate_deliveries_are_applied_once(url, sessions):
    bus = Bus(url, service="ranker", sessions=sessions)
    recorder(bus, "orchestrator.#", "ranker.history")
    bus.start()
    try:
        event = CloudEvent.create(
            "orchestrator.deployment.created", {"a": 1}, source="/hdc/orchestrator"
        )
        for _ in range(3):
            bus.publish(event)
        wait_for(lambda: bus.stats()["done"] + bus.stats()["duplicate"] == 3)
    finally:
        bus.stop()
    assert bus.stats()["done"] == 1 and bus.stats()["duplicate"] == 2
    assert count(sessions, applied) == 1


def test_failing_handler_is_retried_then_dead_lettered_with_the_error(url, sessions):
    bus = Bus(url, service="im", sessions=sessions, max_attempts=4, backoff=0.01, backoff_max=0.05)
    attempts: list[float] = []
    ok: list = []

    @bus.on_command("im.infrastructure.create")
    def create(session, event) -> None:
        session.execute(sa.insert(applied).values(event_id=event.id, queue="im.commands"))
        attempts.append(time.monotonic())
        raise ConnectionError("cloud unreachable")

    @bus.on_command("im.infrastructure.delete")
    def delete(session, event) -> None:
        ok.append(event.id)

    bus.start()
    try:
        with sessions.begin() as s:
            failing = bus.send(s, "im", "im.infrastructure.create", {"n": 1})
            bus.send(s, "im", "im.infrastructure.delete", {"n": 2})  # same group, unharmed
        wait_for(lambda: bus.stats()["dead_lettered"] == 1)
        assert bus.drain(5)
    finally:
        bus.stop()
    assert len(attempts) == 4
    assert len(ok) == 1
    [letter] = bus.dead_letters("im.commands")
    assert letter.event is not None and letter.event.id == failing.id
    assert letter.attempt == 4
    assert letter.error == "ConnectionError: cloud unreachable"
    assert count(sessions, applied) == 0
    assert bus.dead_letters("im.commands") == [letter]  # reading does not consume

    # The cloud is back: the dead letter is replayed with fresh attempts and applied once.
    attempts.clear()
    create_ok = Bus(url, service="im", sessions=sessions)

    @create_ok.on_command("im.infrastructure.create")
    def create_now(session, event) -> None:
        session.execute(sa.insert(applied).values(event_id=event.id, queue="im.commands"))

    create_ok.start()
    try:
        assert create_ok.replay_dead_letters("im.commands") == 1
        wait_for(lambda: create_ok.stats()["done"] == 1)
    finally:
        create_ok.stop()
    assert create_ok.dead_letters("im.commands") == []
    assert count(sessions, applied, applied.c.event_id == failing.id) == 1


def test_unknown_command_and_garbage_go_straight_to_the_dead_letter_queue(url, sessions):
    bus = Bus(url, service="im", sessions=sessions)

    @bus.on_command("im.infrastructure.create")
    def create(session, event) -> None:
        raise AssertionError("not for this type")

    bus.start()
    try:
        bus.publish(
            CloudEvent.create("im.infrastructure.explode", {}, source="/test"), "hdc.commands", "im"
        )
        with link.connect(url) as conn:  # raw bytes that are no CloudEvent
            conn.Producer().publish(b"{oops", exchange="hdc.commands", routing_key="im")
        wait_for(lambda: bus.stats()["dead_lettered"] == 2)
    finally:
        bus.stop()
    errors = sorted(d.error for d in bus.dead_letters("im.commands"))
    assert errors[0].startswith("InvalidEvent: body is not JSON")
    assert errors[1] == "LookupError: no handler for command type 'im.infrastructure.explode'"
    assert bus.stats()["retried"] == 0


def test_outbox_rows_of_a_process_that_died_are_relayed_once_by_the_next(url, sessions, tmp_path):
    # The consumer has its own database, as every service does: its relay is not involved.
    sink_engine = create_engine(f"sqlite:///{tmp_path}/sink.db")
    create_tables(sink_engine)
    metadata.create_all(sink_engine)
    sink_sessions = session_factory(sink_engine)
    sink = Bus(url, service="ranker", sessions=sink_sessions)
    recorder(sink, "orchestrator.#", "ranker.history")
    sink.start()
    try:
        crashed = Bus(url, service="orchestrator", sessions=sessions)  # never started: no relay
        with sessions.begin() as s:
            events = [
                crashed.emit(s, "orchestrator.deployment.created", {"i": i}) for i in range(5)
            ]
        del crashed
        assert count(sessions, outbox, outbox.c.sent_at.is_(None)) == 5

        restarted = Bus(url, service="orchestrator", sessions=sessions)
        assert restarted.relay_once() == 5
        assert restarted.relay_once() == 0
        wait_for(lambda: count(sink_sessions, applied) == 5)
        assert sink.drain(5)
    finally:
        sink.stop()
    with sink_sessions() as s:
        assert {e.id for e in events} == set(s.scalars(sa.select(applied.c.event_id)).all())
    sink_engine.dispose()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_unacked_messages_return_to_their_queue_when_a_consumer_dies(url, sessions):
    started = threading.Event()
    release = threading.Event()
    slow = Bus(url, service="ranker", sessions=sessions, prefetch=1)

    @slow.on_event("orchestrator.#", queue="ranker.history")
    def block(session, event) -> None:
        started.set()
        release.wait(10)
        raise SystemExit("consumer torn down mid-handler")  # not an Exception: nothing is settled

    other = Bus(url, service="dashboard", sessions=sessions)
    recorder(other, "orchestrator.#", "dashboard.feed")
    slow.start()
    other.start()
    event = CloudEvent.create("orchestrator.deployment.created", {}, source="/hdc/orchestrator")
    slow.publish(event)
    assert started.wait(10)
    release.set()
    slow.stop()
    wait_for(lambda: count(sessions, applied, applied.c.queue == "dashboard.feed") == 1)

    again = Bus(url, service="ranker", sessions=sessions)
    recorder(again, "orchestrator.#", "ranker.history")
    again.start()
    try:
        wait_for(lambda: count(sessions, applied, applied.c.queue == "ranker.history") == 1)
        assert again.drain(5) and other.drain(5)
    finally:
        again.stop()
        other.stop()
    # Restored to ranker.history only: the other subscriber did not get it a second time.
    assert count(sessions, applied, applied.c.queue == "dashboard.feed") == 1


def test_handlers_run_in_the_senders_trace(url, sessions):
    tracer = TracerProvider().get_tracer("test")
    bus = Bus(url, service="ranker", sessions=sessions)
    seen: list[CloudEvent] = []
    recorder(bus, "orchestrator.#", "ranker.history", seen)
    traces: list[str] = []

    @bus.on_event("orchestrator.#", queue="ranker.trace")
    def current(session, event) -> None:
        from hdc_common.bus.events import current_traceparent

        traces.append(current_traceparent() or "")

    bus.start()
    try:
        with tracer.start_as_current_span("http request") as span:
            bus.publish(bus.new_event("orchestrator.deployment.created"))
            trace_id = format(span.get_span_context().trace_id, "032x")
        wait_for(lambda: len(seen) == 1 and len(traces) == 1)
    finally:
        bus.stop()
    assert trace_id in (seen[0].traceparent or "")
    assert trace_id in traces[0]


def test_service_migrations_create_the_bus_tables_first_with_their_own_version_table(tmp_path):
    from hdc_common.db import migrate

    service_migrations = tmp_path / "migrations"
    (service_migrations / "versions").mkdir(parents=True)
    (service_migrations / "env.py").write_text(
        "from hdc_common.db import run_migrations_env\nrun_migrations_env(None)\n"
    )
    engine = create_engine(f"sqlite:///{tmp_path}/svc.db")
    migrate(engine, service_migrations)
    migrate(engine, service_migrations)  # idempotent
    tables = set(sa.inspect(engine).get_table_names())
    assert {"hdc_bus_outbox", "hdc_bus_processed", "alembic_version_hdc_bus"} <= tables
    with engine.connect() as c:
        assert c.execute(
            sa.text("SELECT version_num FROM alembic_version_hdc_bus")
        ).scalar_one() == ("hdc_bus_0001")
    engine.dispose()


def test_sqlite_relay_publishes_without_holding_the_database_write_lock(url, sessions):
    """On SQLite every transaction holds the database's write lock: the relay must publish
    outside one, or each writer of the service waits for the broker's confirms."""
    bus = Bus(url, service="orchestrator", sessions=sessions)
    with sessions.begin() as s:
        first = bus.emit(s, "orchestrator.deployment.created", {"n": 1})
    on_the_wire, release = threading.Event(), threading.Event()
    publish = bus.publisher.publish

    def held_publish(messages, **kwargs) -> None:
        on_the_wire.set()
        assert release.wait(30), "the test never released the publish"
        publish(messages, **kwargs)

    bus.publisher.publish = held_publish  # type: ignore[method-assign]
    relayed: list[int] = []
    relay = threading.Thread(target=lambda: relayed.append(bus.relay_once()))
    relay.start()
    try:
        assert on_the_wire.wait(10)
        written = threading.Event()

        def writer() -> None:
            with sessions.begin() as s:
                bus.emit(s, "orchestrator.deployment.created", {"n": 2})
            written.set()

        threading.Thread(target=writer, daemon=True).start()
        # The writer commits while the relay's batch is still waiting for the broker.
        assert written.wait(10) and not release.is_set()
    finally:
        release.set()
        relay.join(10)
    bus.publisher.publish = publish  # type: ignore[method-assign]
    assert relayed == [1]
    with sessions() as s:
        sent = s.scalars(sa.select(outbox.c.event_id).where(outbox.c.sent_at.is_not(None)))
        assert list(sent) == [first.id]
    assert bus.relay_once() == 1 and bus.pending() == 0


def test_sqlite_relays_of_one_process_never_publish_a_row_twice(url, sessions):
    """Two relays of one process (as the orchestrator's two buses) on one SQLite outbox: each
    row goes out through exactly one of them, although neither holds a lock while it
    publishes."""
    sink = Bus(url, service="ranker", sessions=sessions)
    recorder(sink, "orchestrator.#", "ranker.history")
    sink.start()  # declares the queue, so that nothing published is dropped
    sink.stop()
    relays = [Bus(url, service="orchestrator", sessions=sessions, relay_batch=20) for _ in range(2)]
    n = 300
    with sessions.begin() as s:
        for i in range(n):
            relays[0].emit(s, "orchestrator.deployment.created", {"i": i})
    published: list[int] = []

    def relay(bus: Bus) -> None:
        while (got := bus.relay_once()) > 0:
            published.append(got)

    threads = [threading.Thread(target=relay, args=(b,)) for b in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(published) == n
    assert relays[0].pending() == 0
    assert sink.queue_depth("ranker.history") == n
    for b in relays:
        b.stop()
