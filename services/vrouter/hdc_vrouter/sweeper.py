"""Background check that turns silence into an event: routers whose heartbeats stopped."""

from __future__ import annotations

import logging
import threading

from hdc_vrouter.controller import Controller

log = logging.getLogger(__name__)


class OfflineSweeper:
    def __init__(self, controller: Controller, interval_s: float) -> None:
        self.controller = controller
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="vrouter-offline-sweeper", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                marked = self.controller.sweep_offline()
                if marked:
                    log.info("routers went offline", extra={"count": marked})
            except Exception:
                log.exception("offline sweep failed; retrying next round")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
