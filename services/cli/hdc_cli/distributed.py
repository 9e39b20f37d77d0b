"""Distributed mode on one machine: each service its own process (optionally several
replicas), PostgreSQL databases, the real RabbitMQ broker, the gateway in front.

`hdc up --distributed` creates one database per service (`hdc_<service>`) on the
PostgreSQL server given by `--postgres` (prefix `--db-prefix`), starts every service with `hdc-run <service>`,
waits for every health check and writes `embedded.json` with every pid so that
`hdc status` / `hdc down` work the same as in embedded mode.

The orchestrator runs as the Helm chart runs it: an API process (role=api) and a workflow
workers process (role=workers, `orchestrator-workers`) on the same database and broker.
Every service here shares one host, so what nobody waits on interactively runs at nice 10:
the orchestrator's workers, the im (its engine turns commands into infrastructure) and the
ranker (asked by those workers only). Deployments progress after the APIs have answered,
not instead of them (bench/orchestrator.py measures this layout). `HDC_<SERVICE>_NICE` in
the environment still wins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from hdc_cli import embedded
from hdc_common.service import discover
from hdc_common.settings import load_settings

HEALTH_TIMEOUT_S = 60
WORKERS_NICE = 10
BACKGROUND_SERVICES = ("im", "ranker")  # run at WORKERS_NICE too (see the docstring)
WORKERS_PORT_OFFSET = 50  # the workers' own health port: the API's + 50 (8151, ...)


def ensure_database(server_url: str, name: str) -> str:
    """Create `name` on the server if missing; return its URL."""
    admin = sa.create_engine(f"{server_url.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": name}
            ).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return f"{server_url.rstrip('/')}/{name}"


def service_env(
    home: Path,
    name: str,
    bus_url: str,
    database_url: str,
    replica: int,
    trust_issuers: list[str] | None = None,
) -> dict[str, str]:
    prefix = f"HDC_{name.upper()}_"
    env = dict(os.environ)
    env.update(embedded.embedded_env(home))
    env[f"{prefix}BUS_URL"] = bus_url
    env[f"{prefix}DATABASE_URL"] = database_url
    env[f"{prefix}DATA_DIR"] = str(home / "data")
    if name in BACKGROUND_SERVICES:
        env.setdefault(f"{prefix}NICE", str(WORKERS_NICE))
    if name == "gateway" and trust_issuers:
        # Users log in at these providers (hdc login --issuer); the embedded signing key
        # stays trusted too, for the local site's agent and `hdc token`.
        issuers = [
            {"issuer": url.rstrip("/"), "audiences": ["hdc-gateway"]} for url in trust_issuers
        ]
        env[f"{prefix}ISSUERS"] = json.dumps(issuers)
    if replica:
        # Extra replicas listen on shifted ports; the first keeps the well-known one.
        settings = load_settings(discover()[name].settings_cls)
        if settings.http_port:
            env[f"{prefix}HTTP_PORT"] = str(settings.http_port + 100 * replica)
        if settings.grpc_port:
            env[f"{prefix}GRPC_PORT"] = str(settings.grpc_port + 100 * replica)
    return env


def start(
    home: Path,
    bus_url: str,
    postgres_url: str,
    replicas: int = 1,
    db_prefix: str = "hdc",
    trust_issuers: list[str] | None = None,
) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    procs: list[dict] = []
    services: dict[str, dict[str, str]] = {}
    try:
        for name, service in discover().items():
            db_url = ensure_database(postgres_url, f"{db_prefix}_{name}")
            settings = load_settings(service.settings_cls)
            for replica in range(replicas):
                env = service_env(home, name, bus_url, db_url, replica, trust_issuers or [])
                runs = [(name, env)]
                if name == "orchestrator":
                    runs = _orchestrator_roles(env, settings.http_port)
                for label, run_env in runs:
                    log = open(home / "logs" / f"{label}-{replica}.log", "ab")  # noqa: SIM115 - owned by the child
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "hdc_cli.run_one", name],
                        env=run_env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                    procs.append(
                        {"service": label, "replica": replica, "pid": proc.pid, "proc": proc}
                    )
                    if replica == 0:
                        prefix = f"HDC_{name.upper()}_"
                        urls = {}
                        if settings.http_port:
                            port = run_env.get(f"{prefix}HTTP_PORT", settings.http_port)
                            urls["http"] = f"http://{settings.http_host}:{port}"
                        if settings.grpc_port:
                            urls["grpc"] = f"{settings.http_host}:{settings.grpc_port}"
                        services[label] = urls
        _wait_healthy(home, procs, services)
        agent = _start_local_site_agent(home, services)
        if agent is not None:
            procs.append(agent)
    except BaseException:
        for p in procs:
            p["proc"].terminate()
        raise
    state = {
        "pid": os.getpid(),
        "mode": "distributed",
        "pids": [p["pid"] for p in procs],
        "services": services,
    }
    embedded.state_path(home).write_text(json.dumps(state, indent=2))
    return state


def _orchestrator_roles(env: dict[str, str], default_port: int) -> list[tuple[str, dict]]:
    """The orchestrator's API and its niced workers, as (label, environment) pairs."""
    port = int(env.get("HDC_ORCHESTRATOR_HTTP_PORT", default_port))
    api = env | {"HDC_ORCHESTRATOR_ROLE": "api"}
    workers = env | {
        "HDC_ORCHESTRATOR_ROLE": "workers",
        "HDC_ORCHESTRATOR_NICE": str(WORKERS_NICE),
        "HDC_ORCHESTRATOR_HTTP_PORT": str(port + WORKERS_PORT_OFFSET),
    }
    return [("orchestrator", api), ("orchestrator-workers", workers)]


def _start_local_site_agent(home: Path, services: dict[str, dict[str, str]]) -> dict | None:
    """This machine's site, registered with the infoprovider like in embedded mode."""
    from hdc_cli import local_site

    if "infoprovider" not in services or "http" not in services.get("gateway", {}):
        return None
    if not local_site.available():
        return None
    log = open(home / "logs" / "local-site-agent.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hdc_cli.local_site",
            str(home / "data"),
            local_site.registry_url(services["gateway"]["http"]),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return {"service": "local-site-agent", "replica": 0, "pid": proc.pid, "proc": proc}


def _wait_healthy(home: Path, procs: list[dict], services: dict[str, dict[str, str]]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    pending = {n: u["http"] for n, u in services.items() if "http" in u}
    while pending:
        for p in procs:
            if p["proc"].poll() is not None:
                log = home / "logs" / f"{p['service']}-{p['replica']}.log"
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                raise RuntimeError(f"{p['service']} exited with {p['proc'].returncode}:\n{tail}")
        for name, url in list(pending.items()):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    del pending[name]
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {HEALTH_TIMEOUT_S}s: {', '.join(pending)}")
        time.sleep(0.2)
