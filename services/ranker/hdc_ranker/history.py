"""The platform's own memory of deployments: outcomes per site, and a success-rate estimate.

Fed by the orchestrator's events (`orchestrator.deployment.*`, consumed from the queue
`ranker.history`), persisted in the ranker's own database, read by the `history` scorer.
The estimate is a Laplace-smoothed success rate, (s + 1) / (n + 2), where each outcome
counts 0.5^(age / half-life): a site with no history gets 0.5, one bad day fades.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hdc_ranker.table import text_hash

log = logging.getLogger(__name__)

EVENT_PATTERN = "orchestrator.deployment.*"
QUEUE = "ranker.history"
SUCCESS = {"CREATE_COMPLETE"}
FAILURE = {"CREATE_FAILED"}


class Base(DeclarativeBase):
    pass


class DeploymentOutcome(Base):
    """One deployment attempt on one site (a fail-over retry on another site is another row)."""

    __tablename__ = "ranker_deployment_outcomes"

    deployment_uuid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    succeeded: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    finished_at: Mapped[float] = mapped_column(sa.Float, nullable=False, index=True)


def outcome_from_event(data: Mapping[str, Any]) -> tuple[str, str, bool, str] | None:
    """(uuid, site id, succeeded, status) of a terminal creation event, else None."""
    status = str(data.get("status") or "")
    if status not in SUCCESS and status not in FAILURE:
        return None
    uuid = data.get("uuid")
    site = data.get("cloudProviderName") or data.get("site_id") or data.get("siteId")
    if not uuid or not site:
        # Nothing to learn without both; the event is acked, not retried forever.
        log.warning("deployment event without uuid or site", extra={"status": status})
        return None
    return str(uuid), str(site), status in SUCCESS, status


class HistoryStore:
    """Records outcomes and answers success estimates (cached; reloaded after `ttl_s` or a
    local write, so replicas that did not consume the event catch up within `ttl_s`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        half_life_s: float = 7 * 24 * 3600.0,
        window: int = 200,
        ttl_s: float = 30.0,
    ) -> None:
        self.sessions = sessions
        self.half_life_s = half_life_s
        self.window = window
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._loaded_at = -float("inf")
        self._sites: list[str] = []
        self._site_of = np.zeros(0, dtype=np.int64)
        self._finished = np.zeros(0)
        self._succeeded = np.zeros(0)
        self._estimates: dict[str, float] = {}
        self._by_hash: dict[int, float] = {}
        self._estimated_at = -float("inf")

    # -------------------------------------------------------------- writing

    def record(self, session: Session, data: Mapping[str, Any], when: float | None = None) -> bool:
        """Store the outcome an event announces (inside the caller's transaction); idempotent."""
        outcome = outcome_from_event(data)
        if outcome is None:
            return False
        uuid, site, ok, status = outcome
        row = session.get(DeploymentOutcome, (uuid, site))
        finished = time.time() if when is None else when
        if row is None:
            session.add(
                DeploymentOutcome(
                    deployment_uuid=uuid,
                    site_id=site,
                    succeeded=ok,
                    status=status,
                    finished_at=finished,
                )
            )
        else:
            row.succeeded, row.status, row.finished_at = ok, status, finished
        self.invalidate()
        return True

    def handle_event(self, session: Session, event: Any) -> None:
        """Bus handler for `orchestrator.deployment.*` (runs in the consumer's transaction)."""
        data = getattr(event, "data", None) or {}
        when = _event_time(event)
        self.record(session, data, when)

    def invalidate(self) -> None:
        self._loaded_at = -float("inf")

    # -------------------------------------------------------------- reading

    def _reload(self) -> None:
        with self.sessions() as s:
            rows = s.execute(
                sa.select(
                    DeploymentOutcome.site_id,
                    DeploymentOutcome.finished_at,
                    DeploymentOutcome.succeeded,
                ).order_by(DeploymentOutcome.finished_at.desc())
            ).all()
        sites: dict[str, int] = {}
        kept: list[int] = []
        site_of, finished_at, succeeded = [], [], []
        for site, finished, ok in rows:
            k = sites.setdefault(site, len(sites))
            if k == len(kept):
                kept.append(0)
            if kept[k] < self.window:  # newest first: the window's most recent outcomes
                kept[k] += 1
                site_of.append(k)
                finished_at.append(finished)
                succeeded.append(ok)
        # Columns: one entry per outcome kept, its site as an index into `_sites`.
        self._sites = list(sites)
        self._site_of = np.array(site_of, dtype=np.int64)
        self._finished = np.array(finished_at, dtype=np.float64)
        self._succeeded = np.array(succeeded, dtype=np.float64)
        self._loaded_at = time.monotonic()

    def estimates(self, now: float) -> dict[str, float]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self.ttl_s:
                self._reload()
                self._estimated_at = -float("inf")
            # Recompute the decay at most once a second: ages barely move in between.
            if abs(now - self._estimated_at) > 1.0:
                age = np.maximum(0.0, now - self._finished)
                w = 0.5 ** (age / self.half_life_s)
                n = len(self._sites)
                good = np.bincount(self._site_of, weights=w * self._succeeded, minlength=n)
                total = np.bincount(self._site_of, weights=w, minlength=n)
                values = ((good + 1.0) / (total + 2.0)).tolist()
                self._estimates = dict(zip(self._sites, values, strict=True))
                self._by_hash = {text_hash(site): v for site, v in self._estimates.items()}
                self._estimated_at = now
            return self._estimates

    def success_estimates(self, site_ids: list[str], now: float) -> np.ndarray:
        est = self.estimates(now)
        if not est:
            return np.full(len(site_ids), 0.5)
        get = est.get
        return np.fromiter((get(s, 0.5) for s in site_ids), np.float64, len(site_ids))

    def success_by_hash(self, site_hashes: np.ndarray, now: float) -> np.ndarray:
        """success_estimates of sites given by their id hashes (table.text_hash): what the
        ranker has at hand, without decoding the ids."""
        self.estimates(now)
        get = self._by_hash.get
        return np.fromiter((get(h, 0.5) for h in site_hashes.tolist()), np.float64)


def _event_time(event: Any) -> float | None:
    t = getattr(event, "time", None)
    if t is None:
        return None
    if isinstance(t, int | float):
        return float(t)
    if hasattr(t, "timestamp"):
        return float(t.timestamp())
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
