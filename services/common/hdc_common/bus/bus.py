"""`Bus`: the one object a service uses to send, emit and handle messages."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kombu import Queue
from sqlalchemy.orm import Session, sessionmaker

from hdc_common.bus import link, outbox
from hdc_common.bus.consumer import ConsumerThread, Handler, Subscription, body_bytes
from hdc_common.bus.events import CloudEvent, InvalidEvent
from hdc_common.bus.link import ATTEMPT_HEADER, COMMANDS, ERROR_HEADER, EVENTS, Outgoing, Publisher

log = logging.getLogger("hdc_common.bus")

_SERVICE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_WORD = r"[A-Za-z0-9_-]+"
_EVENT_TYPE = re.compile(rf"^{_WORD}(\.{_WORD}){{2,}}$")  # <service>.<entity>.<event>
_COMMAND_TYPE = re.compile(rf"^{_WORD}(\.{_WORD})+$")
_PATTERN = re.compile(rf"^({_WORD}|\*|#)(\.({_WORD}|\*|#))*$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


_STAT_KEYS = ("done", "duplicate", "retried", "requeued", "dead_lettered", "reconnects")


@dataclass(frozen=True)
class DeadLetter:
    """A message parked in `<queue>.dlq`: the event, how often it was tried and why it failed."""

    event: CloudEvent | None
    body: bytes
    attempt: int
    error: str


class Bus:
    """Commands, events, the outbox relay and the consumers of one service.

    `url` is `amqp://user:pass@host:port/vhost` (RabbitMQ) or `memory://` (in-process; use
    `memory:///<name>` for an isolated broker). `sessions` is the service's SQLAlchemy
    `sessionmaker`: required for `emit`/`send` (outbox) and for handlers (exactly-once).
    """

    def __init__(
        self,
        url: str,
        *,
        service: str,
        sessions: sessionmaker[Session] | None = None,
        prefetch: int = 100,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 60.0,
        relay_interval: float = 1.0,
        relay_batch: int = 500,
        confirm_timeout: float = 30.0,
        publish_timeout: float = 30.0,
    ) -> None:
        link.check_url(url)
        if not _SERVICE.match(service):
            raise ValueError(f"service {service!r} must match {_SERVICE.pattern}")
        if prefetch < 1 or max_attempts < 1 or relay_batch < 1:
            raise ValueError("prefetch, max_attempts and relay_batch must be >= 1")
        if backoff < 0 or backoff_max < backoff:
            raise ValueError("need 0 <= backoff <= backoff_max")
        self.url = url
        self.service = service
        self.source = f"/hdc/{service}"
        self.sessions = sessions
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.publish_timeout = publish_timeout
        self.publisher = Publisher(
            url, confirm_timeout=confirm_timeout, backoff_max=min(backoff_max, 5.0)
        )
        self._relay = (
            outbox.Relay(
                sessions,
                self.publisher,
                batch=relay_batch,
                interval=relay_interval,
                backoff_max=5.0,
            )
            if sessions is not None
            else None
        )
        self._subs: dict[str, Subscription] = {}
        self._consumer: ConsumerThread | None = None
        self._stats: Counter[str] = Counter()
        self._started = False

    # -- sending --

    def new_event(self, type: str, data: Any = None, *, subject: str | None = None) -> CloudEvent:
        """A CloudEvent from this service, carrying the current trace."""
        return CloudEvent.create(type, data, source=self.source, subject=subject)

    def emit(
        self, session: Session, type: str, data: Any = None, subject: str | None = None
    ) -> CloudEvent:
        """Announce `type` on hdc.events once `session`'s transaction commits (outbox)."""
        if not _EVENT_TYPE.match(type):
            raise InvalidEvent(f"event type {type!r} must look like <service>.<entity>.<event>")
        self._need_relay()
        event = self.new_event(type, data, subject=subject)
        outbox.write(session, event, EVENTS, type, self._wake())
        return event

    def emit_row(
        self, session: Session, type: str, data: Any = None, subject: str | None = None
    ) -> dict[str, Any]:
        """`emit`, for a caller that writes the outbox row itself, in its own statement.

        Returns the values of the row (`hdc_common.bus.tables.outbox`; `id` and `sent_at`
        left to their defaults) that the caller must insert in `session`'s transaction: a
        service that already sends its changes as one statement folds the event into it
        instead of paying for an ORM flush and a round trip of its own. The relay publishes
        the row like any other, and is woken when `session` commits.
        """
        if not _EVENT_TYPE.match(type):
            raise InvalidEvent(f"event type {type!r} must look like <service>.<entity>.<event>")
        self._need_relay()
        values = outbox.row(self.new_event(type, data, subject=subject), EVENTS, type)
        wake = self._wake()
        if wake is not None:
            outbox.wake_after_commit(session, wake)
        return values

    def send(
        self,
        session: Session,
        target_service: str,
        type: str,
        data: Any = None,
        subject: str | None = None,
    ) -> CloudEvent:
        """Send command `type` to `target_service` once `session` commits (outbox)."""
        if not _SERVICE.match(target_service):
            raise ValueError(f"target service {target_service!r} must match {_SERVICE.pattern}")
        if not _COMMAND_TYPE.match(type):
            raise InvalidEvent(
                f"command type {type!r} must be dotted words, e.g. im.infrastructure.create"
            )
        self._need_relay()
        event = self.new_event(type, data, subject=subject)
        outbox.write(session, event, COMMANDS, target_service, self._wake())
        return event

    def publish(
        self, event: CloudEvent, exchange: str = EVENTS, routing_key: str | None = None
    ) -> None:
        """Publish now, outside any transaction; returns once the broker confirmed it.

        Retries with back-off for `publish_timeout` seconds, then raises `BusUnavailable`.
        """
        if exchange not in (EVENTS, COMMANDS, ""):
            raise ValueError(f"exchange must be {EVENTS!r} or {COMMANDS!r}, not {exchange!r}")
        key = routing_key if routing_key is not None else event.type
        if exchange == COMMANDS and not _SERVICE.match(key):
            raise ValueError(f"a command's routing key is the target service, not {key!r}")
        self.publisher.publish(
            [
                Outgoing(
                    exchange=exchange,
                    routing_key=key,
                    body=event.to_json(),
                    message_id=event.id,
                    event_type=event.type,
                    ensure_queue=link.command_queue(key) if exchange == COMMANDS else None,
                )
            ],
            timeout=self.publish_timeout,
        )

    # -- handling --

    def on_command(self, type: str) -> Callable[[Handler], Handler]:
        """Handle command `type`, consumed from `<service>.commands`."""
        if not _COMMAND_TYPE.match(type):
            raise ValueError(f"command type {type!r} must be dotted words")
        sub = self._subscription(f"{self.service}.commands", commands=True)
        if any(t == type for t, _ in sub.handlers):
            raise ValueError(f"command {type!r} already has a handler")

        def register(fn: Handler) -> Handler:
            self._check_not_started()
            sub.handlers.append((type, fn))
            return fn

        return register

    def on_event(self, pattern: str, queue: str | None = None) -> Callable[[Handler], Handler]:
        """Handle events whose type matches the topic `pattern` (`*` one word, `#` any).

        `queue` (default `<service>.events`) is the durable queue they are consumed from;
        replicas of the service share it, other services use their own.
        """
        if not _PATTERN.match(pattern):
            raise ValueError(f"event pattern {pattern!r} is not an AMQP topic pattern")
        name = queue or f"{self.service}.events"
        if not _QUEUE.match(name) or name.endswith((".retry", ".dlq", ".commands")):
            raise ValueError(f"queue {name!r} is not a valid event queue name")
        sub = self._subscription(name, commands=False)

        def register(fn: Handler) -> Handler:
            self._check_not_started()
            if pattern not in sub.binding_keys:
                sub.binding_keys.append(pattern)
            sub.handlers.append((pattern, fn))
            return fn

        return register

    def _subscription(self, queue: str, *, commands: bool) -> Subscription:
        self._check_not_started()
        sub = self._subs.get(queue)
        if sub is None:
            sub = Subscription(
                queue=queue,
                exchange=link.COMMANDS_EXCHANGE if commands else link.EVENTS_EXCHANGE,
                binding_keys=[self.service] if commands else [],
                is_commands=commands,
            )
            self._subs[queue] = sub
        return sub

    def _check_not_started(self) -> None:
        if self._started:
            raise RuntimeError("register handlers before bus.start()")

    # -- lifecycle --

    def start(self, wait: float = 10.0) -> bool:
        """Start the outbox relay and the consumers; True once the consumers' queues exist."""
        if self._started:
            return True
        if self._subs and self.sessions is None:
            raise ValueError("handlers run in a DB transaction: pass sessions= to Bus()")
        self._started = True
        if self._relay is not None:
            self._relay.start()
        if not self._subs:
            return True
        assert self.sessions is not None
        self._consumer = ConsumerThread(
            url=self.url,
            service=self.service,
            subscriptions=list(self._subs.values()),
            sessions=self.sessions,
            publisher=self.publisher,
            prefetch=self.prefetch,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            backoff_max=self.backoff_max,
            poll_interval=0.2 if link.is_memory(self.url) else 1.0,
            stats=self._stats,
        )
        self._consumer.start()
        ready = self._consumer.ready.wait(wait)
        if not ready:
            log.warning(
                "bus consumers for %s not connected after %.0fs; still trying", self.service, wait
            )
        return ready

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consumers (unacked messages go back to the queue) and the relay; idempotent."""
        if self._consumer is not None:
            self._consumer.stop(timeout)
            self._consumer = None
        if self._relay is not None:
            self._relay.stop(timeout)
        self.publisher.close()
        self._started = False

    def __enter__(self) -> Bus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests and operations --

    def relay_once(self) -> int:
        """Publish one batch of the outbox now; returns how many messages went out."""
        if self._relay is None:
            raise ValueError("no outbox without sessions=")
        return self._relay.relay_once()

    def pending(self) -> int:
        """Outbox rows not yet published."""
        if self.sessions is None:
            return 0
        return outbox.pending(self.sessions)

    def stats(self) -> dict[str, int]:
        """Deliveries settled by the consumers, by outcome, and consumer reconnects."""
        return {k: self._stats[k] for k in _STAT_KEYS}

    def queue_depth(self, queue: str) -> int:
        """Messages ready in `queue` on the broker."""
        return self.publisher.queue_depth(queue)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the outbox is empty and the consumers have nothing left to do."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while True:
            if self._is_quiet():
                quiet += 1
                if quiet >= 3:  # a delivery may be on the wire between two looks
                    return True
            else:
                quiet = 0
            if time.monotonic() >= deadline:
                return False
            if self._relay is not None and self._started:
                self._relay.wake.set()
            time.sleep(0.05)

    def _is_quiet(self) -> bool:
        if self.pending():
            return False
        consumer = self._consumer
        if consumer is None:
            return True
        if not consumer.idle():
            return False
        for sub in self._subs.values():
            if self.queue_depth(sub.queue) or self.queue_depth(f"{sub.queue}.retry"):
                return False
        return consumer.idle()

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to `limit` messages from `<queue>.dlq`."""
        conn = link.connect(self.url)
        channel = None
        found: list[DeadLetter] = []
        try:
            conn.connect()
            channel = conn.channel()
            bound = Queue(f"{queue}.dlq", durable=True)(channel)
            bound.declare()
            for _ in range(limit):
                message = bound.get(no_ack=False)
                if message is None:
                    break
                headers = message.headers or {}
                try:
                    event: CloudEvent | None = CloudEvent.from_json(body_bytes(message))
                except InvalidEvent:
                    event = None
                found.append(
                    DeadLetter(
                        event=event,
                        body=body_bytes(message),
                        attempt=int(headers.get(ATTEMPT_HEADER, 1)),
                        error=str(headers.get(ERROR_HEADER, "")),
                    )
                )
        finally:
            link.close_quietly(channel, conn)  # the unacked messages go back to the DLQ
        return found

    def replay_dead_letters(self, queue: str, limit: int = 1000) -> int:
        """Move up to `limit` messages from `<queue>.dlq` back to `queue` with fresh attempts.

        For after the cause is fixed. Each message is re-published (confirmed) before it is
        removed from the dead-letter queue, so a crash in between duplicates, never loses;
        handlers that already applied it skip it by event id.
        """
        conn = link.connect(self.url)
        channel = None
        moved = 0
        try:
            conn.connect()
            channel = conn.channel()
            bound = Queue(f"{queue}.dlq", durable=True)(channel)
            bound.declare()
            for _ in range(limit):
                message = bound.get(no_ack=False)
                if message is None:
                    break
                headers = {
                    k: v
                    for k, v in (message.headers or {}).items()
                    if k not in (ATTEMPT_HEADER, ERROR_HEADER) and not k.startswith("x-death")
                }
                self.publisher.publish(
                    [
                        Outgoing(
                            exchange="",
                            routing_key=queue,
                            body=body_bytes(message),
                            message_id=message.properties.get("message_id") or "",
                            event_type=message.properties.get("type") or "",
                            headers=headers,
                        )
                    ],
                    timeout=self.publish_timeout,
                )
                message.ack()
                moved += 1
        finally:
            link.close_quietly(channel, conn)
        return moved

    def _need_relay(self) -> None:
        if self._relay is None:
            raise ValueError("the outbox needs sessions= on Bus() so that the relay can publish it")

    def _wake(self) -> Any:
        return self._relay.wake if self._relay is not None and self._started else None
