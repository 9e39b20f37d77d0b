"""Throughput and latency of hdc serving against the DEEPaaS API, same model, same client.

Both servers serve the same DEEPaaS module, `hdc_serving.models.digits` (scikit-learn
digits), loading the same cached artifact: DEEPaaS 2.6.0 from PyPI (`deepaas-run`, in its
own virtualenv `.venv-deepaas`, created here with uv when missing) and `hdc-serving run`.
One aiohttp client keeps N connections busy with `POST /v2/models/digits/predict/` for a
fixed time against each, after a short warm-up, in alternating rounds. Prints one JSON line.

    .venv/bin/python bench/serving.py [--duration 15] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
DEEPAAS_VENV = ROOT / ".venv-deepaas"
DEEPAAS_PINS = ["deepaas==2.6.0", "scikit-learn==1.9.1", "pillow==13.0.0", "joblib==1.6.0"]
PIXELS = [
    0,
    0,
    5,
    13,
    9,
    1,
    0,
    0,
    0,
    0,
    13,
    15,
    10,
    15,
    5,
    0,
    0,
    3,
    15,
    2,
    0,
    11,
    8,
    0,
    0,
    4,
    12,
    0,
    0,
    8,
    8,
    0,
    0,
    5,
    8,
    0,
    0,
    9,
    8,
    0,
    0,
    4,
    11,
    0,
    1,
    12,
    7,
    0,
    0,
    2,
    14,
    5,
    10,
    12,
    0,
    0,
    0,
    0,
    6,
    13,
    10,
    0,
    0,
    0,
]  # load_digits()[0], a zero


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_deepaas_venv() -> Path:
    py = DEEPAAS_VENV / "bin" / "python"
    marker = DEEPAAS_VENV / ".hdc-bench-ready"
    if not marker.exists():
        uv = shutil.which("uv") or str(ROOT / ".venv" / "bin" / "uv")
        subprocess.run([uv, "venv", "-q", "-p", "3.11", str(DEEPAAS_VENV)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(py), *DEEPAAS_PINS], check=True)
        # The model module only: DEEPaaS finds it through the same deepaas.v2.model entry point.
        subprocess.run(
            [
                uv,
                "pip",
                "install",
                "-q",
                "--python",
                str(py),
                "--no-deps",
                "-e",
                str(ROOT / "services/serving"),
            ],
            check=True,
        )
        marker.write_text("ok\n")
    return DEEPAAS_VENV / "bin" / "deepaas-run"


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


async def drive(url: str, connections: int, duration: float, warmup: float) -> dict:
    payload = json.dumps({"pixels": PIXELS}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one() -> float:
            t0 = time.perf_counter()
            async with s.post(url, data=payload, headers=headers) as r:
                body = await r.read()
                if r.status != 200 or b'"label"' not in body:
                    raise RuntimeError(f"{r.status}: {body[:200]!r}")
            return time.perf_counter() - t0

        async def loop(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                try:
                    dt = await one()
                    if record:
                        latencies.append(dt)
                except Exception:
                    errors += 1

        t_warm = time.perf_counter() + warmup
        await asyncio.gather(*(loop(t_warm, False) for _ in range(connections)))
        start = time.perf_counter()
        await asyncio.gather(*(loop(start + duration, True) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    n = len(latencies)
    if not n:
        raise RuntimeError(f"no successful request ({errors} errors)")
    return {"latencies": latencies, "elapsed": elapsed, "errors": errors}


def combine(rounds: list[dict]) -> dict:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    n = len(latencies)
    elapsed = sum(r["elapsed"] for r in rounds)
    return {
        "rps": round(n / elapsed, 1),
        "p50_ms": round(latencies[n // 2] * 1000, 2),
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2),
        "requests": n,
        "errors": sum(r["errors"] for r in rounds),
    }


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    ap.add_argument(
        "--workers", type=int, default=0, help="predict processes for BOTH servers (0: one per CPU)"
    )
    args = ap.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))
    deepaas_run = ensure_deepaas_venv()
    tmp = Path(tempfile.mkdtemp(prefix="hdc-bench-serving-"))
    env = {**os.environ, "HDC_MODEL_DIR": str(tmp / "serving" / "models"), "HDC_HOME": str(tmp)}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # the same BLAS threading for both servers' model calls
    rounds: dict[str, list[dict]] = {"deepaas": [], "hdc": []}
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        port = free_port()
        procs["deepaas"] = start(
            [
                str(deepaas_run),
                "--listen-ip",
                "127.0.0.1",
                "--listen-port",
                str(port),
                "--model-name",
                "digits",
                "--workers",
                str(workers),
            ],
            env,
            tmp / "deepaas.log",
        )
        await wait_ready(f"http://127.0.0.1:{port}/v2/models/", procs["deepaas"])
        urls["deepaas"] = f"http://127.0.0.1:{port}/v2/models/digits/predict/"
        port = free_port()
        procs["hdc"] = start(
            [
                str(ROOT / ".venv/bin/hdc-serving"),
                "run",
                "--listen-ip",
                "127.0.0.1",
                "--listen-port",
                str(port),
                "--model",
                "digits",
                "--workers",
                str(workers),
                "--data-dir",
                str(tmp),
                "--log-level",
                "WARNING",
            ],
            env,
            tmp / "hdc.log",
        )
        await wait_ready(f"http://127.0.0.1:{port}/readyz", procs["hdc"])
        urls["hdc"] = f"http://127.0.0.1:{port}/v2/models/digits/predict/"
        # Rounds alternate between the servers, so a change in the machine's load during the
        # run (it is shared) weighs on both alike; the idle server costs nothing meanwhile.
        for _ in range(args.rounds):
            for name in ("deepaas", "hdc"):
                rounds[name].append(
                    await drive(
                        urls[name], args.connections, args.duration / args.rounds, args.warmup
                    )
                )
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    results = {name: combine(r) for name, r in rounds.items()}
    line = {
        "bench": "serving",
        "model": "digits",
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "workers": workers,
        "deepaas_version": "2.6.0",
        "deepaas": results["deepaas"],
        "hdc": results["hdc"],
        "throughput_ratio": round(results["hdc"]["rps"] / results["deepaas"]["rps"], 2),
        "p99_ratio": round(results["hdc"]["p99_ms"] / results["deepaas"]["p99_ms"], 3),
        "goal": "throughput_ratio >= 3 and p99_ratio < 1",
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
