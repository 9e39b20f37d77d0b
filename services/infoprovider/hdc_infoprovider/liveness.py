"""Site-down detection: a site silent past its report's validity is marked down, once.

Readers never depend on this worker (they compare `valid_until` with the clock themselves);
it exists so the transition is announced: one `infoprovider.site.changed` event with
`status: down`, written in the same transaction as the status (outbox).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from hdc_infoprovider import models as m
from hdc_infoprovider.ingest import EVENT_SITE_CHANGED, Emit, to_utc
from hdc_infoprovider.report import utcnow
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


def mark_down_sites(session: Session, emit: Emit | None) -> list[str]:
    """Mark every site past validity as down; returns their ids."""
    now = utcnow()
    stmt = sa.select(m.Site).where(m.Site.status != "down", m.Site.valid_until < now)
    if session.get_bind().dialect.name == "postgresql":
        # Replicas sweep concurrently; each site is announced by exactly one of them.
        stmt = stmt.with_for_update(skip_locked=True)
    marked = []
    for site in session.scalars(stmt).all():
        previous = site.status
        site.status = "down"
        marked.append(site.id)
        if emit is not None:
            emit(
                session,
                EVENT_SITE_CHANGED,
                {
                    "site_id": site.id,
                    "status": "down",
                    "previous_status": previous,
                    "valid_until": to_utc(site.valid_until).isoformat(),
                    "changes": {},
                },
                site.id,
            )
    return marked


def prune_rejected(session: Session, keep_days: int) -> int:
    """Refused reports are evidence for operators, not an archive: keep `keep_days`."""
    cutoff = utcnow() - timedelta(days=keep_days)
    result = session.execute(
        sa.delete(m.RejectedReport).where(m.RejectedReport.received_at < cutoff)
    )
    return int(result.rowcount or 0)


class DownDetector:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        emit: Emit | None,
        interval_s: float = 30.0,
        on_marked: Callable[[list[str]], Any] | None = None,
        rejected_keep_days: int = 30,
    ) -> None:
        self.rejected_keep_days = rejected_keep_days
        self.sessions = sessions
        self.emit = emit
        self.interval_s = interval_s
        self.on_marked = on_marked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> list[str]:
        with self.sessions.begin() as s:
            marked = mark_down_sites(s, self.emit)
            prune_rejected(s, self.rejected_keep_days)
        if marked:
            log.warning("sites down: silent past validity", extra={"sites": marked})
            if self.on_marked:
                self.on_marked(marked)
        return marked

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="infoprovider-down", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # keep sweeping: the database may be back next time
                log.exception("down-site sweep failed")
