"""RabbitMQ restarts in the middle of a publish/consume stream: nothing lost, nothing doubled.

Runs against a private RabbitMQ node (see rabbitmq_node.py), never the shared broker.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from hdc_common.bus import Bus, create_tables
from hdc_common.db import create_engine, session_factory

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

HERE = Path(__file__).parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"hdc_bus_test_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load("bus_worker")
rabbitmq_node = _load("rabbitmq_node")


def test_broker_restart_during_stream_loses_and_duplicates_nothing(tmp_path, postgres_url):
    engine = create_engine(postgres_url)
    create_tables(engine)
    worker.metadata.create_all(engine)
    sessions = session_factory(engine)
    via_outbox, direct = 150, 50

    with rabbitmq_node.PrivateRabbit(tmp_path) as node:
        source = Bus(
            node.url,
            service=worker.SOURCE_SERVICE,
            sessions=sessions,
            relay_interval=0.1,
            publish_timeout=120,
        )
        sink = worker.consumer_bus(node.url, sessions, prefetch=10)
        sink.start()
        source.start()
        errors: list[BaseException] = []
        half_sent = threading.Event()

        def emit_stream() -> None:
            try:
                for i in range(via_outbox):
                    with sessions.begin() as s:
                        source.emit(s, "src.thing.created", {"i": i})
                    if i == via_outbox // 3:
                        half_sent.set()
                    time.sleep(0.02)
            except BaseException as exc:
                errors.append(exc)

        def publish_stream() -> None:
            try:
                for i in range(direct):
                    # Blocks through the outage (retries with back-off), then goes through.
                    source.publish(source.new_event("src.thing.published", {"i": i}))
                    time.sleep(0.05)
            except BaseException as exc:
                errors.append(exc)

        streams = [threading.Thread(target=emit_stream), threading.Thread(target=publish_stream)]
        try:
            for t in streams:
                t.start()
            assert half_sent.wait(30)
            node.restart(down_for=1.0)
            for t in streams:
                t.join(120)
            assert not errors, errors

            def applied() -> int:
                with engine.connect() as c:
                    return c.execute(
                        sa.select(sa.func.count()).select_from(worker.applied)
                    ).scalar_one()

            deadline = time.monotonic() + 90
            while applied() < via_outbox + direct and time.monotonic() < deadline:
                time.sleep(0.1)
            assert source.pending() == 0
        finally:
            source.stop()
            sink.stop()

        with engine.connect() as c:
            rows = c.execute(
                sa.select(worker.applied.c.event_id, sa.func.count()).group_by(
                    worker.applied.c.event_id
                )
            ).all()
    engine.dispose()
    assert len(rows) == via_outbox + direct, "lost messages"
    assert all(n == 1 for _, n in rows), "a message was applied twice"
    assert sink.stats()["reconnects"] >= 1  # the consumer really lost the broker and came back
    # Committed once each (a commit whose ack the restart cut off came back as a duplicate).
    assert sink.stats()["done"] == via_outbox + direct
