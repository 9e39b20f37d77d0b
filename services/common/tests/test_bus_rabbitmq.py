"""The bus against the real RabbitMQ and the real PostgreSQL: crashes, dead letters, outbox."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hdc_common.bus import ATTEMPT_HEADER, COMMANDS, ERROR_HEADER, Bus, CloudEvent, create_tables
from hdc_common.bus.tables import outbox, processed
from hdc_common.db import create_engine, session_factory

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("hdc_bus_test_worker", HERE / "bus_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def db(postgres_url: str) -> Iterator[tuple[str, sa.Engine]]:
    engine = create_engine(postgres_url)
    create_tables(engine)
    worker.metadata.create_all(engine)
    yield postgres_url, engine
    engine.dispose()


def run_worker(
    mode: str, url: str, db_url: str, timeout: float = 30.0
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HERE / "bus_worker.py"), mode, url, db_url],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker(mode: str, url: str, db_url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "bus_worker.py"), mode, url, db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"worker did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def count(engine: sa.Engine, table: sa.Table, *where: sa.ColumnElement) -> int:
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


@pytest.mark.parametrize("mode", ["consume-die-after-commit", "consume-die-before-commit"])
def test_consumer_killed_before_ack_is_redelivered_and_applied_once(
    rabbitmq_url, rabbitmq_api, db, mode
):
    db_url, engine = db
    proc = start_worker(mode, rabbitmq_url, db_url)
    try:
        sender = Bus(rabbitmq_url, service=worker.SOURCE_SERVICE)
        event = sender.new_event("src.thing.created", {"n": 1})
        sender.publish(event)
        sender.stop()
        assert proc.wait(timeout=30) == -9, proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        proc.wait()
    committed = count(engine, worker.applied, worker.applied.c.event_id == event.id)
    assert committed == (1 if mode == "consume-die-after-commit" else 0)

    # A fresh consumer gets the redelivery: it applies it now, or finds it already applied.
    sessions = session_factory(engine)
    bus = worker.consumer_bus(rabbitmq_url, sessions)
    outcome = "duplicate" if mode == "consume-die-after-commit" else "done"
    bus.start()
    try:
        wait_for(lambda: bus.stats()[outcome] == 1, 30, f"the redelivery ({outcome})")
    finally:
        bus.stop()
    expected = {
        "done": 0,
        "duplicate": 0,
        "retried": 0,
        "requeued": 0,
        "dead_lettered": 0,
        "reconnects": 0,
    }
    assert bus.stats() == expected | {outcome: 1}
    assert bus.queue_depth(worker.EVENT_QUEUE) == 0  # acked: stop() would have returned it
    assert count(engine, worker.applied, worker.applied.c.event_id == event.id) == 1
    assert count(engine, processed, processed.c.event_id == event.id) == 1


def test_database_outage_pauses_consumption_without_spending_attempts(rabbitmq_url, db):
    db_url, engine = db
    name = sa.engine.make_url(db_url).database
    admin = sa.create_engine(db_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    bus = worker.consumer_bus(rabbitmq_url, session_factory(create_engine(db_url)), max_attempts=1)
    bus.start()
    try:
        with admin.connect() as c:  # the database goes away
            c.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            c.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
        event = bus.new_event("src.thing.created", {"n": 1})
        bus.publish(event)
        wait_for(lambda: bus.stats()["requeued"] >= 2, 30, "the delivery to be requeued")
        with admin.connect() as c:
            c.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        wait_for(lambda: bus.stats()["done"] == 1, 30, "the delivery after the outage")
    finally:
        bus.stop()
        with admin.connect() as c:
            c.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert bus.stats()["dead_lettered"] == 0 and bus.stats()["retried"] == 0
    assert count(engine, worker.applied, worker.applied.c.event_id == event.id) == 1


def test_failing_handler_lands_in_dead_letter_queue_with_error(rabbitmq_url, rabbitmq_api, db):
    _, engine = db
    sessions = session_factory(engine)
    bus = Bus(
        rabbitmq_url, service="im", sessions=sessions, max_attempts=3, backoff=0.05, backoff_max=0.2
    )
    calls: list[int] = []

    @bus.on_command("im.infrastructure.create")
    def create(session, event) -> None:
        calls.append(1)
        session.execute(sa.insert(worker.applied).values(event_id=event.id, pid=0))
        raise ValueError(f"cloud said no to {event.data['name']}")

    bus.start()
    try:
        with sessions.begin() as s:
            sent = bus.send(s, "im", "im.infrastructure.create", {"name": "vm-42"})
        wait_for(lambda: bus.stats()["dead_lettered"] == 1, 30, "the dead letter")
    finally:
        bus.stop()
    assert bus.stats()["retried"] == 2
    assert len(calls) == 3
    assert count(engine, worker.applied) == 0  # every attempt rolled back
    assert count(engine, processed) == 0

    letters = rabbitmq_api.get_messages("im.commands.dlq")
    assert len(letters) == 1
    headers = letters[0]["properties"]["headers"]
    assert headers[ATTEMPT_HEADER] == 3
    assert "ValueError: cloud said no to vm-42" in headers[ERROR_HEADER]
    assert CloudEvent.from_json(letters[0]["payload"]).id == sent.id
    [letter] = bus.dead_letters("im.commands")
    assert (letter.event.id, letter.attempt) == (sent.id, 3)
    assert letter.error.startswith("ValueError: cloud said no to vm-42")
    assert bus.queue_depth("im.commands") == 0
    assert bus.queue_depth("im.commands.retry") == 0

    assert bus.replay_dead_letters("im.commands") == 1  # back in the queue, attempts reset
    assert bus.queue_depth("im.commands.dlq") == 0
    [replayed] = rabbitmq_api.get_messages("im.commands")
    assert CloudEvent.from_json(replayed["payload"]).id == sent.id
    assert ATTEMPT_HEADER not in (replayed["properties"].get("headers") or {})


def test_outbox_killed_between_commit_and_publish_publishes_once_after_restart(
    rabbitmq_url, rabbitmq_api, db
):
    db_url, engine = db
    # The consumer's queue exists (it may be down), so nothing published is dropped.
    sink = worker.consumer_bus(rabbitmq_url, session_factory(engine))
    sink.start()
    sink.stop()

    died = run_worker("emit-die-after-commit", rabbitmq_url, db_url)
    assert died.returncode == -9, died.stderr[-2000:]
    event_id = died.stdout.strip()
    assert count(engine, outbox, outbox.c.event_id == event_id, outbox.c.sent_at.is_(None)) == 1
    assert sink.queue_depth(worker.EVENT_QUEUE) == 0  # committed, never published

    restarted = Bus(rabbitmq_url, service=worker.SOURCE_SERVICE, sessions=session_factory(engine))
    restarted.start()
    try:
        wait_for(lambda: restarted.pending() == 0, 20, "the relay")
    finally:
        restarted.stop()
    assert restarted.relay_once() == 0  # marked sent: never published again
    assert sink.queue_depth(worker.EVENT_QUEUE) == 1
    [message] = rabbitmq_api.get_messages(worker.EVENT_QUEUE)
    assert CloudEvent.from_json(message["payload"]).id == event_id
    assert message["properties"]["delivery_mode"] == 2


def test_relay_killed_after_publish_before_marking_sent_is_applied_once(rabbitmq_url, db):
    db_url, engine = db
    sessions = session_factory(engine)
    sink = worker.consumer_bus(rabbitmq_url, sessions)
    sink.start()
    sink.stop()
    source = Bus(rabbitmq_url, service=worker.SOURCE_SERVICE, sessions=sessions)
    with sessions.begin() as s:
        event = source.emit(s, "src.thing.created", {"n": 2})

    died = run_worker("relay-die-after-publish", rabbitmq_url, db_url)
    assert died.returncode == -9, died.stderr[-2000:]
    assert source.pending() == 1  # confirmed by the broker but not marked: published again
    assert source.relay_once() == 1
    assert sink.queue_depth(worker.EVENT_QUEUE) == 2  # the broker holds the duplicate ...

    sink.start()
    try:
        wait_for(lambda: sink.stats()["done"] + sink.stats()["duplicate"] == 2, 20, "consumption")
    finally:
        sink.stop()
    assert sink.stats()["duplicate"] == 1
    assert (
        count(engine, worker.applied, worker.applied.c.event_id == event.id) == 1
    )  # ... applied once


def test_replicated_relays_share_the_outbox_without_duplicates(rabbitmq_url, db):
    _, engine = db
    sessions = session_factory(engine)
    sink = worker.consumer_bus(rabbitmq_url, sessions)
    sink.start()
    sink.stop()
    n = 600
    replicas = [
        Bus(rabbitmq_url, service=worker.SOURCE_SERVICE, sessions=sessions, relay_batch=50)
        for _ in range(3)
    ]
    with sessions.begin() as s:
        for i in range(n):
            replicas[0].emit(s, "src.thing.created", {"i": i})

    published: list[int] = []

    def relay(bus: Bus) -> None:
        while (got := bus.relay_once()) > 0:
            published.append(got)

    threads = [threading.Thread(target=relay, args=(b,)) for b in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for b in replicas:
        b.stop()
    assert sum(published) == n  # SKIP LOCKED: each row went out through exactly one replica
    assert replicas[0].pending() == 0
    assert sink.queue_depth(worker.EVENT_QUEUE) == n


def test_command_for_a_service_that_is_not_running_yet_waits_in_its_queue(rabbitmq_url, db):
    _, engine = db
    sessions = session_factory(engine)
    orchestrator = Bus(rabbitmq_url, service="orchestrator", sessions=sessions)
    with sessions.begin() as s:
        orchestrator.send(s, "ranker", "ranker.rank", {"sla": "x"})
    assert orchestrator.relay_once() == 1
    assert orchestrator.queue_depth("ranker.commands") == 1

    ranker = Bus(rabbitmq_url, service="ranker", sessions=sessions)
    seen: list[dict] = []

    @ranker.on_command("ranker.rank")
    def rank(_session, event) -> None:
        seen.append(event.data)

    with ranker:
        wait_for(lambda: len(seen) == 1, 20, "the command")
    orchestrator.stop()
    assert seen == [{"sla": "x"}]


def test_direct_publish_to_commands_requires_a_service_routing_key(rabbitmq_url):
    bus = Bus(rabbitmq_url, service="gateway")
    with pytest.raises(ValueError, match="routing key"):
        bus.publish(bus.new_event("im.x.y"), COMMANDS, "not a service!")
    bus.stop()
