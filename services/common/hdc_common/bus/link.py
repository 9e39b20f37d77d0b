"""Connections to the broker, the topology, and the confirmed publisher.

One kombu connection per thread (kombu connections are not thread-safe): the publisher owns
one (shared by the relay, `Bus.publish` and the consumer's retry/dead-letter copies, behind a
lock) and every consumer thread owns its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
import kombu
import kombu.exceptions
from kombu import Exchange, Queue

from hdc_common.bus import memory
from hdc_common.bus.events import CONTENT_TYPE
from hdc_common.errors import ConfigError

log = logging.getLogger("hdc_common.bus")

COMMANDS = "hdc.commands"
EVENTS = "hdc.events"
ATTEMPT_HEADER = "x-hdc-attempt"
ERROR_HEADER = "x-hdc-error"

COMMANDS_EXCHANGE = Exchange(COMMANDS, type="direct", durable=True)
EVENTS_EXCHANGE = Exchange(EVENTS, type="topic", durable=True)

# Whatever a broker that went away can raise, on either transport.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes socket.timeout, ConnectionError, BrokenPipe
    amqp.exceptions.AMQPError,
    kombu.exceptions.KombuError,
)


class BusUnavailable(RuntimeError):
    """The broker could not be reached (or did not confirm) within the allowed time."""


class PublishNacked(RuntimeError):
    """The broker refused to take responsibility for a message (basic.nack)."""


def is_memory(url: str) -> bool:
    return url.startswith("memory://")


def check_url(url: str) -> None:
    if not url.startswith(("amqp://", "amqps://", "pyamqp://", "memory://")):
        scheme = url.split("://", 1)[0] if "://" in url else url[:20]  # never echo credentials
        raise ConfigError(
            f"bus_url must start with amqp://, amqps:// or memory:// (got {scheme!r})"
        )


def connect(url: str, *, heartbeat: int = 0) -> kombu.Connection:
    """A kombu connection (not yet connected) for either transport."""
    check_url(url)
    if is_memory(url):
        return kombu.Connection(
            url,
            transport=memory.Transport,
            transport_options={"polling_interval": memory.POLLING_INTERVAL_S},
        )
    return kombu.Connection(url, heartbeat=heartbeat, connect_timeout=5)


def close_quietly(channel: Any, conn: kombu.Connection) -> None:
    """Close a channel and its connection that may already be broken."""
    for close in (getattr(channel, "close", None), conn.release):
        if close is None:
            continue
        try:
            close()
        except Exception:  # already broken: nothing more to hand back
            log.debug("closing a bus channel/connection failed", exc_info=True)


def backoff_delay(attempt: int, base: float, cap: float, *, jitter: bool = False) -> float:
    """Exponential back-off: base, 2*base, 4*base ... capped; jitter spreads out replicas."""
    delay = min(cap, base * (2 ** max(attempt, 0)))
    return delay * random.uniform(0.5, 1.0) if jitter else delay


def command_queue(service: str) -> Queue:
    return Queue(f"{service}.commands", COMMANDS_EXCHANGE, routing_key=service, durable=True)


@dataclass
class Outgoing:
    """One message for the broker. Retries and dead letters go through the default exchange."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    event_type: str
    headers: dict[str, Any] = field(default_factory=dict)
    expiration_s: float | None = None
    # Commands must not vanish because the target service has not declared its queue yet.
    ensure_queue: Queue | None = None


class _Confirms:
    """Publisher-confirm bookkeeping for one py-amqp channel (delivery tags count from 1)."""

    def __init__(self, channel: amqp.Channel) -> None:
        self.next_tag = 1
        self.unconfirmed: set[int] = set()
        self.nacked = 0
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)

    def published(self) -> None:
        self.unconfirmed.add(self.next_tag)
        self.next_tag += 1

    def _settle(self, tag: int, multiple: bool) -> int:
        if multiple:
            done = {t for t in self.unconfirmed if t <= tag}
            self.unconfirmed -= done
            return len(done)
        if tag in self.unconfirmed:
            self.unconfirmed.discard(tag)
            return 1
        return 0

    def _ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _nack(self, tag: int, multiple: bool) -> None:
        self.nacked += self._settle(tag, multiple)


