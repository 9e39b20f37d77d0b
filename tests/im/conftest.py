"""Fixtures for the im's integration tests: a real im server on loopback, a real moto EC2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hdc_im.service import build_parts
from hdc_im.settings import ImSettings

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class ImServer:
    """The im service (REST app, workers, bus) in this process on a free loopback port."""

    def __init__(self, settings: ImSettings) -> None:
        self.settings = settings
        self.parts = build_parts(settings)
        self.port = settings.http_port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.parts["app"], host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ImServer:
        self.parts["bus"].start()
        self.parts["worker"].start()
        self.thread.start()
        wait_until(lambda: self.server.started, 20, 0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.parts["worker"].stop()
        self.parts["bus"].stop()
        self.parts["db"].dispose()


def im_settings(tmp_path: Path, database_url: str, **overrides: Any) -> ImSettings:
    return ImSettings(
        http_host="127.0.0.1",
        http_port=_free_port(),
        database_url=database_url,
        bus_url=overrides.pop("bus_url", f"memory:///{uuid.uuid4().hex}"),
        data_dir=tmp_path / "im-data",
        job_poll_s=0.1,
        reconcile_interval_s=0,
        **overrides,
    )


@pytest.fixture
def im_server(tmp_path: Path, sqlite_url: str) -> Iterator[ImServer]:
    server = ImServer(im_settings(tmp_path, sqlite_url)).start()
    yield server
    server.stop()


class _NamespaceProxy(BaseHTTPRequestHandler):
    """Forwards to moto, restoring the EC2 XML namespace AWS itself answers with.

    moto 5 serialises EC2 answers with xmlns "http://ec2.amazonaws.com/doc/2016-11-15" while
    AWS sends ".../2016-11-15/" (trailing slash), which libcloud's EC2 driver matches exactly;
    and moto puts that namespace on error answers too, where AWS sends a bare
    `<Response><Errors><Error><Code>…` (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html),
    which is what libcloud reads the error code and message from. Only the namespace
    attribute differs; everything else passes through untouched.
    """

    upstream = ""
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v.strip() for k, v in self.headers.items() if k.lower() != "content-length"}
        resp = httpx.request(
            self.command, self.upstream + self.path, headers=headers, content=body, timeout=30
        )
        data = resp.content.replace(
            b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"',
            b"" if resp.status_code >= 400 else b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"',
        )
        self.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in (
                "content-length",
                "transfer-encoding",
                "content-encoding",
                "connection",
            ):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _forward

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A real EC2 API (moto_server) on a free loopback port, for the whole session."""
    port = _free_port()
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/moto-api/", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 30, 0.2)
        handler = type("Proxy", (_NamespaceProxy,), {"upstream": url})
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
        proxy.shutdown()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ec2_client(moto_url: str) -> Any:
    import boto3

    return boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def moto_image(moto_url: str) -> str:
    """An AMI id moto knows (moto ships a catalogue of public images)."""
    images = ec2_client(moto_url).describe_images(Owners=["amazon"])["Images"]
    return images[0]["ImageId"]


def live_instances(moto_url: str, infra_id: str | None = None) -> dict[str, dict]:
    filters = [
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopped", "stopping"]}
    ]
    if infra_id:
        filters.append({"Name": "tag:hdc-infrastructure-id", "Values": [infra_id]})
    else:
        filters.append({"Name": "tag-key", "Values": ["hdc-infrastructure-id"]})
    out = {}
    for r in ec2_client(moto_url).describe_instances(Filters=filters)["Reservations"]:
        for i in r["Instances"]:
            out[i["InstanceId"]] = i
    return out
