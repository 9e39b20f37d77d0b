"""Gateway overhead: the same small authenticated GET, straight to a service and through
the gateway, same client, same run. Prints one JSON line.

The service is a minimal ASGI app that verifies `X-HDC-Identity` with `hdc_common.identity`
on every request (as every hdc service does). Direct calls carry an identity header the
bench signed itself; gateway calls carry an embedded-OP bearer token that the gateway
validates (signature, issuer, audience, expiry; cached), maps to roles, and forwards as a
freshly signed header. Each side runs in its own uvicorn process.

    .venv/bin/python bench/gateway.py [--requests 3000] [--concurrency 32] [--rounds 3]

Goal (issue 8): gateway throughput >= 0.7 x direct and added p50 < 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the two servers (run in child processes) -----------------------------------------------


def serve_backend(port: int, public_pem_path: str) -> None:
    import uvicorn
    from hdc_common.errors import Problem
    from hdc_common.identity import InternalTokenVerifier, identity_from_headers

    verifier = InternalTokenVerifier(Path(public_pem_path).read_text())

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            who = identity_from_headers(headers, verifier)
            status, body = 200, json.dumps({"sub": who.subject, "groups": list(who.groups)})
        except Problem as exc:
            status, body = exc.status, json.dumps(exc.to_dict())
        data = body.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="uvloop",
        http="httptools",
    )


def serve_gateway(port: int, backend_port: int, data_dir: str, private_pem_path: str) -> None:
    import uvicorn
    from hdc_gateway.service import build_app
    from hdc_gateway.settings import GatewaySettings

    settings = GatewaySettings(
        http_host="127.0.0.1",
        http_port=port,
        data_dir=data_dir,
        identity_private_key=private_pem_path,
        routes=[
            {"prefix": "/svc", "upstream": f"http://127.0.0.1:{backend_port}", "strip_prefix": True}
        ],
        # The bench measures proxying, not the limiter refusing its own load.
        rate_limit={"per_identity": {"rate": 0}, "per_ip": {"rate": 0}},
    )
    uvicorn.run(
        build_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        proxy_headers=False,
    )


# -- the client ------------------------------------------------------------------------------


async def _wait_up(url: str) -> None:
    import aiohttp

    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not come up") from None
                await asyncio.sleep(0.1)


async def _latency(url: str, headers: dict[str, str], n: int) -> list[float]:
    import aiohttp

    samples = []
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(n):
            start = time.perf_counter()
            async with s.get(url) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")
            samples.append(time.perf_counter() - start)
    return samples


async def _throughput(url: str, headers: dict[str, str], n: int, concurrency: int) -> float:
    import aiohttp

    remaining = n
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as s:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with s.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc); 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair
    from hdc_gateway import devtoken
    from hdc_gateway.embedded_op import EMBEDDED_ISSUER

    tmp = Path(tempfile.mkdtemp(prefix="hdc-bench-gw-"))
    private, public = generate_keypair()
    (tmp / "id.key").write_text(private)
    (tmp / "id.pub").write_text(public)
    backend_port, gateway_port = _port(), _port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = [
        subprocess.Popen(
            [*me, "--serve", "backend", "--port", str(backend_port), "--key", str(tmp / "id.pub")],
            env=env,
        ),
        subprocess.Popen(
            [
                *me,
                "--serve",
                "gateway",
                "--port",
                str(gateway_port),
                "--backend-port",
                str(backend_port),
                "--data-dir",
                str(tmp / "data"),
                "--key",
                str(tmp / "id.key"),
            ],
            env=env,
        ),
    ]
    try:
        direct_url = f"http://127.0.0.1:{backend_port}/items/1"
        gateway_url = f"http://127.0.0.1:{gateway_port}/svc/items/1"
        await _wait_up(direct_url)
        await _wait_up(f"http://127.0.0.1:{gateway_port}/healthz")
        token = devtoken.mint(tmp / "data", "bench-user", ["ml-team"])
        # The identity header the gateway would forward for this user, made by the bench.
        identity = Identity(
            subject="bench-user", issuer=EMBEDDED_ISSUER, groups=("ml-team",), roles=("user",)
        )
        direct_headers = {"X-HDC-Identity": InternalTokenSigner(private, ttl_s=3600).sign(identity)}
        gateway_headers = {"Authorization": f"Bearer {token}"}
        # Warm both paths (connection pools, JWKS, token cache).
        await _latency(direct_url, direct_headers, 200)
        await _latency(gateway_url, gateway_headers, 200)
        lat: dict[str, list[float]] = {"direct": [], "gateway": []}
        rps: dict[str, list[float]] = {"direct": [], "gateway": []}
        cpu_us: dict[tuple[str, str], list[float]] = defaultdict(list)
        # Alternate the two sides round by round so machine noise hits both alike.
        for _ in range(args.rounds):
            for side, url, headers in (
                ("direct", direct_url, direct_headers),
                ("gateway", gateway_url, gateway_headers),
            ):
                lat[side] += await _latency(url, headers, args.latency_requests)
                before = {
                    name: _cpu_s(proc.pid)
                    for name, proc in zip(("service", "gateway"), procs, strict=True)
                }
                rps[side].append(await _throughput(url, headers, args.requests, args.concurrency))
                for name, proc in zip(("service", "gateway"), procs, strict=True):
                    used = _cpu_s(proc.pid) - before[name]
                    cpu_us[(side, name)].append(used / args.requests * 1e6)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    result: dict[str, Any] = {"bench": "gateway"}
    for side in ("direct", "gateway"):
        result[side] = {
            "p50_ms": round(_pct(lat[side], 0.50), 3),
            "p99_ms": round(_pct(lat[side], 0.99), 3),
            "rps": round(statistics.median(rps[side]), 1),
        }
    # CPU each server process spent per request during the throughput rounds: unlike
    # rates, this barely moves with what else the machine runs.
    result["cpu_us_per_request"] = {
        f"{side}_{name}": round(statistics.median(v), 1)
        for (side, name), v in cpu_us.items()
        if any(v)
    }
    result["added_p50_ms"] = round(result["gateway"]["p50_ms"] - result["direct"]["p50_ms"], 3)
    result["throughput_ratio"] = round(result["gateway"]["rps"] / result["direct"]["rps"], 3)
    result["goal_met"] = result["throughput_ratio"] >= 0.7 and result["added_p50_ms"] < 2.0
    # Three processes (client, gateway, service) share this machine's cores with whatever
    # else runs: the load average tells how much of the ratio is contention.
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    result["config"] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_requests": args.latency_requests,
        "rounds": args.rounds,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per throughput round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=500, help="per latency round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=["backend", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "backend":
        serve_backend(args.port, args.key)
    elif args.serve == "gateway":
        serve_gateway(args.port, args.backend_port, args.data_dir, args.key)
    else:
        print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
