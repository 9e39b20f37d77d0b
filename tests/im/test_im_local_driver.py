"""The local site: container nodes run as local processes; outputs carry the endpoint URL."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import httpx
import sqlalchemy as sa

_spec = importlib.util.spec_from_file_location(
    "im_fx_local", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host: {properties: {num_cpus: 1, mem_size: 1 GB, publish_ports: [{protocol: tcp, source: 5000}]}}
    model:
      type: tosca.nodes.indigo.Container.Application.Docker.Marathon
      properties:
        environment_variables: {HDC_MODEL: digits}
      artifacts:
        image: {file: deephdc/digits, type: tosca.artifacts.Deployment.Image.Container.Docker}
      requirements: [{host: runtime}]
  outputs:
    endpoint: {value: {get_attribute: [model, endpoint]}}
"""
AUTH = {
    "Authorization": "type = InfrastructureManager; username = gina; password = pw\\n"
    "id = here; type = Local"
}


def _server(tmp_path: Path, sqlite_url: str, command: list[str]) -> fx.ImServer:
    return fx.ImServer(fx.im_settings(tmp_path, sqlite_url, local_command=command)).start()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_local_process_lifecycle(tmp_path: Path, sqlite_url: str) -> None:
    server = _server(
        tmp_path, sqlite_url, [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"]
    )
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA,
            headers={**AUTH, "Content-Type": "text/yaml"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        inf = r.headers["InfID"]
        out = httpx.get(f"{server.url}/infrastructures/{inf}/outputs", headers=AUTH).json()
        endpoint = out["outputs"]["endpoint"]
        assert endpoint.startswith("http://127.0.0.1:")
        assert httpx.get(endpoint).status_code == 200
        with server.parts["sessions"]() as s:
            pid = s.execute(sa.text("SELECT info FROM im_vms")).scalar()
        pid = __import__("json").loads(pid)["pid"] if isinstance(pid, str) else pid["pid"]
        assert _pid_alive(pid)

        assert (
            httpx.put(f"{server.url}/infrastructures/{inf}/stop", headers=AUTH).status_code == 200
        )
        fx.wait_until(lambda: not _pid_alive(pid), 10, 0.05)
        assert (
            httpx.put(f"{server.url}/infrastructures/{inf}/start", headers=AUTH).status_code == 200
        )
        fx.wait_until(lambda: _ok(endpoint), 10, 0.1)

        assert httpx.delete(f"{server.url}/infrastructures/{inf}", headers=AUTH).status_code == 200
        assert not _ok(endpoint)
        assert list((tmp_path / "im-data" / "local").glob("*.json")) == []
    finally:
        server.stop()


def test_local_process_that_dies_fails_the_infrastructure(tmp_path: Path, sqlite_url: str) -> None:
    server = _server(
        tmp_path,
        sqlite_url,
        [sys.executable, "-c", "import sys; sys.exit('model {model} not found')"],
    )
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA,
            headers={**AUTH, "Content-Type": "text/yaml"},
            timeout=60,
        )
        assert r.status_code == 400
        assert "model digits not found" in r.text
        assert list((tmp_path / "im-data" / "local").glob("*.json")) == []
    finally:
        server.stop()


def test_local_model_runs_under_hdc_serving(tmp_path: Path, sqlite_url: str) -> None:
    server = fx.ImServer(
        fx.im_settings(
            tmp_path,
            sqlite_url,
            local_command=[
                str(Path(sys.executable).parent / "hdc-serving"),
                "run",
                "--model",
                "{model}",
                "--listen-ip",
                "{host}",
                "--listen-port",
                "{port}",
                "--data-dir",
                str(tmp_path / "serving"),
            ],
        )
    ).start()
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA,
            headers={**AUTH, "Content-Type": "text/yaml"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        inf = r.headers["InfID"]
        endpoint = httpx.get(f"{server.url}/infrastructures/{inf}/outputs", headers=AUTH).json()[
            "outputs"
        ]["endpoint"]
        models = httpx.get(f"{endpoint}/v2/models/", timeout=30)
        assert models.status_code == 200 and "digits" in models.text
        httpx.delete(f"{server.url}/infrastructures/{inf}", headers=AUTH, timeout=60)
    finally:
        server.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_reconciler_stops_orphan_local_processes(tmp_path: Path, sqlite_url: str) -> None:
    server = _server(
        tmp_path, sqlite_url, [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}"]
    )
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA,
            headers={**AUTH, "Content-Type": "text/yaml"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        endpoint = httpx.get(
            f"{server.url}/infrastructures/{r.headers['InfID']}/outputs", headers=AUTH
        ).json()["outputs"]["endpoint"]
        # the database forgets the infrastructure (as after a lost delete): an orphan process
        with server.parts["sessions"].begin() as s:
            s.execute(sa.text("DELETE FROM im_vms"))
            s.execute(sa.text("DELETE FROM im_jobs"))
            s.execute(sa.text("DELETE FROM im_infrastructures"))
        removed = server.parts["reconciler"].run_once()
        assert len(removed) == 1
        assert not _ok(endpoint)
    finally:
        server.stop()


# serves like http.server but shrugs off SIGTERM: only the SIGKILL that follows ends it
STUBBORN = (
    "import signal, sys, http.server; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), "
    "http.server.SimpleHTTPRequestHandler).serve_forever()"
)


def _gone(pid: int) -> bool:
    """No process at all: not running, and not a zombie waiting for its parent either."""
    return not Path(f"/proc/{pid}").exists()


def _pid_of_local_process(tmp_path: Path) -> int:
    (state,) = (tmp_path / "im-data" / "local").glob("*.json")
    return __import__("json").loads(state.read_text())["pid"]


def test_deleted_processes_are_reaped_not_left_zombies(
    tmp_path: Path, sqlite_url: str, monkeypatch
) -> None:
    from hdc_im.drivers import local

    monkeypatch.setattr(local, "_TERM_GRACE_S", 0.5)  # the SIGKILL comes sooner
    server = _server(tmp_path, sqlite_url, [sys.executable, "-c", STUBBORN, "{port}", "{host}"])
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA,
            headers={**AUTH, "Content-Type": "text/yaml"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        inf = r.headers["InfID"]
        first = _pid_of_local_process(tmp_path)
        # stop and start: the stopped process is reaped too
        assert (
            httpx.put(
                f"{server.url}/infrastructures/{inf}/stop", headers=AUTH, timeout=30
            ).status_code
            == 200
        )
        assert _gone(first)
        assert (
            httpx.put(
                f"{server.url}/infrastructures/{inf}/start", headers=AUTH, timeout=30
            ).status_code
            == 200
        )
        second = _pid_of_local_process(tmp_path)
        assert second != first and _pid_alive(second)

        assert (
            httpx.delete(
                f"{server.url}/infrastructures/{inf}", headers=AUTH, timeout=30
            ).status_code
            == 200
        )
        assert _gone(second)
    finally:
        server.stop()


def test_a_process_that_exits_by_itself_is_reaped(tmp_path: Path, sqlite_url: str) -> None:
    server = _server(tmp_path, sqlite_url, [sys.executable, "-c", "raise SystemExit('no model')"])
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA,
            headers={**AUTH, "Content-Type": "text/yaml"},
            timeout=60,
        )
        assert r.status_code == 400 and "no model" in r.text
        with server.parts["sessions"]() as s:
            info = s.execute(sa.text("SELECT info FROM im_vms")).scalar()
        pid = (__import__("json").loads(info) if isinstance(info, str) else info)["pid"]
        assert _gone(pid)
    finally:
        server.stop()
