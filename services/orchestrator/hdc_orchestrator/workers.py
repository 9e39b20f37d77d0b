"""Background work: bus handlers, the timeout sweeper and the callback sender.

All three run in every replica. The bus gives each message to one replica; the sweeper and
the sender claim rows with `FOR UPDATE SKIP LOCKED` (PostgreSQL), so replicas share the work
instead of repeating it, and optimistic locking settles any remaining race.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from hdc_common.db import StaleDataError
from sqlalchemy.orm import Session, sessionmaker

from hdc_orchestrator.engine import PLACE_COMMAND, Engine, now
from hdc_orchestrator.models import CallbackDelivery, Deployment

log = logging.getLogger(__name__)

IM_EVENTS_QUEUE = "orchestrator.im-events"
SIGNATURE_HEADER = "X-HDC-Signature"


def register_handlers(commands_bus: Any, events_bus: Any, engine: Engine) -> None:
    """Placement commands and im events are consumed by two buses (two consumer threads),
    so a slow placement call never holds up the im's events, and vice versa.

    Handlers run without autoflush: the bus applies the deliveries that arrived together in
    one transaction, and this way their writes (deployment updates, attempts, history rows,
    outbox rows) reach the database as one batched flush at its commit instead of a few
    round trips per message. No handler reads back what an earlier one of the same group
    wrote: each loads its own deployment, which the identity map hands back as it is.
    """

    @commands_bus.on_command(PLACE_COMMAND)
    def place(session: Session, event: Any) -> None:
        with session.no_autoflush:
            engine.on_place(session, str((event.data or {}).get("uuid")))

    def im_event(session: Session, event: Any) -> None:
        if isinstance(event.data, dict):
            with session.no_autoflush:
                engine.on_im_event(session, event.type, event.data)

    events_bus.on_event("im.infrastructure.*", queue=IM_EVENTS_QUEUE)(im_event)
    events_bus.on_event("im.vm.*", queue=IM_EVENTS_QUEUE)(im_event)


class _Loop(abc.ABC):
    """A daemon thread calling `tick()` every `interval` seconds until stopped."""

    name = "loop"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"orchestrator-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick()
            except Exception:
                log.exception("%s tick failed", self.name)
                busy = False
            if not busy:
                self._stop.wait(self.interval)

    @abc.abstractmethod
    def tick(self) -> bool:
        """One round of work; True when there may be more to do at once."""


def _skip_locked(stmt: Any, session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


class Sweeper(_Loop):
    """Applies provider, overall, update and delete timeouts; survives restarts (all in DB)."""

    name = "sweeper"

    def __init__(self, sessions: sessionmaker[Session], engine: Engine, interval: float) -> None:
        super().__init__(interval)
        self.sessions = sessions
        self.engine = engine

    def tick(self) -> bool:
        with self.sessions() as s:
            due = list(
                s.scalars(sa.select(Deployment.uuid).where(self.engine.due_filter()).limit(50))
            )
        for uuid in due:
            try:
                with self.sessions.begin() as s:
                    stmt = _skip_locked(
                        sa.select(Deployment).where(
                            Deployment.uuid == uuid, self.engine.due_filter()
                        ),
                        s,
                    )
                    d = s.scalars(stmt).first()
                    if d is not None:
                        self.engine.sweep_one(s, d)
            except StaleDataError:
                pass  # another replica or a handler moved it first; next tick re-checks
        return len(due) == 50


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class CallbackSender(_Loop):
    """POSTs the deployment JSON to `callback` on each status change, signed, with retries."""

    name = "callbacks"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        secret: bytes,
        *,
        interval: float,
        max_attempts: int,
        backoff_s: float,
        timeout_s: float,
    ) -> None:
        super().__init__(interval)
        self.sessions = sessions
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def stop(self) -> None:
        super().stop()
        self._http.close()

    def tick(self) -> bool:
        claimed: list[tuple[int, str, str, str, int]] = []
        with self.sessions.begin() as s:
            stmt = _skip_locked(
                sa.select(CallbackDelivery)
                .where(CallbackDelivery.next_at.is_not(None), CallbackDelivery.next_at <= now())
                .order_by(CallbackDelivery.id)
                .limit(20),
                s,
            )
            for c in s.scalars(stmt):
                c.attempts += 1
                # Lease: another replica may retry it only after the request had time to end.
                c.next_at = now() + timedelta(seconds=self.timeout_s * 2 + 1)
                claimed.append((c.id, c.url, c.body, c.status, c.attempts))
        for cid, url, body, status, attempt in claimed:
            self._deliver(cid, url, body.encode(), status, attempt)
        return len(claimed) == 20

    def _deliver(self, cid: int, url: str, body: bytes, status: str, attempt: int) -> None:
        ts = int(time.time())
        code: int | None = None
        error: str | None = None
        try:
            resp = self._http.post(
                url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(self.secret, ts, body),
                    "X-HDC-Delivery": str(cid),
                    "X-HDC-Event": status,
                },
            )
            code = resp.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self.sessions.begin() as s:
            c = s.get(CallbackDelivery, cid)
            if c is None:
                return
            c.last_code, c.last_error = code, error
            if error is None:
                c.delivered_at, c.next_at = now(), None
            elif attempt >= self.max_attempts:
                c.next_at = None  # given up; the delivery log shows why
            else:
                c.next_at = now() + timedelta(seconds=self.backoff_s * 2 ** (attempt - 1))
