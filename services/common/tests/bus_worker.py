"""A bus process the crash tests run and kill (SIGKILL) at a precise point.

    python bus_worker.py <mode> <bus_url> <db_url>

modes:
  consume-die-after-commit   handle one event, die after the DB commit, before the ack
  consume-die-before-commit  handle one event, die inside the handler (nothing committed)
  emit-die-after-commit      emit one event in a committed transaction, die before any publish
  relay-die-after-publish    relay the outbox once, die after the broker confirmed, before the
                             rows are marked sent
  consume                    handle events until killed (used by the broker-restart test)

The handler of the consuming modes records each application in `applied` (no unique key, so
a duplicate application would show as a second row).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import sqlalchemy as sa
from hdc_common.bus import Bus
from hdc_common.db import create_engine, session_factory
from sqlalchemy import event as sa_event

SOURCE_SERVICE = "src"
CONSUMER_SERVICE = "sink"
EVENT_PATTERN = "src.thing.*"
EVENT_QUEUE = "sink.things"

metadata = sa.MetaData()
applied = sa.Table(
    "applied",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def consumer_bus(url: str, sessions, on_apply=None, **kwargs) -> Bus:
    bus = Bus(url, service=CONSUMER_SERVICE, sessions=sessions, **kwargs)

    @bus.on_event(EVENT_PATTERN, queue=EVENT_QUEUE)
    def apply(session, event) -> None:
        session.execute(sa.insert(applied).values(event_id=event.id, pid=os.getpid()))
        if on_apply is not None:
            on_apply(session, event)

    return bus


def main() -> None:
    mode, url, db_url = sys.argv[1:4]
    sessions = session_factory(create_engine(db_url))

    if mode == "consume-die-after-commit":

        def after_commit(session, _event) -> None:
            sa_event.listen(session, "after_commit", lambda _s: die())

        bus = consumer_bus(url, sessions, after_commit, prefetch=1)
    elif mode == "consume-die-before-commit":
        bus = consumer_bus(url, sessions, lambda _s, _e: die(), prefetch=1)
    elif mode == "consume":
        bus = consumer_bus(url, sessions, prefetch=int(os.environ.get("HDC_TEST_PREFETCH", "20")))
    elif mode == "emit-die-after-commit":
        bus = Bus(url, service=SOURCE_SERVICE, sessions=sessions)  # not started: no relay
        with sessions.begin() as session:
            event = bus.emit(session, "src.thing.created", {"n": 1}, subject="one")
        print(event.id, flush=True)
        die()
        return
    elif mode == "relay-die-after-publish":
        bus = Bus(url, service=SOURCE_SERVICE, sessions=sessions)
        publish = bus.publisher.publish

        def publish_then_die(messages, **kwargs) -> None:
            publish(messages, **kwargs)
            print(len(messages), flush=True)
            die()

        bus.publisher.publish = publish_then_die  # type: ignore[method-assign]
        bus.relay_once()
        raise SystemExit("relay_once returned: nothing was pending")
    else:
        raise SystemExit(f"unknown mode {mode}")

    bus.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
