"""The transactional outbox: rows written in the caller's transaction, relayed to the broker.

`write` adds a row in the caller's session, so the business change and the message that
announces it commit (or roll back) together; the rows of one transaction reach the database
as one multi-row INSERT at its flush.

The relay takes unsent rows in id order, publishes them as one confirmed batch, and they
count as sent once that is confirmed. How it claims them depends on the database:

* PostgreSQL: one statement claims (`FOR UPDATE SKIP LOCKED`) and marks them, in a
  transaction held while publishing and committed only after the broker confirmed. Those are
  row locks: writers of new rows never wait for them, other relays (replicas, or a second
  Bus of the same service) skip to other rows, and a relay that dies drops its locks with
  its connection, so its rows are taken again at once.
* SQLite: a transaction there holds the whole database's write lock (the services begin
  IMMEDIATE), so the relay must not publish inside one. It reads a batch in a short
  transaction, claims it in memory (relays of one process never take the same rows),
  publishes with no transaction open, and marks the rows sent in a second short one.

Either way a relay that dies after publishing but before marking leaves the rows unsent,
so they are published again (as they would be by two processes sharing one SQLite file):
consumers drop such a duplicate by event id, so its effect still happens exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import orm
from sqlalchemy.orm import Session, sessionmaker

from hdc_common.bus import link
from hdc_common.bus.events import CloudEvent
from hdc_common.bus.link import BROKER_ERRORS, BusUnavailable, Outgoing, Publisher
from hdc_common.bus.tables import outbox, processed

log = logging.getLogger("hdc_common.bus")

_WAKE_KEY = "hdc_bus_wake"


class OutboxRow:
    """ORM view of an outbox row, so that rows join the caller's unit of work.

    Added objects are flushed together (one multi-row INSERT per flush, not one round trip
    per event) and follow the session's savepoints: a rolled-back `begin_nested()` drops
    the rows it added, exactly like the business objects next to them.
    """

    def __init__(self, **values: object) -> None:
        for name, value in values.items():
            setattr(self, name, value)


orm.registry().map_imperatively(OutboxRow, outbox)


def write(
    session: Session,
    event: CloudEvent,
    exchange: str,
    routing_key: str,
    wake: threading.Event | None = None,
) -> None:
    session.add(OutboxRow(**row(event, exchange, routing_key)))
    if wake is not None:
        wake_after_commit(session, wake)


def row(event: CloudEvent, exchange: str, routing_key: str) -> dict[str, Any]:
    """The column values of the outbox row that carries `event` (`id` and `sent_at` are
    left to the database), for a caller that inserts the row itself: see `Bus.emit_row`."""
    return {
        "event_id": event.id,
        "event_type": event.type,
        "exchange": exchange,
        "routing_key": routing_key,
        "body": event.to_json().decode(),
        "created_at": datetime.now(UTC),
    }


def wake_after_commit(session: Session, wake: threading.Event) -> None:
    """Nudge the relay as soon as the row is visible, instead of at its next poll."""
    registered: set[int] = session.info.setdefault(_WAKE_KEY, set())
    if id(wake) in registered:
        return
    registered.add(id(wake))
    sa_event.listen(session, "after_commit", lambda _s: wake.set())


def pending(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
        ).scalar_one()


class Relay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        *,
        batch: int = 500,
        interval: float = 1.0,
        backoff_max: float = 10.0,
        sent_retention: timedelta = timedelta(hours=1),
        processed_retention: timedelta = timedelta(days=7),
        prune_every: float = 300.0,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.batch = batch
        self.interval = interval
        self.backoff_max = backoff_max
        self.sent_retention = sent_retention
        self.processed_retention = processed_retention
        self.prune_every = prune_every
        self.wake = threading.Event()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = time.monotonic() + prune_every
        self._dialect_name: str | None = None
        self._claims_key = ""

    def relay_once(self) -> int:
        """Publish one batch of unsent rows; returns how many were published."""
        if self._dialect() == "sqlite":
            return self._relay_claimed()
        return self._relay_locked()

    def _dialect(self) -> str:
        if self._dialect_name is None:
            with self.sessions() as session:
                bind = session.get_bind()
                self._dialect_name = bind.dialect.name
                self._claims_key = bind.engine.url.render_as_string(hide_password=True)
        return self._dialect_name

    def _relay_claimed(self) -> int:
        """Claim (in this process), publish outside any transaction, mark sent."""
        claims = _claims_for(self._claims_key)
        with claims.lock:
            with self.sessions() as session, session.begin():
                query = _unsent(self.batch)
                if claims.ids:
                    query = query.where(outbox.c.id.not_in(claims.ids))
                rows = session.execute(query).all()
            ids = [r.id for r in rows]
            claims.ids.update(ids)
        if not rows:
            return 0
        try:
            self.publisher.publish([_outgoing(r) for r in rows])
            with self.sessions() as session, session.begin():
                session.execute(
                    sa.update(outbox).where(outbox.c.id.in_(ids)).values(sent_at=datetime.now(UTC))
                )
        finally:
            with claims.lock:
                claims.ids.difference_update(ids)
        return len(rows)

    def _relay_locked(self) -> int:
        """Claim and mark sent in one statement (FOR UPDATE SKIP LOCKED), publish, commit.

        The mark is only visible once the commit follows a confirmed publish: a failed
        publish rolls it back and the rows stay unsent, locked by nobody.
        """
        with self.sessions() as session, session.begin():
            rows = (
                session.connection()
                .exec_driver_sql(_CLAIM_PG, {"sent_at": datetime.now(UTC), "batch": self.batch})
                .all()
            )
            if not rows:
                return 0
            rows.sort(key=_row_id)  # RETURNING has no order; publishing keeps id order
            self.publisher.publish([_outgoing(r) for r in rows])
        return len(rows)

    def prune(self) -> None:
        """Forget sent rows and old processed-message ids (a redelivery that late cannot happen)."""
        now = datetime.now(UTC)
        with self.sessions() as session, session.begin():
            session.execute(sa.delete(outbox).where(outbox.c.sent_at < now - self.sent_retention))
            session.execute(
                sa.delete(processed).where(
                    processed.c.processed_at < now - self.processed_retention
                )
            )

    # -- thread --

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="hdc-bus-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        attempt = 0
        while not self._stop_event.is_set():
            # Cleared before looking, so a commit that lands while we publish wakes us again.
            self.wake.clear()
            try:
                published = self.relay_once()
                attempt = 0
                if published >= self.batch:
                    continue  # more are waiting
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + self.prune_every
                    self.prune()
            except (*BROKER_ERRORS, BusUnavailable, sa.exc.SQLAlchemyError) as exc:
                delay = link.backoff_delay(attempt, 0.2, self.backoff_max, jitter=True)
                attempt += 1
                log.warning("bus outbox relay failed (%r); retrying in %.1fs", exc, delay)
                self._stop_event.wait(delay)
                continue
            except Exception:  # keep relaying whatever happens; say why loudly
                log.exception("bus outbox relay crashed; retrying")
                self._stop_event.wait(self.backoff_max)
                continue
            self.wake.wait(self.interval)


# The relay's claim on PostgreSQL as driver SQL: it runs after every commit that wrote a
# row, and building it with SQLAlchemy cost more CPU than the database spends on it.
_CLAIM_PG = (
    f"UPDATE {outbox.name} SET sent_at = %(sent_at)s WHERE id IN ("
    f"SELECT id FROM {outbox.name} WHERE sent_at IS NULL ORDER BY id LIMIT %(batch)s "
    "FOR UPDATE SKIP LOCKED) "
    "RETURNING id, event_id, event_type, exchange, routing_key, body"
)


def _row_id(row: sa.Row) -> int:
    return int(row.id)


def _unsent(batch: int) -> sa.Select:
    return (
        sa.select(
            outbox.c.id,
            outbox.c.event_id,
            outbox.c.event_type,
            outbox.c.exchange,
            outbox.c.routing_key,
            outbox.c.body,
        )
        .where(outbox.c.sent_at.is_(None))
        .order_by(outbox.c.id)
        .limit(batch)
    )


@dataclass
class _Claims:
    """Outbox rows that a relay of this process is publishing (SQLite: no row locks)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: set[int] = field(default_factory=set)


_CLAIMS: dict[str, _Claims] = {}
_CLAIMS_LOCK = threading.Lock()


def _claims_for(database: str) -> _Claims:
    with _CLAIMS_LOCK:
        return _CLAIMS.setdefault(database, _Claims())


def _outgoing(row: sa.Row) -> Outgoing:
    ensure = None
    if row.exchange == link.COMMANDS:
        ensure = link.command_queue(row.routing_key)
    return Outgoing(
        exchange=row.exchange,
        routing_key=row.routing_key,
        body=row.body.encode(),
        message_id=row.event_id,
        event_type=row.event_type,
        ensure_queue=ensure,
    )
