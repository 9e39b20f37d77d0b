"""Finds cloud resources tagged for infrastructures or VMs the database does not keep, and
removes them: the safety net behind "never leak" (crashes between steps, lost cleanups)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from hdc_im.drivers.base import CloudError, Driver, Tagged
from hdc_im.models import DELETED, FAILED, VM, Infrastructure

log = logging.getLogger(__name__)


def reconcile(driver: Driver, sessions: sessionmaker[Session]) -> list[str]:
    """One pass over one site; returns the provider ids removed."""
    removed: list[str] = []
    tagged = driver.list_tagged()
    if not tagged:
        return removed
    with sessions() as s:
        infra_ids = {t.infrastructure_id for t in tagged}
        infras = {
            i.id: i.state
            for i in s.scalars(sa.select(Infrastructure).where(Infrastructure.id.in_(infra_ids)))
        }
        live_tokens = set(
            s.scalars(
                sa.select(VM.token).where(VM.infrastructure_id.in_(infra_ids), VM.state != DELETED)
            )
        )
    # shared resources of a gone infrastructure go together, after its VMs, in the order the
    # driver needs (a network cannot go before the ports of the VMs on it)
    shared: dict[str, list[Tagged]] = {}
    for t in sorted(tagged, key=lambda t: t.kind != "vm"):
        state = infras.get(t.infrastructure_id)
        gone = state is None or state in (DELETED, FAILED)
        if t.kind == "vm":
            if gone or t.token not in live_tokens:
                log.warning(
                    "reconciler: removing orphan VM %s of %s", t.provider_id, t.infrastructure_id
                )
                driver.destroy_vm(t.provider_id)
                removed.append(t.provider_id)
        elif gone:
            shared.setdefault(t.infrastructure_id, []).append(t)
        elif t.token and t.token not in live_tokens:
            # a per-VM resource (a public address) of a VM the database no longer has
            log.warning("reconciler: removing orphan %s %s", t.kind, t.provider_id)
            driver.remove_tagged(t)
            removed.append(t.provider_id)
    for infra_id, items in shared.items():
        log.warning("reconciler: releasing %d resources of %s", len(items), infra_id)
        driver.release(infra_id, [(t.kind, t.provider_id, t.provider_id) for t in items])
        removed += [t.provider_id for t in items]
    return removed


class Reconciler:
    """Runs reconcile() over every configured site, every interval."""

    def __init__(
        self, drivers: list[Any], sessions: sessionmaker[Session], interval_s: float
    ) -> None:
        self.drivers = drivers  # callables returning a Driver (built lazily)
        self.sessions = sessions
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        removed: list[str] = []
        for make in self.drivers:
            try:
                removed += reconcile(make(), self.sessions)
            except CloudError as exc:
                log.warning("reconciler: site unreachable: %s", exc)
        return removed

    def start(self) -> None:
        if not self.drivers or self.interval_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="im-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # keep the safety net alive through database hiccups
                log.exception("reconciler pass failed")
