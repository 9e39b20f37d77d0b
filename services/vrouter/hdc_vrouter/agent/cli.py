"""`hdc-vrouter-agent`: join this machine (a site's router or the hub) to a vrouter overlay.

    hdc-vrouter-agent --controller https://vrouter.example.org --token-file /etc/hdc/token \\
        --state-dir /var/lib/hdc-vrouter --interface hdcvr0 [--endpoint 203.0.113.7:51820]

Needs root (or CAP_NET_ADMIN), wireguard-go, wg, ip, and nft when the site masquerades.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import httpx
from hdc_common.logs import setup_logging

from hdc_vrouter.agent.runner import Agent, EnrolmentRefused
from hdc_vrouter.agent.wireguard import CommandError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hdc-vrouter-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--controller", required=True, help="base URL of the vrouter controller")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="one-time enrolment token (prefer --token-file)")
    token.add_argument(
        "--token-file", type=Path, help="file holding the enrolment token; deleted after use"
    )
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/hdc-vrouter"))
    parser.add_argument(
        "--interface", default="hdcvr0", help="WireGuard interface name (unique on the host)"
    )
    parser.add_argument(
        "--endpoint", help="host:port where peers can reach this router, if it is reachable"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat period in seconds")
    parser.add_argument("--ca-file", help="CA bundle to verify the controller's certificate")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("vrouter-agent", args.log_level)
    # One line per heartbeat request would drown what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log = logging.getLogger("hdc_vrouter.agent")
    token = args.token
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(
                f"hdc-vrouter-agent: cannot read {args.token_file}: {exc.strerror}", file=sys.stderr
            )
            return 2
    agent = Agent(
        controller=args.controller,
        state_dir=args.state_dir,
        interface=args.interface,
        token=token,
        token_file=args.token_file,
        endpoint=args.endpoint,
        interval_s=args.interval,
        verify=args.ca_file or True,
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        code = agent.run()
    except EnrolmentRefused as exc:
        print(f"hdc-vrouter-agent: enrolment refused: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        # Exit non-zero so the service manager retries later.
        print(
            f"hdc-vrouter-agent: controller {args.controller} unreachable: {exc}", file=sys.stderr
        )
        return 1
    except CommandError as exc:
        print(f"hdc-vrouter-agent: cannot configure the tunnel: {exc}", file=sys.stderr)
        return 1
    log.info("agent stopped", extra={"exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
