"""Embedded mode: every installed service in one process, SQLite and the in-process bus.

`hdc up` starts this module as a detached process and waits for every health check;
the process writes `embedded.json` (pid and URLs) into the data directory so
`hdc status` and `hdc down` can find it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hdc_common.errors import ConfigError
from hdc_common.identity import generate_keypair
from hdc_common.logs import setup_logging
from hdc_common.service import Running, discover, prepare, serve_all
from hdc_common.settings import default_data_dir, load_settings
from hdc_common.telemetry import setup_telemetry

STATE_FILE = "embedded.json"


def data_dir() -> Path:
    return default_data_dir()


def state_path(home: Path | None = None) -> Path:
    return (home or data_dir()) / STATE_FILE


def identity_keys(home: Path) -> tuple[Path, Path]:
    """The gateway's identity signing key pair for this installation, made once."""
    private, public = home / "identity.key", home / "identity.pub"
    if not private.exists():
        home.mkdir(parents=True, exist_ok=True)
        priv_pem, pub_pem = generate_keypair()
        private.touch(mode=0o600)
        private.write_text(priv_pem)
        public.write_text(pub_pem)
    return private, public


def embedded_env(home: Path) -> dict[str, str]:
    """Defaults every service gets in embedded mode (explicit env vars still win)."""
    private, public = identity_keys(home)
    env = {}
    for name, service in discover().items():
        prefix = f"HDC_{name.upper()}_"
        env[f"{prefix}DATA_DIR"] = str(home / "data")
        env[f"{prefix}BUS_URL"] = "memory://"
        env[f"{prefix}IDENTITY_PUBLIC_KEY"] = str(public)
        # Only the gateway signs identities; it is the one service with this setting.
        if "identity_private_key" in service.settings_cls.model_fields:
            env[f"{prefix}IDENTITY_PRIVATE_KEY"] = str(private)
    return env


def main(argv: Sequence[str] | None = None) -> None:
    home = data_dir()
    for key, value in embedded_env(home).items():
        os.environ.setdefault(key, value)
    setup_logging("embedded", os.environ.get("HDC_LOG_LEVEL", "INFO"))
    setup_telemetry("embedded", os.environ.get("HDC_OTLP_ENDPOINT"))
    try:
        runs = []
        for name, service in discover().items():
            settings = load_settings(service.settings_cls)
            if settings.http_host not in ("127.0.0.1", "localhost", "::1"):
                raise ConfigError(
                    f"{name}: embedded mode serves on localhost only, not {settings.http_host}"
                )
            runs.append(prepare(service, settings))
        asyncio.run(serve_all(runs, ready=lambda r: _write_state(home, r)))
    except ConfigError as exc:
        print(f"hdc up: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        state_path(home).unlink(missing_ok=True)


def _write_state(home: Path, runs: Sequence[Running]) -> None:
    state = {
        "pid": os.getpid(),
        "services": {r.service.name: r.urls for r in runs},
    }
    tmp = state_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_path(home))


if __name__ == "__main__":
    main()