class Publisher:
    """Publishes batches of persistent messages and returns once the broker confirmed all.

    Confirms are awaited per batch, not per message: that is what makes the outbox relay
    fast. A batch that fails (connection lost, nack, confirm timeout) is published again in
    full after reconnecting; consumers drop the duplicates by event id.
    """

    def __init__(
        self, url: str, *, confirm_timeout: float = 30.0, backoff_max: float = 10.0
    ) -> None:
        self.url = url
        self.confirm_timeout = confirm_timeout
        self.backoff_max = backoff_max
        self._lock = threading.Lock()
        self._conn: kombu.Connection | None = None
        self._channel: Any = None
        self._producer: kombu.Producer | None = None
        self._confirms: _Confirms | None = None
        self._declared: set[str] = set()

    def publish(
        self,
        messages: Sequence[Outgoing],
        *,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Publish and await confirms; retry with back-off for up to `timeout` seconds.

        `timeout=None` means one attempt (the caller has its own retry loop).
        """
        if not messages:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        with self._lock:
            while True:
                try:
                    self._publish_once(messages)
                    return
                except (*BROKER_ERRORS, PublishNacked) as exc:
                    self._reset()
                    delay = backoff_delay(attempt, 0.1, self.backoff_max, jitter=True)
                    if (
                        deadline is None
                        or time.monotonic() + delay > deadline
                        or (stop and stop.is_set())
                    ):
                        raise BusUnavailable(f"publish to {self.safe_url} failed: {exc!r}") from exc
                    log.warning("bus publish failed, retrying in %.1fs: %r", delay, exc)
                    time.sleep(delay)
                    attempt += 1

    @property
    def safe_url(self) -> str:
        return self.url.split("@")[-1]

    def queue_depth(self, queue: str) -> int:
        """Ready messages in a queue (0 when it does not exist)."""
        with self._lock:
            try:
                self._ensure()
                if is_memory(self.url):
                    return memory.queue_depth(self._conn.virtual_host, queue)
                ch = self._conn.channel()
                try:
                    return ch.queue_declare(queue, passive=True).message_count
                finally:
                    ch.close()
            except amqp.exceptions.NotFound:
                return 0
            except BROKER_ERRORS:
                self._reset()
                raise

    def close(self) -> None:
        with self._lock:
            self._reset()

    # -- internals (called with the lock held) --

    def _ensure(self) -> None:
        if self._conn is not None:
            return
        conn = connect(self.url)
        try:
            conn.connect()
            channel = conn.channel()
            COMMANDS_EXCHANGE(channel).declare()
            EVENTS_EXCHANGE(channel).declare()
            confirms = None
            if isinstance(channel, amqp.Channel):
                channel.confirm_select()
                confirms = _Confirms(channel)
        except BaseException:
            conn.release()
            raise
        self._conn, self._channel, self._confirms = conn, channel, confirms
        self._producer = kombu.Producer(channel, auto_declare=False)
        self._declared = set()

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        self._channel = self._producer = self._confirms = None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # the connection is already broken; drop it
                log.debug("closing a broken bus connection failed", exc_info=True)

    def _publish_once(self, messages: Sequence[Outgoing]) -> None:
        self._ensure()
        assert self._producer is not None and self._conn is not None
        confirms = self._confirms
        if confirms is not None:
            confirms.nacked = 0
        for msg in messages:
            if msg.ensure_queue is not None and msg.ensure_queue.name not in self._declared:
                msg.ensure_queue(self._channel).declare()
                self._declared.add(msg.ensure_queue.name)
            self._producer.publish(
                msg.body,
                exchange=msg.exchange,
                routing_key=msg.routing_key,
                headers=msg.headers,
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=msg.message_id,
                type=msg.event_type,
                expiration=msg.expiration_s,
                retry=False,
            )
            if confirms is not None:
                confirms.published()
        if confirms is None:
            return  # the in-process broker has taken the messages synchronously
        deadline = time.monotonic() + self.confirm_timeout
        while confirms.unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(confirms.unconfirmed)} messages not confirmed")
            self._conn.drain_events(timeout=remaining)
        if confirms.nacked:
            raise PublishNacked(f"broker nacked {confirms.nacked} of {len(messages)} messages")
