"""How a service is described, started and stopped: alone, or many in one process (`hdc up`).

A service package exposes `SERVICE = Service(name, settings_cls, build)` under the
`hdc.services` entry point group. `build(settings)` wires the service and returns its
`Components`; the runner serves the ASGI app with uvicorn, the gRPC servicers on
`grpc_port`, and starts/stops the background workers (bus consumers, reconcilers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from hdc_common.errors import ConfigError
from hdc_common.grpc import Servicer, create_server
from hdc_common.logs import setup_logging
from hdc_common.settings import ServiceSettings, load_settings
from hdc_common.telemetry import setup_telemetry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hdc.services"


class Background(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Components:
    asgi_app: Any | None = None
    grpc_servicers: list[Servicer] = field(default_factory=list)
    background: list[Background] = field(default_factory=list)


@dataclass
class Service:
    name: str
    settings_cls: type[ServiceSettings]
    build: Callable[[Any], Components]


def discover() -> dict[str, Service]:
    """Every installed service, by name (what `hdc up` starts)."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        service = ep.load()
        found[service.name] = service
    return dict(sorted(found.items()))


def check_broker(url: str) -> None:
    """Refuse to start when an AMQP broker URL does not answer, with one actionable line."""
    if not url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        safe = url.split("@")[-1]
        raise ConfigError(f"bus_url amqp://…@{safe} unreachable: {exc}") from None


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns shutdown for all servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Running:
    service: Service
    settings: ServiceSettings
    components: Components
    http: _QuietServer | None = None
    grpc: Any = None

    @property
    def urls(self) -> dict[str, str]:
        urls = {}
        if self.components.asgi_app is not None:
            urls["http"] = f"http://{self.settings.http_host}:{self.settings.http_port}"
        if self.grpc is not None:
            urls["grpc"] = f"{self.settings.http_host}:{self.grpc.port}"
        return urls


def prepare(service: Service, settings: ServiceSettings) -> Running:
    check_broker(settings.bus_url)
    components = service.build(settings)
    running = Running(service, settings, components)
    if components.grpc_servicers:
        if settings.grpc_port is None:
            raise ConfigError(f"{service.name}: grpc_port is required")
        running.grpc = create_server(
            settings.grpc_port, components.grpc_servicers, host=settings.http_host
        )
    if components.asgi_app is not None:
        running.http = _QuietServer(
            uvicorn.Config(
                components.asgi_app,
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                access_log=False,
                # The caller's address is the gateway's business (trusted_proxies); uvicorn
                # would otherwise believe X-Forwarded-For from any loopback peer.
                proxy_headers=False,
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
        )
    return running


async def serve_all(
    runs: Sequence[Running], ready: Callable[[Sequence[Running]], None] | None = None
) -> None:
    """Start everything, wait for SIGINT/SIGTERM, stop everything (reverse order)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Background] = []
    tasks = []
    try:
        for run in runs:
            for bg in run.components.background:
                bg.start()
                started.append(bg)
            if run.grpc is not None:
                run.grpc.start()
                started.append(run.grpc)
            if run.http is not None:
                tasks.append(asyncio.create_task(run.http.serve()))
        while any(r.http is not None and not r.http.started for r in runs):
            if any(t.done() for t in tasks):
                for t in tasks:
                    if t.done() and t.exception():
                        raise t.exception()  # type: ignore[misc]
                raise ConfigError("an HTTP server stopped at start (port in use?)")
            await asyncio.sleep(0.02)
        if ready:
            ready(runs)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for run in runs:
            if run.http is not None:
                run.http.should_exit = True
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for bg in reversed(started):
            try:
                bg.stop()
            except Exception:
                log.exception("error while stopping %s", bg)


def run_service(service: Service, argv: Sequence[str] | None = None) -> None:
    """Console entry point of one service: `hdc-<name> [--config FILE]`."""
    parser = argparse.ArgumentParser(prog=f"hdc-{service.name}")
    parser.add_argument("--config", type=Path, help="YAML settings file")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(service.settings_cls, args.config)
        if settings.nice:
            # Before any thread starts: Linux applies niceness per thread, and threads
            # inherit it from the one that creates them.
            os.nice(settings.nice)
        setup_logging(service.name, settings.log_level)
        setup_telemetry(service.name, settings.otlp_endpoint)
        running = prepare(service, settings)
        asyncio.run(serve_all([running], ready=_announce))
    except ConfigError as exc:
        print(f"hdc-{service.name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _announce(runs: Sequence[Running]) -> None:
    for run in runs:
        log.info("service ready", extra={"svc": run.service.name, "urls": run.urls})


def main_for(service_ref: str) -> Callable[[], None]:
    """Build a console-script `main` from "package.module:SERVICE"."""

    def main() -> None:
        module, attr = service_ref.split(":")
        mod = __import__(module, fromlist=[attr])
        run_service(getattr(mod, attr))

    return main
