"""`hdc-info-agent`: `run --config site.yaml` (publish every interval, and at once on
SIGUSR1) and `once [--print]` (collect once; print the report instead of sending it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from hdc_infoprovider.agent.builder import build_report
from hdc_infoprovider.agent.collectors import make_collector
from hdc_infoprovider.agent.config import AgentConfig, AgentConfigError, load_config
from hdc_infoprovider.agent.oidc import ClientCredentials, TokenError
from hdc_infoprovider.agent.publish import PublishError, make_publisher

log = logging.getLogger("hdc-info-agent")
DEFAULT_CONFIG = os.environ.get("HDC_INFO_AGENT_CONFIG", "/etc/hdc/site.yaml")


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.collectors = [make_collector(c) for c in cfg.collectors]
        self._tokens = ClientCredentials(cfg.auth) if cfg.auth else None
        self._publisher = make_publisher(cfg.publish) if cfg.publish else None

    def report(self) -> dict:
        return build_report(self.cfg, self.collectors)

    def publish_once(self) -> dict:
        if self._tokens is None or self._publisher is None:
            raise AgentConfigError("sending needs the auth and publish sections in the config")
        report = self.report()
        self._publisher.publish(report, self._tokens.token())
        return report

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


def _summary(report: dict) -> str:
    services = report["services"]
    bad = [h["component"] for h in report["health"] if not h["healthy"]]
    return (
        f"site {report['site']['id']}: {len(services)} services, "
        f"{sum(len(s.get('flavors', [])) for s in services)} flavors, "
        f"{sum(len(s.get('images', [])) for s in services)} images"
        + (f"; unhealthy: {', '.join(bad)}" if bad else "")
    )


def run(agent: Agent, stop: threading.Event, now: threading.Event | None = None) -> None:
    """Report every `interval` seconds, and at once whenever `now` is set (SIGUSR1)."""
    now = now or threading.Event()
    while not stop.is_set():
        try:
            report = agent.publish_once()
            log.info("report sent: %s", _summary(report))
        except (TokenError, PublishError) as exc:
            # The next round retries; the registry keeps the last report until it expires.
            log.error("report not sent: %s", exc)
        deadline = time.monotonic() + agent.cfg.interval
        while not stop.is_set() and not now.is_set() and time.monotonic() < deadline:
            now.wait(min(1.0, max(0.0, deadline - time.monotonic())))
        now.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hdc-info-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="publish a report now and then every interval")
    p_once = sub.add_parser("once", help="collect once and send (or --print) the report")
    for p in (p_run, p_once):
        p.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help="site.yaml")
        p.add_argument("--log-level", default="INFO")
    p_once.add_argument("--print", action="store_true", help="print the report, do not send it")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        agent = Agent(load_config(args.config))
    except AgentConfigError as exc:
        print(f"hdc-info-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "once":
            if args.print:
                json.dump(agent.report(), sys.stdout, indent=2)
                sys.stdout.write("\n")
                return 0
            report = agent.publish_once()
            print(_summary(report))
            return 0
        stop, now = threading.Event(), threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGUSR1, lambda *_: now.set())  # report on demand
        run(agent, stop, now)
        return 0
    except (TokenError, PublishError, AgentConfigError) as exc:
        print(f"hdc-info-agent: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.close()


if __name__ == "__main__":
    raise SystemExit(main())
