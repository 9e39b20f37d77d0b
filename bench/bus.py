"""Bus throughput: the hdc bus against raw pika, through the same real RabbitMQ, in one run.

Both sides move N persistent, publisher-confirmed messages of the same size through a
durable queue, first publishing all of them, then consuming all of them with manual acks:

- pika (the anchor): `basic_publish` on a confirming BlockingConnection channel (each call
  returns once the broker confirmed), then `basic_consume` with manual `basic_ack`;
- hdc: `bus.emit()` inside the service's DB transactions (the outbox; 100 events per
  transaction), the relay publishing with batched confirms and marking rows sent; then the
  consumer running the handler in a DB transaction that records the event id
  (exactly-once), acking after the commit.

So the hdc numbers include the database work the bus guarantees rest on. Prints one JSON
line; `ratio` = hdc end-to-end throughput / pika end-to-end throughput (goal >= 0.5).

    .venv/bin/python bench/bus.py [--url amqp://...] [--db-url postgresql+psycopg://...] [-n 20000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pika
import sqlalchemy as sa
from hdc_common.bus import Bus, CloudEvent, create_tables
from hdc_common.db import create_engine, session_factory

MGMT = os.environ.get("HDC_BENCH_RABBITMQ_MGMT", "http://127.0.0.1:15672")
AUTH = ("hdc", "hdc")
PG = os.environ.get("HDC_BENCH_POSTGRES", "postgresql+psycopg://hdc:hdc@127.0.0.1:5432")
EMIT_PER_TX = 100


@contextmanager
def temp_vhost() -> Iterator[str]:
    vhost = f"bench-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=MGMT, auth=AUTH, timeout=30) as api:
        api.put(f"/api/vhosts/{vhost}").raise_for_status()
        api.put(
            f"/api/permissions/{vhost}/{AUTH[0]}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
        try:
            yield f"amqp://{AUTH[0]}:{AUTH[1]}@127.0.0.1:5672/{vhost}"
        finally:
            api.delete(f"/api/vhosts/{vhost}")


@contextmanager
def temp_database() -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def payload(size: int) -> dict:
    return {"uuid": str(uuid.uuid4()), "pad": "x" * size}


def run_pika(url: str, n: int, size: int, prefetch: int) -> dict:
    params = pika.URLParameters(url)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = "bench.pika"
    ch.queue_declare(queue, durable=True)
    props = pika.BasicProperties(
        delivery_mode=2,
        content_type="application/cloudevents+json",
        message_id="",
        type="bench.item.made",
    )
    bodies = [
        CloudEvent.create("bench.item.made", payload(size), source="/bench").to_json()
        for _ in range(n)
    ]
    t0 = time.perf_counter()
    for body in bodies:
        ch.basic_publish("", queue, body, props)  # returns after the broker's confirm
    t_pub = time.perf_counter() - t0

    ch.basic_qos(prefetch_count=prefetch)
    seen = 0

    def on_message(chan, method, _props, _body) -> None:
        nonlocal seen
        chan.basic_ack(method.delivery_tag)
        seen += 1
        if seen == n:
            chan.stop_consuming()

    ch.basic_consume(queue, on_message)
    t0 = time.perf_counter()
    ch.start_consuming()
    t_con = time.perf_counter() - t0
    conn.close()
    return {"publish_s": t_pub, "consume_s": t_con}


def run_hdc(url: str, db_url: str, n: int, size: int, prefetch: int) -> dict:
    engine = create_engine(db_url)
    create_tables(engine)
    sessions = session_factory(engine)
    producer = Bus(url, service="benchp", sessions=sessions, relay_batch=500, relay_interval=0.05)
    consumer = Bus(url, service="benchc", sessions=sessions, prefetch=prefetch)
    done = threading.Event()
    seen = 0

    @consumer.on_event("benchp.item.*", queue="benchc.items")
    def on_item(_session, _event) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    # Declare the queue (and bindings) first, then stop consuming so the phases stay apart.
    consumer.start()
    consumer.stop()
    data = [payload(size) for _ in range(n)]

    producer.start()
    t0 = time.perf_counter()
    for i in range(0, n, EMIT_PER_TX):
        with sessions.begin() as s:
            for item in data[i : i + EMIT_PER_TX]:
                producer.emit(s, "benchp.item.made", item, subject=item["uuid"])
    while producer.pending():
        time.sleep(0.01)
    t_pub = time.perf_counter() - t0
    producer.stop()

    t0 = time.perf_counter()
    consumer.start()
    if not done.wait(600):
        raise SystemExit(f"hdc consumer saw only {seen} of {n}")
    t_con = time.perf_counter() - t0
    consumer.stop()
    with engine.connect() as c:
        recorded = c.execute(sa.text("SELECT count(*) FROM hdc_bus_processed")).scalar_one()
    engine.dispose()
    if recorded != n:
        raise SystemExit(f"hdc recorded {recorded} processed messages, expected {n}")
    return {"publish_s": t_pub, "consume_s": t_con}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url", help="amqp:// URL of an existing vhost (default: a temporary vhost)"
    )
    parser.add_argument(
        "--db-url", help="SQLAlchemy URL for the hdc side (default: a temporary PostgreSQL DB)"
    )
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=200, help="payload padding in bytes")
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with ExitStack() as stack:
        url = args.url or stack.enter_context(temp_vhost())
        db_url = args.db_url or stack.enter_context(temp_database())
        p = run_pika(url, args.n, args.size, args.prefetch)
        h = run_hdc(url, db_url, args.n, args.size, args.prefetch)

    def rates(r: dict) -> dict:
        return {
            "publish_msg_s": round(args.n / r["publish_s"]),
            "consume_msg_s": round(args.n / r["consume_s"]),
            "end_to_end_msg_s": round(args.n / (r["publish_s"] + r["consume_s"])),
        }

    pr, hr = rates(p), rates(h)
    print(
        json.dumps(
            {
                "bench": "bus",
                "messages": args.n,
                "payload_bytes": args.size,
                "prefetch": args.prefetch,
                "hdc_db": sa.engine.make_url(db_url).get_backend_name(),
                "hdc_emit_per_tx": EMIT_PER_TX,
                "pika": pr,
                "hdc": hr,
                "ratio": round(hr["end_to_end_msg_s"] / pr["end_to_end_msg_s"], 3),
                "goal": 0.5,
            }
        )
    )


if __name__ == "__main__":
    main()
