"""The `hdc` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
from hdc_cli import auth, embedded
from hdc_cli.api import DEFAULT_URL, EXIT_AUTH, EXIT_NOT_RUNNING, EXIT_USAGE, CliError
from hdc_cli.deployments import deployment, resource
from hdc_cli.models import model
from hdc_cli.sites import site
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)

UP_TIMEOUT_S = 60


@click.group()
def cli() -> None:
    """hdc: deploy, train and serve models on hybrid clouds."""


def _read_state(home: Path) -> dict | None:
    try:
        return json.loads(embedded.state_path(home).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _pids(state: dict | None) -> list[int]:
    if not state:
        return []
    return list(state.get("pids") or [state["pid"]])


def _running(state: dict | None) -> bool:
    return any(_alive(pid) for pid in _pids(state))


def _health(urls: dict[str, str]) -> str:
    if "http" not in urls:
        return "up (gRPC only)"
    try:
        r = httpx.get(urls["http"] + "/healthz", timeout=2)
    except httpx.HTTPError as exc:
        return f"down ({type(exc).__name__})"
    return "healthy" if r.status_code == 200 else f"unhealthy ({r.status_code})"


@cli.command()
@click.option("--foreground", is_flag=True, help="Run in this terminal instead of detaching.")
@click.option(
    "--distributed", is_flag=True, help="One process per service, PostgreSQL and RabbitMQ."
)
@click.option(
    "--bus-url",
    envvar="HDC_BUS_URL",
    default="amqp://hdc:hdc@127.0.0.1:5672/",
    show_default=True,
    help="RabbitMQ URL (distributed mode).",
)
@click.option(
    "--postgres",
    envvar="HDC_POSTGRES_URL",
    default="postgresql+psycopg://hdc:hdc@127.0.0.1:5432",
    show_default=True,
    help="PostgreSQL server URL without database (distributed mode).",
)
@click.option(
    "--db-prefix",
    envvar="HDC_DB_PREFIX",
    default="hdc",
    show_default=True,
    help="Databases are <prefix>_<service> (distributed mode).",
)
@click.option(
    "--trust-issuer",
    "trust_issuers",
    multiple=True,
    metavar="URL",
    help="OpenID provider whose tokens (audience hdc-gateway) the gateway accepts, e.g. "
    "Keycloak's realm URL (distributed mode; repeatable).",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1, max=5),
    default=1,
    show_default=True,
    help="Processes per service (distributed mode).",
)
def up(
    foreground: bool,
    distributed: bool,
    bus_url: str,
    postgres: str,
    db_prefix: str,
    trust_issuers: tuple[str, ...],
    replicas: int,
) -> None:
    """Start every installed service on this machine (embedded mode by default)."""
    home = embedded.data_dir()
    state = _read_state(home)
    if _running(state):
        console.print(f"hdc is already running (pids {_pids(state)}); `hdc status` shows it.")
        _print_services(state)
        return
    if distributed:
        from hdc_cli import distributed as dist

        with console.status("starting hdc services (distributed)…"):
            try:
                state = dist.start(
                    home, bus_url, postgres, replicas, db_prefix, list(trust_issuers)
                )
            except Exception as exc:
                err.print(f"[red]hdc up --distributed failed:[/red] {exc}")
                raise SystemExit(1) from None
        console.print(
            f"hdc is up (distributed, {len(state['pids'])} processes); logs in {home / 'logs'}"
        )
        _print_services(state)
        return
    if foreground:
        embedded.main()
        return
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "hdc.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hdc_cli.embedded"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + UP_TIMEOUT_S
    with console.status("starting hdc services…"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err.print(f"[red]hdc up failed[/red] (exit {proc.returncode}); last log lines:")
                err.print(_tail(log_path))
                raise SystemExit(1)
            state = _read_state(home)
            if state and state.get("pid") == proc.pid:
                break
            time.sleep(0.2)
        else:
            err.print(f"[red]services did not start within {UP_TIMEOUT_S}s[/red]; see {log_path}")
            raise SystemExit(1)
    console.print(f"hdc is up (pid {proc.pid}); logs in {log_path}")
    _print_services(state)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _print_services(state: dict) -> None:
    table = Table("service", "http", "grpc", "health")
    for name, urls in state["services"].items():
        table.add_row(name, urls.get("http", "-"), urls.get("grpc", "-"), _health(urls))
    console.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show whether hdc runs here and the health of each service."""
    state = _read_state(embedded.data_dir())
    running = _running(state)
    if as_json:
        out = {"running": running}
        if running:
            out["pids"] = _pids(state)
            out["services"] = {n: {**u, "health": _health(u)} for n, u in state["services"].items()}
        click.echo(json.dumps(out))
    elif running:
        console.print(f"hdc is running (pids {_pids(state)})")
        _print_services(state)
    else:
        console.print("hdc is not running; start it with `hdc up`.")
    raise SystemExit(0 if running else 3)


@cli.command()
def down() -> None:
    """Stop the services `hdc up` started."""
    home = embedded.data_dir()
    state = _read_state(home)
    if not _running(state):
        embedded.state_path(home).unlink(missing_ok=True)
        console.print("hdc is not running.")
        return
    pids = [p for p in _pids(state) if _alive(p)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    embedded.state_path(home).unlink(missing_ok=True)
    console.print(f"hdc stopped (pids {pids}).")


@cli.command()
@click.option(
    "--url", envvar="HDC_URL", default=DEFAULT_URL, show_default=True, help="Gateway URL."
)
@click.option("--issuer", envvar="HDC_ISSUER", help="OpenID provider (omit in embedded mode).")
@click.option("--client-id", envvar="HDC_CLIENT_ID", default="hdc-cli", show_default=True)
@click.option("--scope", default="openid profile offline_access", show_default=True)
def login(url: str, issuer: str | None, client_id: str, scope: str) -> None:
    """Get a token: OIDC device authorization grant, or a development token in embedded mode."""
    if issuer is None:
        if not auth.is_local(url):
            raise CliError(
                "give --issuer (or HDC_ISSUER): the OpenID provider to log in with", EXIT_USAGE
            )
        token = auth.embedded_token()
        if token is None:
            raise CliError("hdc is not running here; start it with `hdc up`", EXIT_NOT_RUNNING)
        console.print("embedded mode: using a development token signed by the local gateway")
        return
    auth.device_login(url.rstrip("/"), issuer, client_id, scope, console.print)
    console.print("logged in; the token is cached and refreshed automatically")


@cli.command()
@click.option(
    "--url", envvar="HDC_URL", default=DEFAULT_URL, show_default=True, help="Gateway URL."
)
def token(url: str) -> None:
    """Print the access token the CLI would use (for curl: -H "Authorization: Bearer $(hdc token)")."""
    value = auth.current_token(url.rstrip("/"))
    if not value:
        raise CliError("no token: run `hdc login` (or set HDC_TOKEN)", EXIT_AUTH)
    click.echo(value)


cli.add_command(deployment)
cli.add_command(resource)
cli.add_command(site)
cli.add_command(model)
