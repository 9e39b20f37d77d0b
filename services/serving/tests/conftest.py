"""Fixtures for the serving tests: the third-party toy module registered, real servers.

The toy module (`tests/thirdparty`) is a separate installable package with a
`deepaas.v2.model` entry point. Instead of installing it into the shared virtualenv, the
session writes its `.dist-info` (what `pip install` would write) into a temporary directory
on `sys.path` and `PYTHONPATH`, so importlib.metadata, the spawned worker processes and
server subprocesses all find it exactly as they would find an installed DEEP module.

Servers are real: uvicorn on a loopback port in a thread (or a `hdc-serving run`
subprocess where a test kills the server).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

HERE = Path(__file__).parent
TOY_SRC = HERE / "thirdparty"


@pytest.fixture(scope="session", autouse=True)
def toy_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    site = tmp_path_factory.mktemp("site")
    info = site / "deep_toy_model-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: deep-toy-model\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[deepaas.v2.model]\ntoy = deep_toy_model.api\nlegacy = deep_toy_model.legacy:Model\n"
    )
    (info / "RECORD").write_text("")
    paths = [str(site), str(TOY_SRC)]
    old_env = os.environ.get("PYTHONPATH")
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old_env] if old_env else []))
    yield
    for p in paths:
        sys.path.remove(p)
    if old_env is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old_env


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the demo models' trained artifacts, shared to train digits once."""
    return tmp_path_factory.mktemp("serving-data")


class Server:
    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def start(self, ready_timeout: float | None = 60) -> None:
        self.thread.start()
        if ready_timeout is None:  # only wait until the workers have tried to load the models
            wait_for(
                lambda: (
                    self.runtime.started
                    and (self.runtime.pool.ready_workers or self.runtime.pool.warm_errors)
                ),
                60,
            )
            return
        wait_ready(self.http, ready_timeout)

    def stop(self) -> None:
        if self.server.should_exit:
            return
        self.http.close()
        self.server.should_exit = True
        self.thread.join(20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(http: httpx.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = http.get("/readyz")
            if r.status_code == 200:
                return
            last = r.text
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout} s: {last}")


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met before the deadline")


@pytest.fixture(scope="session")
def make_server(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    """Start a real server with settings overrides; every server is stopped at session end."""
    from hdc_serving.api.app import create_app
    from hdc_serving.settings import ServingSettings

    started: list[Server] = []

    def make(ready_timeout: float | None = 60, **overrides: Any) -> Server:
        db_dir = tmp_path_factory.mktemp("db")
        values: dict[str, Any] = {
            "data_dir": model_cache,
            "database_url": f"sqlite:///{db_dir}/serving.db",
            "instance_name": f"test-{db_dir.name}",
            "workers": 1,
            "predict_timeout_s": 20,
        }
        values.update(overrides)
        settings = ServingSettings(**values)
        srv = Server(create_app(settings), free_port())
        started.append(srv)
        srv.start(ready_timeout)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def server(make_server: Callable[..., Server]) -> Server:
    """The shared server: every installed model (digits, diabetes, toy), one worker."""
    return make_server()


@pytest.fixture(scope="session")
def eventually() -> Callable[..., Any]:
    """Poll a condition with a deadline (tests never sleep a fixed time)."""
    return wait_for
