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

from hdc_cli import local_site
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
        # Services that sign identities have this setting: the gateway for callers, the
        # orchestrator for a deployment's owner when it works on their behalf later.
        if "identity_private_key" in service.settings_cls.model_fields:
            env[f"{prefix}IDENTITY_PRIVATE_KEY"] = str(private)
    if "infoprovider" in discover() and local_site.available():
        env.update(local_site.infoprovider_env())
    if "im" in discover():
        env.update(im_env())
    return env


def im_env() -> dict[str, str]:
    """What the im needs to run the catalog's models on the local site."""
    env = {}
    # Model processes run from this installation even when its bin/ is not on PATH.
    serving = Path(sys.executable).with_name("hdc-serving")
    if serving.is_file():
        command = [str(serving), "run", "--model", "{model}"]
        command += ["--listen-ip", "{host}", "--listen-port", "{port}"]
        env["HDC_IM_LOCAL_COMMAND"] = json.dumps(command)
    # The im parses templates with its own minimal types plus `tosca_types_files`; hdc's
    # types (ModelService, TrainingJob) must be among them for the catalog's templates.
    try:
        from hdc_common.tosca_types import types_dir
        from hdc_im.settings import ImSettings

        factory = ImSettings.model_fields["tosca_types_files"].default_factory
        files = list(factory() if factory else [])
    except ImportError:
        return env
    hdc_types = types_dir() / "hdc" / "hdc_types.yaml"
    if hdc_types.is_file() and str(hdc_types) not in files:
        env["HDC_IM_TOSCA_TYPES_FILES"] = json.dumps([*files, str(hdc_types)])
    return env


def main(argv: Sequence[str] | None = None) -> None:
    home = data_dir()
    for key, value in embedded_env(home).items():
        os.environ.setdefault(key, value)
    setup_logging("embedded", os.environ.get("HDC_LOG_LEVEL", "INFO"))
    setup_telemetry("embedded", os.environ.get("HDC_OTLP_ENDPOINT"))
    agents: list[local_site.LocalSiteAgent] = []
    try:
        runs = []
        for name, service in discover().items():
            settings = load_settings(service.settings_cls)
            if settings.http_host not in ("127.0.0.1", "localhost", "::1"):
                raise ConfigError(
                    f"{name}: embedded mode serves on localhost only, not {settings.http_host}"
                )
            runs.append(prepare(service, settings))
        asyncio.run(serve_all(runs, ready=lambda r: _ready(home, r, agents)))
    except ConfigError as exc:
        print(f"hdc up: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        for agent in agents:
            agent.stop()
        state_path(home).unlink(missing_ok=True)


def _ready(home: Path, runs: Sequence[Running], agents: list) -> None:
    _write_state(home, runs)
    urls = {r.service.name: r.urls for r in runs}
    # The local site is registered through the info agent once the registry listens.
    if "infoprovider" in urls and "http" in urls.get("gateway", {}) and local_site.available():
        agent = local_site.LocalSiteAgent(
            home / "data", local_site.registry_url(urls["gateway"]["http"])
        )
        agents.append(agent)
        agent.start()


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
