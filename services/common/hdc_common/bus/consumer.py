"""The consumer thread: deliveries -> handlers in a DB transaction -> ack after commit.

Exactly-once effect on top of at-least-once delivery: the handler's transaction also inserts
(event id, queue) into `hdc_bus_processed`; a redelivered message finds its row and is acked
without running the handler again. The ack is sent only after the commit, so a consumer
that dies anywhere before it leaves the message to be redelivered.

Deliveries that arrive together (up to `prefetch`) are applied in one transaction — one
commit instead of many, which is where the throughput comes from. If any handler in such a
group raises, the group is rolled back and every message is applied again on its own, so a
failing message never takes its neighbours down with it.
"""

from __future__ import annotations

import enum
import logging
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
from kombu import Consumer as KombuConsumer
from kombu import Queue
from kombu import binding as kombu_binding
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from hdc_common.bus import link
from hdc_common.bus.events import CloudEvent, InvalidEvent
from hdc_common.bus.link import ATTEMPT_HEADER, BROKER_ERRORS, ERROR_HEADER, Outgoing, Publisher
from hdc_common.bus.tables import processed

log = logging.getLogger("hdc_common.bus")
_tracer = trace.get_tracer("hdc_common.bus")

Handler = Callable[[Session, CloudEvent], None]

