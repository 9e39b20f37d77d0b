"""The in-process transport for the embedded mode (`memory://`), built on kombu's.

kombu's memory transport keeps one global set of queues for the whole process, sends a
message that matches no binding to an `ae.undeliver` queue that grows forever, restores
unacked messages by re-routing them through the exchange (so a topic event would reach
every subscriber again), and by default does not restore them at all. This subclass fixes
those four things: state is per virtual host (`memory:///<name>` isolates a test or an
embedded cluster), unroutable messages are dropped as on RabbitMQ, and unacked messages go
back to the queue they came from when a consumer's channel closes.
"""

from __future__ import annotations

import queue as _queue
import threading
from typing import Any

from kombu.transport import memory, virtual

_lock = threading.Lock()
_vhosts: dict[str, tuple[virtual.BrokerState, dict[str, _queue.Queue]]] = {}

# Short enough for interactive latency in the embedded mode, long enough that a dozen idle
# consumer threads do not spin a core.
POLLING_INTERVAL_S = 0.02


def _state(vhost: str) -> tuple[virtual.BrokerState, dict[str, _queue.Queue]]:
    with _lock:
        if vhost not in _vhosts:
            _vhosts[vhost] = (virtual.BrokerState(), {})
        return _vhosts[vhost]


def queue_depth(vhost: str, name: str) -> int:
    """Messages ready in a queue of the in-process broker (for tests and `hdc status`)."""
    q = _state(vhost or "/")[1].get(name)
    return q.qsize() if q is not None else 0


class Channel(memory.Channel):
    do_restore = True
    deadletter_queue = None  # unroutable messages are dropped, as RabbitMQ does

    @property
    def _vhost(self) -> str:
        return self.connection.client.virtual_host or "/"

    @property
    def queues(self) -> dict[str, _queue.Queue]:  # type: ignore[override]
        return _state(self._vhost)[1]

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self._queue_for(queue)

    def _queue_for(self, queue: str) -> _queue.Queue:
        queues = self.queues
        found = queues.get(queue)
        if found is None:
            with _lock:
                found = queues.setdefault(queue, _queue.Queue())
        return found

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        # kombu hands the same dict to every queue a topic message is routed to; each queue
        # gets its own copy so per-delivery state (delivery_info) never leaks across queues.
        props = message.get("properties") or {}
        copied = {
            **message,
            "headers": dict(message.get("headers") or {}),
            "properties": {**props, "delivery_info": dict(props.get("delivery_info") or {})},
        }
        self._queue_for(queue).put(copied)

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kw: Any
    ) -> Any:
        def remember_queue(message: Any) -> Any:
            # Lets _restore put an unacked message back where it was taken from.
            message.delivery_info["hdc_queue"] = queue
            return callback(message)

        return super().basic_consume(queue, no_ack, remember_queue, consumer_tag, **kw)

    def _restore(self, message: Any) -> None:
        origin = message.delivery_info.get("hdc_queue")
        if origin is None:
            super()._restore(message)
            return
        raw = message.serializable()
        raw["redelivered"] = True
        raw["properties"]["delivery_info"].pop("hdc_queue", None)
        self._put(origin, raw)

    def close(self) -> None:
        # memory.Channel.close would replace the shared queue table with an empty dict.
        virtual.Channel.close(self)


class Transport(memory.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL_S

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.state = _state(client.virtual_host or "/")[0]
