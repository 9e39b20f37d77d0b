"""The service runner and the HTTP helper, exercised through a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hdc_common.identity import HEADER, Identity, InternalTokenSigner, generate_keypair

SAMPLE = Path(__file__).with_name("sample")


def start(env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")}
    full.update({"PYTHONPATH": str(SAMPLE), "HDC_SAMPLE_DATA_DIR": str(tmp_path)} | env)
    return subprocess.Popen(
        [sys.executable, "-c", "import sample_service; sample_service.main()"],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line_error(proc: subprocess.Popen) -> str:
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def test_unknown_setting_stops_with_one_line(tmp_path):
    line = one_line_error(start({"HDC_SAMPLE_DATABSE_URL": "sqlite://"}, tmp_path))
    assert "HDC_SAMPLE_DATABSE_URL" in line


def test_bad_database_url_stops_with_one_line(tmp_path):
    line = one_line_error(start({"HDC_SAMPLE_DATABASE_URL": "not a url"}, tmp_path))
    assert "database_url" in line


def test_unreachable_database_stops_with_one_line(tmp_path, unused_port):
    url = f"postgresql://hdc:hdc@127.0.0.1:{unused_port}/nothing"
    line = one_line_error(start({"HDC_SAMPLE_DATABASE_URL": url}, tmp_path))
    assert "unreachable" in line and str(unused_port) in line


def test_unreachable_broker_stops_with_one_line(tmp_path, unused_port):
    url = f"amqp://hdc:hdc@127.0.0.1:{unused_port}//"
    line = one_line_error(start({"HDC_SAMPLE_BUS_URL": url}, tmp_path))
    assert "bus_url" in line and "unreachable" in line


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_serves_spec_first_api_and_stops_cleanly(tmp_path, unused_port, postgres_url, rabbitmq_url):
    private, public = generate_keypair()
    (tmp_path / "id.pub").write_text(public)
    proc = start(
        {
            "HDC_SAMPLE_HTTP_PORT": str(unused_port),
            "HDC_SAMPLE_DATABASE_URL": postgres_url,
            "HDC_SAMPLE_BUS_URL": rabbitmq_url,
            "HDC_SAMPLE_IDENTITY_PUBLIC_KEY": str(tmp_path / "id.pub"),
        },
        tmp_path,
    )
    base = f"http://127.0.0.1:{unused_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become healthy"
            time.sleep(0.1)
        assert httpx.get(base + "/readyz").json()["status"] == "ready"
        # spec-first validation: unknown field, missing field, wrong type are 400 problems
        for bad in (
            {"name": "a", "extra": 1},
            {},
            {"name": "a", "count": "x"},
            {"name": "a", "count": 0},
        ):
            r = httpx.post(base + "/items", json=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["detail"]
        assert httpx.post(base + "/items", json={"name": "a"}).status_code == 201
        r = httpx.post(base + "/items", json={"name": "a"})
        assert r.status_code == 409 and r.json()["detail"] == "item 'a' exists"
        assert httpx.get(base + "/items/nope").status_code == 404
        # an unexpected error is a 500 problem that does not leak internals
        r = httpx.get(base + "/boom")
        assert r.status_code == 500 and "kaboom" not in r.text
        # identity: refused without the gateway's header, accepted with it
        assert httpx.get(base + "/whoami").status_code == 401
        token = InternalTokenSigner(private).sign(Identity("alice", "iss", groups=("ml",)))
        r = httpx.get(base + "/whoami", headers={HEADER: token})
        assert r.json() == {"subject": "alice", "groups": ["ml"]}
        assert httpx.get(base + "/openapi.json").json()["info"]["title"] == "sample"
        assert "hdc_http_requests_total" in httpx.get(base + "/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    # logs are JSON lines
    import json

    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(r["msg"] == "service ready" for r in records)
    assert all({"ts", "level", "service", "msg"} <= set(r) for r in records)


def test_nice_setting_lowers_the_process(tmp_path, unused_port):
    env = {"HDC_SAMPLE_HTTP_PORT": str(unused_port)}
    proc = start(env | {"HDC_SAMPLE_NICE": "7"}, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{unused_port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become healthy"
            time.sleep(0.1)
        threads = list(Path(f"/proc/{proc.pid}/task").iterdir())
        # Field 19 of /proc/<pid>/task/<tid>/stat is the thread's niceness.
        nices = {int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in threads}
        assert nices == {7}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    bad = start({"HDC_SAMPLE_NICE": "20"}, tmp_path)
    assert "nice" in one_line_error(bad)