RECONNECT_MAX_S = 5.0  # a broker back after a restart is used within seconds
_ERROR_MAX = 2000  # x-hdc-error stays a readable header, not a core dump


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` is zero or more words."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


@dataclass
class Subscription:
    """One queue this service consumes, with its bindings and handlers."""

    queue: str
    exchange: Any  # kombu Exchange
    binding_keys: list[str] = field(default_factory=list)
    handlers: list[tuple[str, Handler]] = field(default_factory=list)
    is_commands: bool = False

    def handlers_for(self, event_type: str) -> list[Handler]:
        if self.is_commands:
            return [h for t, h in self.handlers if t == event_type]
        return [h for p, h in self.handlers if topic_matches(p, event_type)]

    def main_queue(self) -> Queue:
        return Queue(
            self.queue,
            bindings=[kombu_binding(self.exchange, routing_key=k) for k in self.binding_keys],
            durable=True,
        )

    def retry_queue(self) -> Queue:
        # Messages wait here for their per-message TTL, then RabbitMQ dead-letters them back
        # to the main queue through the default exchange.
        return Queue(
            f"{self.queue}.retry",
            durable=True,
            queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.queue},
        )

    def dead_letter_queue(self) -> Queue:
        return Queue(f"{self.queue}.dlq", durable=True)


class Outcome(enum.Enum):
    DONE = "done"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    TRANSIENT = "transient"  # the database is unavailable: back to the queue, no attempt spent
    POISON = "poison"  # cannot ever succeed: straight to the dead-letter queue


_STAT = {
    Outcome.DONE: "done",
    Outcome.DUPLICATE: "duplicate",
    Outcome.FAILED: "retried",
    Outcome.TRANSIENT: "requeued",
    Outcome.POISON: "dead_lettered",
}


@dataclass
class Delivery:
    message: Any  # kombu Message
    sub: Subscription
    event: CloudEvent | None = None
    attempt: int = 1
    outcome: Outcome | None = None
    error: str = ""

    @property
    def key(self) -> tuple[str, str]:
        assert self.event is not None
        return (self.event.id, self.sub.queue)


class ConsumerThread(threading.Thread):
    def __init__(
        self,
        *,
        url: str,
        service: str,
        subscriptions: Sequence[Subscription],
        sessions: sessionmaker[Session],
        publisher: Publisher,
        prefetch: int,
        max_attempts: int,
        backoff: float,
        backoff_max: float,
        poll_interval: float = 1.0,
        stats: Counter[str] | None = None,
    ) -> None:
        super().__init__(name=f"hdc-bus-consumer-{service}", daemon=True)
        self.url = url
        self.subscriptions = list(subscriptions)
        self.sessions = sessions
        self.publisher = publisher
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self._db_down = 0  # consecutive batches the database refused
        self.ready = threading.Event()
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._stop_event = threading.Event()
        self._batch: list[Delivery] = []
        self._inflight = 0
        self._timers: set[threading.Timer] = set()
        self._timers_lock = threading.Lock()
        self._memory = link.is_memory(url)

    # -- lifecycle --

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def idle(self) -> bool:
        with self._timers_lock:
            timers = len(self._timers)
        return self._inflight == 0 and timers == 0

    def run(self) -> None:
        attempt = 0
        while not self._stop_event.is_set():
            # No AMQP heartbeats: a handler may legitimately run for minutes without touching
            # the connection. A restarted broker closes the socket, and py-amqp's TCP
            # keepalive settings detect a vanished peer.
            conn = link.connect(self.url)
            channel = None
            lost: BaseException | None = None
            try:
                conn.connect()
                channel = conn.channel()
                self._declare(channel)
                consumers = [self._consumer_for(channel, sub) for sub in self.subscriptions]
                for c in consumers:
                    c.consume()
                if self.ready.is_set():
                    self.stats["reconnects"] += 1
                attempt = 0
                self.ready.set()
                self._loop(conn)
            except (*BROKER_ERRORS, link.BusUnavailable) as exc:
                lost = exc
            except Exception as exc:
                # A bug must not silently end consumption: log it, hand the unacked
                # deliveries back, and start over on a fresh connection.
                log.exception("bus consumer failed; restarting it")
                lost = exc
            finally:
                # Closing the channel hands unacked deliveries back to their queue (the
                # in-process broker only does that on channel close, not connection close).
                self._batch.clear()
                self._inflight = 0
                link.close_quietly(channel, conn)
            if lost is not None:
                delay = link.backoff_delay(attempt, 0.2, RECONNECT_MAX_S, jitter=True)
                attempt += 1
                log.warning("bus consumer lost the broker (%r); reconnecting in %.1fs", lost, delay)
                self._stop_event.wait(delay)

    def _declare(self, channel: Any) -> None:
        link.COMMANDS_EXCHANGE(channel).declare()
        link.EVENTS_EXCHANGE(channel).declare()
        for sub in self.subscriptions:
            sub.main_queue()(channel).declare()
            sub.dead_letter_queue()(channel).declare()
            if not self._memory:
                sub.retry_queue()(channel).declare()

    def _consumer_for(self, channel: Any, sub: Subscription) -> KombuConsumer:
        def on_message(message: Any) -> None:
            self._inflight += 1
            self._batch.append(Delivery(message=message, sub=sub))

        return KombuConsumer(
            channel,
            queues=[sub.main_queue()],
            on_message=on_message,
            prefetch_count=self.prefetch,
            no_ack=False,
            auto_declare=False,
        )

    def _loop(self, conn: Any) -> None:
        while not self._stop_event.is_set():
            try:
                conn.drain_events(timeout=self.poll_interval)
            except TimeoutError:
                continue
            # Take whatever else is already here (up to prefetch) for one group commit.
            while len(self._batch) < self.prefetch:
                try:
                    conn.drain_events(timeout=0)
                except TimeoutError:
                    break
            batch, self._batch = self._batch, []
            self._handle(batch)

    # -- processing --

    def _handle(self, batch: list[Delivery]) -> None:
        work: list[Delivery] = []
        seen: set[tuple[str, str]] = set()
        for d in batch:
            self._decode(d)
            if d.outcome is not None:
                continue
            if d.key in seen:  # the same event twice in one group (an outbox re-send)
                d.outcome = Outcome.DUPLICATE
                continue
            seen.add(d.key)
            work.append(d)
        if work:
            self._apply(work)
        self._settle(batch)

    def _decode(self, d: Delivery) -> None:
        headers = d.message.headers or {}
        try:
            d.attempt = max(1, int(headers.get(ATTEMPT_HEADER, 1)))
        except (TypeError, ValueError):
            d.attempt = 1
        try:
            d.event = CloudEvent.from_json(body_bytes(d.message))
        except InvalidEvent as exc:
            d.outcome, d.error = Outcome.POISON, f"InvalidEvent: {exc}"
            return
        if not d.sub.handlers_for(d.event.type):
            if d.sub.is_commands:
                d.outcome = Outcome.POISON
                d.error = f"LookupError: no handler for command type {d.event.type!r}"
            else:
                d.outcome = Outcome.DONE  # bound by an old pattern; nothing here wants it

    def _apply(self, work: list[Delivery]) -> None:
        if len(work) > 1:
            culprit: Delivery | None = None
            try:
                with self.sessions() as session, session.begin():
                    fresh = self._claim(session, work)
                    for d in work:
                        if d.key in fresh:
                            culprit = d
                            self._run_handlers(session, d)
                    culprit = None
                for d in work:
                    d.outcome = Outcome.DONE if d.key in fresh else Outcome.DUPLICATE
                return
            except Exception as exc:
                # The handler that raised has had its attempt; the rest (rolled back with it)
                # are applied again one by one, so they do not share its fate.
                log.debug("group of %d failed; applying one by one", len(work), exc_info=True)
                if culprit is not None:
                    culprit.outcome, culprit.error = _failure(exc)
                    work = [d for d in work if d is not culprit]
        for d in work:
            try:
                with self.sessions() as session, session.begin():
                    try:
                        fresh = self._claim(session, [d])
                    except sqlalchemy.exc.OperationalError as exc:
                        raise _DatabaseUnavailable() from exc
                    if fresh:
                        self._run_handlers(session, d)
                d.outcome = Outcome.DONE if fresh else Outcome.DUPLICATE
            except Exception as exc:  # a handler may raise anything
                d.outcome, d.error = _failure(exc)

    def _claim(self, session: Session, work: Sequence[Delivery]) -> set[tuple[str, str]]:
        """Insert the processed-message rows; returns those that were not there yet."""
        now = datetime.now(UTC)
        # In key order, so that two replicas claiming overlapping redeliveries lock the rows
        # in the same order and cannot deadlock each other.
        keys = sorted(d.key for d in work)
        rows = [{"event_id": e, "queue": q, "processed_at": now} for e, q in keys]
        dialect = session.get_bind().dialect.name
        insert: Any = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
        if insert is None:
            return self._claim_portable(session, rows)
        # executemany with RETURNING: SQLAlchemy folds it into multi-row INSERTs from one
        # cached compiled statement; conflicting (already processed) rows return nothing.
        stmt = (
            insert(processed)
            .on_conflict_do_nothing()
            .returning(processed.c.event_id, processed.c.queue)
        )
        return {(r[0], r[1]) for r in session.execute(stmt, rows)}

    @staticmethod
    def _claim_portable(session: Session, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        fresh = set()
        for row in rows:
            exists = session.execute(
                sa.select(processed.c.event_id).where(
                    processed.c.event_id == row["event_id"], processed.c.queue == row["queue"]
                )
            ).first()
            if exists is None:
                session.execute(sa.insert(processed).values(row))
                fresh.add((row["event_id"], row["queue"]))
        return fresh

    def _run_handlers(self, session: Session, d: Delivery) -> None:
        event = d.event
        assert event is not None
        token = None
        if event.traceparent:
            token = otel_context.attach(propagate.extract({"traceparent": event.traceparent}))
        try:
            with _tracer.start_as_current_span(
                f"{d.sub.queue} process",
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.destination.name": d.sub.queue,
                    "messaging.message.id": event.id,
                    "cloudevents.event_type": event.type,
                },
            ):
                for handler in d.sub.handlers_for(event.type):
                    handler(session, event)
        finally:
            if token is not None:
                otel_context.detach(token)

    def _settle(self, batch: list[Delivery]) -> None:
        """Publish retry / dead-letter copies (confirmed), then ack every delivery."""
        copies: list[Outgoing] = []
        delayed: list[tuple[float, Outgoing]] = []
        for d in batch:
            if d.outcome in (Outcome.FAILED, Outcome.POISON):
                self._plan_failure(d, copies, delayed)
        if copies or (delayed and not self._memory):
            self.publisher.publish(
                copies + [o for _, o in delayed if not self._memory],
                timeout=30.0,
                stop=self._stop_event,
            )
        for delay, outgoing in delayed if self._memory else ():
            self._later(delay, outgoing)
        for d in batch:
            # Counted before the ack: "done" means committed, even if the ack is then lost.
            self.stats[_STAT[d.outcome] if d.outcome else "done"] += 1
        self._ack(batch)
        if any(d.outcome is Outcome.TRANSIENT for d in batch):
            # Stop taking messages while the database is away; they wait in the broker.
            delay = link.backoff_delay(self._db_down, 0.2, RECONNECT_MAX_S, jitter=True)
            self._db_down += 1
            log.warning("bus: database unavailable (%s); pausing %.1fs", batch[0].error, delay)
            self._stop_event.wait(delay)
        else:
            self._db_down = 0

    def _ack(self, batch: list[Delivery]) -> None:
        requeue = [d for d in batch if d.outcome is Outcome.TRANSIENT]
        acks = [d for d in batch if d.outcome is not Outcome.TRANSIENT]
        for d in requeue:
            d.message.reject(requeue=True)
        if len(acks) > 1 and not self._memory:
            # Every delivery this channel has handed over and not yet settled is in this
            # batch, so one cumulative ack up to the highest tag settles exactly these.
            last = max(acks, key=lambda d: d.message.delivery_tag).message
            last.channel.basic_ack(last.delivery_tag, multiple=True)
        else:
            for d in acks:
                d.message.ack()
        self._inflight -= len(batch)

    def _plan_failure(
        self, d: Delivery, copies: list[Outgoing], delayed: list[tuple[float, Outgoing]]
    ) -> None:
        msg = d.message
        queue = d.sub.queue
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("x-death")}
        event_id = d.event.id if d.event else (msg.properties.get("message_id") or "")
        event_type = d.event.type if d.event else (msg.properties.get("type") or "")
        final = d.outcome is Outcome.POISON or (
            d.outcome is Outcome.FAILED and d.attempt >= self.max_attempts
        )
        if final:
            d.outcome = Outcome.POISON
            log.error(
                "bus: %s %s failed on attempt %d; dead-lettered to %s.dlq: %s",
                event_type,
                event_id,
                d.attempt,
                queue,
                d.error.splitlines()[0] if d.error else "",
            )
            copies.append(
                Outgoing(
                    exchange="",
                    routing_key=f"{queue}.dlq",
                    body=body_bytes(msg),
                    message_id=event_id,
                    event_type=event_type,
                    headers={
                        **headers,
                        ATTEMPT_HEADER: d.attempt,
                        ERROR_HEADER: d.error[:_ERROR_MAX],
                    },
                )
            )
            return
        attempt = d.attempt + 1
        delay = link.backoff_delay(d.attempt - 1, self.backoff, self.backoff_max)
        log.warning(
            "bus: %s %s failed on attempt %d, retrying in %.2fs: %s",
            event_type,
            event_id,
            d.attempt,
            delay,
            d.error.splitlines()[0] if d.error else "",
        )
        common = {
            "body": body_bytes(msg),
            "message_id": event_id,
            "event_type": event_type,
            "headers": {**headers, ATTEMPT_HEADER: attempt},
        }
        if self._memory:
            delayed.append((delay, Outgoing(exchange="", routing_key=queue, **common)))
        else:
            delayed.append(
                (
                    delay,
                    Outgoing(
                        exchange="", routing_key=f"{queue}.retry", expiration_s=delay, **common
                    ),
                )
            )

    def _later(self, delay: float, outgoing: Outgoing) -> None:
        """In-process transport: a timer stands in for the retry queue's TTL."""

        def fire() -> None:
            try:
                self.publisher.publish([outgoing], timeout=30.0)
            except Exception:  # nothing else can take it now; say so loudly
                log.exception("bus: could not re-queue %s for retry", outgoing.message_id)
            finally:
                with self._timers_lock:
                    self._timers.discard(timer)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._timers_lock:
            self._timers.add(timer)
        timer.start()


def body_bytes(message: Any) -> bytes:
    # py-amqp hands over a str when the message has a content_encoding; memory gives bytes.
    body = message.body
    return body.encode() if isinstance(body, str) else bytes(body)


class _DatabaseUnavailable(Exception):
    """The processed-message insert failed operationally: no handler ran, nothing to blame."""


def _failure(exc: BaseException) -> tuple[Outcome, str]:
    # Not the message's fault: the database could not be reached (before any handler ran,
    # or the connection died under it). The message goes back to the queue unspent.
    if isinstance(exc, _DatabaseUnavailable):
        return Outcome.TRANSIENT, _describe(exc.__cause__ or exc)
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return Outcome.TRANSIENT, _describe(exc)
    return Outcome.FAILED, _describe(exc)


def _describe(exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last


__all__ = ["ConsumerThread", "Handler", "Subscription", "topic_matches"]
