"""Run one installed service by name: `python -m hdc_cli.run_one <service> [--config FILE]`."""

from __future__ import annotations

import sys

from hdc_common.service import discover, run_service


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m hdc_cli.run_one <service> [--config FILE]", file=sys.stderr)
        raise SystemExit(2)
    services = discover()
    name = sys.argv[1]
    if name not in services:
        print(f"unknown service {name!r}; installed: {', '.join(services)}", file=sys.stderr)
        raise SystemExit(2)
    run_service(services[name], sys.argv[2:])


if __name__ == "__main__":
    main()
