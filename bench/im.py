"""Benchmark: hdc's im vs grycap's IM (PyPI `im`), both on a dummy cloud, same client load.

Creates and destroys N infrastructures of 2 VMs each through each server's REST API (the
IM's own API and document format, RADL, sent identically to both), with C concurrent
clients, and prints one JSON line: infrastructures per second for each and the ratio.

The IM runs from its own venv (.venv-im, made here on first use with uv) with its Dummy
connector; hdc's im runs as `python -m hdc_im` with its embedded defaults (SQLite) and
libcloud's dummy driver. Both are separate server processes on loopback.

    .venv/bin/python bench/im.py [--infrastructures 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
IM_VENV = ROOT / ".venv-im"
IM_VERSION = "2.0.0"
RADL = """network public (outbound = 'yes')
system node (
cpu.count >= 1 and memory.size >= 512m and net_interface.0.connection = 'public' and
disk.0.image.url = 'dummy://bench-image' and disk.0.os.name = 'linux'
)
deploy node 2
"""
AUTH = (
    "id = im; type = InfrastructureManager; username = bench; password = bench\\n"
    "id = dummy; type = Dummy"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_im_venv() -> Path:
    python = IM_VENV / "bin" / "python"
    if not (IM_VENV / "bin" / "im_service").exists():
        uv = shutil.which("uv")
        if uv is None:
            raise SystemExit("bench/im.py needs `uv` to create .venv-im")
        subprocess.run([uv, "venv", "-q", "--python", "3.11", str(IM_VENV)], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(python), f"im=={IM_VERSION}"], check=True
        )
    return IM_VENV / "bin" / "im_service"


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/version", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server {url} did not come up in {timeout}s")


def start_im(work: Path) -> tuple[subprocess.Popen, str]:
    service = ensure_im_venv()
    port = free_port()
    # The IM reads its configuration from <site-packages>/../im.cfg (IM/config.py).
    site = next((IM_VENV / "lib").glob("python3*/site-packages"))
    (site / "im.cfg").write_text(
        "[im]\n"
        f"REST_PORT = {port}\nREST_ADDRESS = 127.0.0.1\n"
        f"DATA_DB = sqlite:///{work}/im-inf.dat\nLOG_FILE = {work}/im.log\nLOG_LEVEL = WARNING\n"
    )
    proc = subprocess.Popen(
        [str(service)], stdout=(work / "im.out").open("wb"), stderr=subprocess.STDOUT, cwd=work
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url, proc)
    return proc, url


def start_hdc(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "HDC_IM_HTTP_PORT": str(port),
        "HDC_IM_DATA_DIR": str(work / "hdc"),
        "HDC_IM_LOG_LEVEL": "WARNING",
        "HDC_IM_BUS_URL": "memory://",
        "HDC_IM_RECONCILE_INTERVAL_S": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hdc_im"],
        env=env,
        stdout=(work / "hdc.out").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url, proc)
    return proc, url


def run_load(url: str, n: int, concurrency: int) -> dict[str, float]:
    """C client threads, each with its own keep-alive connection (stdlib http.client: the
    client should cost as little CPU as possible on this shared machine, for both servers)."""
    headers = {"Authorization": AUTH, "Content-Type": "text/plain"}
    parsed = urlsplit(url)
    local = threading.local()

    def call(method: str, path: str, body: str | None = None) -> tuple[int, str]:
        for attempt in (1, 2):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(
                    parsed.hostname, parsed.port, timeout=120
                )
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read().decode()
            except (http.client.HTTPException, OSError):
                conn.close()
                local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def one(_i: int) -> bool:
        status, text = call("POST", "/infrastructures", RADL)
        if status != 200:
            return False
        inf = text.strip().rsplit("/", 1)[-1]
        return call("DELETE", f"/infrastructures/{inf}")[0] == 200

    # warm-up (imports, connection pools, first DB writes) outside the measurement
    for ok in ThreadPoolExecutor(concurrency).map(one, range(concurrency)):
        if not ok:
            raise SystemExit(f"warm-up against {url} failed")
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    return {"rate": sum(results) / elapsed, "errors": results.count(False), "seconds": elapsed}


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--infrastructures", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hdc-bench-im-") as tmp:
        work = Path(tmp)
        results = {}
        for name, starter in (("hdc", start_hdc), ("im", start_im)):
            proc, url = starter(work)
            try:
                results[name] = run_load(url, args.infrastructures, args.concurrency)
            finally:
                stop(proc)
    print(
        json.dumps(
            {
                "benchmark": "im_create_destroy",
                "infrastructures": args.infrastructures,
                "vms_per_infrastructure": 2,
                "concurrency": args.concurrency,
                "hdc_infrastructures_per_s": round(results["hdc"]["rate"], 2),
                "im_infrastructures_per_s": round(results["im"]["rate"], 2),
                "ratio": round(results["hdc"]["rate"] / results["im"]["rate"], 2),
                "hdc_errors": results["hdc"]["errors"],
                "im_errors": results["im"]["errors"],
            }
        )
    )


if __name__ == "__main__":
    main()
