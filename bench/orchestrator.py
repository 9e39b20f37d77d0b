"""Benchmark of the orchestrator: 500 deployments submitted concurrently.

Real PostgreSQL and RabbitMQ (fresh database and vhost), the real orchestrator as an API
process and a workers process (role=api / role=workers, the workers at `nice` 10 so that on
this shared 2-core host the API is served first; `--layout single`: one process, role=all).
Placement: the real `hdc-ranker` when it starts (`--ranker auto|real`), else its gRPC test
double; candidates come from the gRPC test double of the infoprovider contract
(tests/orchestrator/orch_doubles.py). The im is the real `hdc-im` on its dummy driver when
`--im real` works, otherwise the im TEST DOUBLE of the same AMQP contract (the JSON line
says which one ran).

Anchor (same run): the same number of create commands sent straight to the im over the
bus, without the orchestrator: `vs_bus_anchor` is the orchestrator's completed
deployments/s divided by that bare command->configured round-trip rate. The issue's goals
are reported as ratios too (>= 1.0 means the goal is met).

The im and the ranker run at `nice` 10 (`--background-nice`), as `hdc up --distributed` runs
them on one host: nobody waits on them interactively, so on this shared 2-core machine they
take the CPU after the orchestrator's API, like its workers.

GET /deployments/{id} latency is probed while the load runs from a process of its own (so
it times the server, not this process's busy threads): `get_p99_ms` as the client sees it,
`get_server_p99_ms` from the server's `Server-Timing`. The orchestrator's CPU time per
deployment and per GET (from /proc) do not depend on how busy the machine is, as the
latencies do.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # orch_doubles uses tests.real_components
sys.path.insert(0, str(ROOT / "tests" / "orchestrator"))

import orch_doubles as infra  # noqa: E402  (vhost/db helpers of tests/orchestrator)
from orch_doubles import (  # noqa: E402
    TEMPLATE,
    GrpcDoubles,
    ImDouble,
    OrchestratorProcess,
    Signer,
    Site,
    free_port,
    orchestrator_env,
    user,
)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of the finite values; None when there are none."""
    ordered = sorted(v for v in values if v == v)  # NaN (no Server-Timing) != itself
    if not ordered:
        return None
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU time (user + system) the processes used so far; None where /proc is missing."""
    import os

    total = 0.0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def bus_anchor(bus_url: str, tmp: Path, n: int) -> float:
    """Bare rate of the im that is running: n im.infrastructure.create commands ->
    configured events, without the orchestrator."""
    from hdc_common.bus import Bus, create_tables
    from hdc_common.db import create_engine, session_factory

    engine = create_engine(f"sqlite:///{tmp / 'anchor-client.db'}")
    create_tables(engine)
    sessions = session_factory(engine)
    done: set[str] = set()
    lock = threading.Lock()
    bus = Bus(bus_url, service="benchclient", sessions=sessions)

    @bus.on_event("im.infrastructure.configured", queue="benchclient.events")
    def seen(_s: Any, event: Any) -> None:
        with lock:
            done.add(event.data["infrastructure_id"])

    bus.start()
    site = {"id": "site-a", "service_id": "site-a/compute", "type": "dummy", "endpoint": ""}
    start = time.perf_counter()
    for _ in range(n):
        with sessions.begin() as s:
            bus.send(
                s,
                "im",
                "im.infrastructure.create",
                {
                    "infrastructure_id": str(uuid.uuid4()),
                    "deployment_id": str(uuid.uuid4()),
                    "site": site,
                    "tosca": TEMPLATE,
                    "owner": {"subject": "bench", "issuer": "bench"},
                },
            )
    while len(done) < n and time.perf_counter() - start < 300:
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    bus.stop()
    engine.dispose()
    return len(done) / elapsed


def start_real_im(bus_url: str, db_url: str, tmp: Path, nice: int = 0) -> Any:
    """The real hdc-im on its dummy driver, or None when it cannot run here yet."""
    import os
    import subprocess

    try:
        import hdc_im  # noqa: F401
    except ImportError:
        return None
    config = tmp / "im.yaml"
    config.write_text(
        json.dumps(
            {
                "sites": {"site-a": {"type": "dummy"}, "site-b": {"type": "dummy"}},
                "tosca_types_files": [str(ROOT / "tosca-templates/indigo/custom_types.yaml")],
            }
        )
    )
    env = os.environ | {
        "HDC_IM_DATABASE_URL": db_url,
        "HDC_IM_BUS_URL": bus_url,
        "HDC_IM_HTTP_PORT": str(free_port()),
        "HDC_IM_DATA_DIR": str(tmp / "im"),
        "HDC_IM_LOG_LEVEL": "WARNING",
        "HDC_IM_CONFIG": str(config),
        "HDC_IM_NICE": str(nice),
    }
    log = (tmp / "im.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "hdc_im"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{env['HDC_IM_HTTP_PORT']}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    return None


def start_real_ranker(
    bus_url: str, tmp: Path, public_key: str, nice: int = 0
) -> tuple[Any, str] | None:
    """The real `hdc-ranker` (gRPC), or None when it is not installed or does not start."""
    import os
    import shutil
    import subprocess

    exe = shutil.which("hdc-ranker") or str(Path(sys.executable).with_name("hdc-ranker"))
    if not Path(exe).exists():
        return None
    grpc_port, http_port = free_port(), free_port()
    env = os.environ | {
        "HDC_RANKER_DATABASE_URL": f"sqlite:///{tmp / 'ranker.db'}",
        "HDC_RANKER_BUS_URL": bus_url,
        "HDC_RANKER_GRPC_PORT": str(grpc_port),
        "HDC_RANKER_HTTP_PORT": str(http_port),
        "HDC_RANKER_DATA_DIR": str(tmp / "ranker"),
        "HDC_RANKER_LOG_LEVEL": "WARNING",
        # It ranks only for gateway-signed identities (the orchestrator signs with that key).
        "HDC_RANKER_IDENTITY_PUBLIC_KEY": public_key,
        "HDC_RANKER_NICE": str(nice),
    }
    log = (tmp / "ranker.log").open("ab")
    proc = subprocess.Popen([exe], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return proc, f"127.0.0.1:{grpc_port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="deployments to submit")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--im", choices=["auto", "real", "double"], default="auto")
    parser.add_argument("--ranker", choices=["auto", "real", "double"], default="auto")
    parser.add_argument(
        "--layout",
        choices=["single", "split"],
        default="split",
        help="one orchestrator process (role=all), or an API process and a workers process",
    )
    parser.add_argument(
        "--workers-nice", type=int, default=10, help="niceness of the workers process (split)"
    )
    parser.add_argument(
        "--background-nice",
        type=int,
        default=10,
        help="niceness of the im and the ranker (0: as the orchestrator's API)",
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="keep the orchestrator's database to inspect it"
    )
    args = parser.parse_args()

    vhost, db, im_db = infra.make_vhost(), infra.make_db(), infra.make_db()
    bus_url = f"amqp://hdc:hdc@{infra.RABBIT_HOST}:5672/{vhost}"
    db_url = f"{infra.PG_DSN}/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    doubles = GrpcDoubles([Site("site-a", 0.9), Site("site-b", 0.5)])
    signer = Signer()
    im_kind, im_proc, im_double = "double", None, None
    ranker_proc, ranker_target = None, doubles.target
    orchs: list[OrchestratorProcess] = []
    try:
        if args.im in ("auto", "real"):
            im_proc = start_real_im(
                bus_url, f"{infra.PG_DSN}/{im_db}", tmp, nice=args.background_nice
            )
            if im_proc is not None:
                im_kind = f"hdc-im dummy driver (nice {args.background_nice})"
            elif args.im == "real":
                raise SystemExit("the real hdc-im did not start; see " + str(tmp / "im.log"))
        if im_proc is None:
            im_double = ImDouble(bus_url, tmp / "im.db").start()
        anchor_rate = bus_anchor(bus_url, tmp, args.n)
        if args.ranker in ("auto", "real"):
            started = start_real_ranker(bus_url, tmp, signer.public, nice=args.background_nice)
            if started is not None:
                ranker_proc, ranker_target = started
            elif args.ranker == "real":
                raise SystemExit(
                    "the real hdc-ranker did not start; see " + str(tmp / "ranker.log")
                )
        env = orchestrator_env(
            database_url=db_url,
            bus_url=bus_url,
            grpc_target=doubles.target,
            port=free_port(),
            ranker_target=ranker_target,
            public_key=signer.public,
            identity_private_key=signer.private,
            data_dir=tmp,
            minute_s=60,
            sweep_interval_s=1,
        )
        if args.layout == "split":
            # The API and the workflow workers as two processes on the same database and
            # broker (role=api / role=workers); all client traffic goes to the API one.
            workers_env = env | {
                "HDC_ORCHESTRATOR_ROLE": "workers",
                "HDC_ORCHESTRATOR_HTTP_PORT": str(free_port()),
                "HDC_ORCHESTRATOR_NICE": str(args.workers_nice),
            }
            orchs.append(OrchestratorProcess(workers_env, tmp / "orch-workers.log").start())
            env = env | {"HDC_ORCHESTRATOR_ROLE": "api"}
        orchs.append(OrchestratorProcess(env, tmp / "orch.log").start())
        pids = [o.proc.pid for o in orchs if o.proc is not None]
        result = run_load(orchs[-1].url, signer, args.n, args.concurrency, bus_url, tmp, pids)
        result |= {
            "orchestrator": "one process"
            if args.layout == "single"
            else f"two processes: role=api + role=workers (nice {args.workers_nice})",
            "im": im_kind,
            "placement": "infoprovider test double + "
            + (
                f"real hdc-ranker (nice {args.background_nice})"
                if ranker_proc is not None
                else "ranker test double"
            ),
            "bus_anchor_roundtrips_per_s": round(anchor_rate, 1),
            "vs_bus_anchor": round(result["deployments_per_s"] / anchor_rate, 3),
            "throughput_vs_goal_20_per_s": round(result["deployments_per_s"] / 20, 3),
            "get_p99_vs_goal_20ms": round(20 / result["get_p99_ms"], 3)
            if result["get_p99_ms"]
            else None,
        }
        print(json.dumps(result))
    finally:
        for orch in orchs:
            orch.stop()
        if im_double:
            im_double.stop()
        for proc in (im_proc, ranker_proc):
            if proc is not None:
                proc.terminate()
                proc.wait(15)
        doubles.stop()
        infra.drop_vhost(vhost)
        for name in (db, im_db):
            if args.keep_db and name == db:
                print(f"kept database {name}", file=sys.stderr)
                continue
            infra.drop_db(name)


def probe_gets(
    url: str, headers: dict[str, str], ids: Any, ready: Any, stop: Any, posted: Any, out: Any
) -> None:
    """GET /deployments/{id} latency while the load runs, from a process of its own: in the
    submitting process the probe would also time that process's 32 busy threads (the GIL),
    not the server. Sends back the client-side times and the server's own `Server-Timing`."""
    known: list[str] = []
    wall: list[float] = []
    server: list[float] = []
    after_posts: list[bool] = []  # sent once every POST had been answered
    ready.set()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while not stop.is_set():
            while not ids.empty():
                known.append(ids.get())
            if not known:
                time.sleep(0.01)
                continue
            quiet_api = posted.is_set()
            t = time.perf_counter()
            r = client.get(f"/deployments/{random.choice(known)}")
            r.raise_for_status()
            wall.append((time.perf_counter() - t) * 1000)
            server.append(server_ms(r))
            after_posts.append(quiet_api)
            time.sleep(0.005)
    out.send((wall, server, after_posts))


def server_ms(response: httpx.Response) -> float:
    timing = response.headers.get("server-timing", "")
    _, _, dur = timing.partition("dur=")
    return float(dur) if dur else float("nan")


class StatusWatcher:
    """Completion times from the orchestrator's own `orchestrator.deployment.*` events.

    A bare consumer (auto-ack, a queue of its own, no exactly-once ledger): the load
    generator shares the CPUs with what it measures, so it does as little as it can.
    """

    def __init__(self, bus_url: str) -> None:
        from hdc_common.bus.link import EVENTS_EXCHANGE
        from kombu import Connection, Queue

        self.completed: dict[str, float] = {}
        self.failed: set[str] = set()
        self._conn = Connection(bus_url)
        self._queue = Queue(
            f"bench.watch.{uuid.uuid4().hex[:8]}",
            EVENTS_EXCHANGE,
            routing_key="orchestrator.deployment.*",
            exclusive=True,
            auto_delete=True,
        )
        self._stop = threading.Event()
        self._consumer = self._conn.Consumer(
            self._queue, on_message=self._seen, no_ack=True, accept=[]
        )
        self._consumer.consume()  # declared now: no event of the run is missed
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _seen(self, message: Any) -> None:
        now = time.perf_counter()
        event = json.loads(message.body)
        if event["type"].endswith(".create_complete"):
            self.completed.setdefault(event["data"]["uuid"], now)
        elif event["type"].endswith(".create_failed"):
            self.failed.add(event["data"]["uuid"])

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self._conn.drain_events(timeout=0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.cancel()
        self._conn.release()


def run_load(
    url: str, signer: Signer, n: int, concurrency: int, bus_url: str, tmp: Path, pids: list[int]
) -> dict[str, Any]:
    """Submit n deployments from `concurrency` threads, each on a keep-alive connection of
    its own (the standard library's client: a fraction of httpx's CPU per request);
    completion times come from the orchestrator's own events (no API polling, so the
    measurement does not load the API it measures)."""
    import http.client
    import itertools
    import multiprocessing
    from urllib.parse import urlsplit

    headers = signer.headers(user("bench"))
    client = httpx.Client(base_url=url, headers=headers, timeout=60)
    submitted: dict[str, float] = {}
    lock = threading.Lock()
    watcher = StatusWatcher(bus_url)
    completed, failed = watcher.completed, watcher.failed
    ctx = multiprocessing.get_context("spawn")
    ids, ready, stop, posted = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Event()
    results, sink = ctx.Pipe(duplex=False)
    prober = ctx.Process(
        target=probe_gets, args=(url, headers, ids, ready, stop, posted, sink), daemon=True
    )
    prober.start()
    if not ready.wait(120):
        raise SystemExit("the GET prober process did not start")

    target = urlsplit(url)
    body = json.dumps({"template": TEMPLATE}).encode()
    post_headers = headers | {"Content-Type": "application/json"}
    tickets = itertools.count()

    def submitter() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            while next(tickets) < n:
                t = time.perf_counter()
                conn.request("POST", "/deployments", body=body, headers=post_headers)
                r = conn.getresponse()
                answer = r.read()
                if r.status != 201:
                    raise SystemExit(f"POST /deployments answered {r.status}: {answer[:500]!r}")
                uuid_ = json.loads(answer)["uuid"]
                with lock:
                    submitted[uuid_] = t
                ids.put(uuid_)
        finally:
            conn.close()

    cpu_start = cpu_seconds(pids)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(submitter) for _ in range(concurrency)]:
            f.result()
    posted.set()
    deadline = time.perf_counter() + 600
    while len(completed) + len(failed) < n and time.perf_counter() < deadline:
        time.sleep(0.05)
    stop.set()
    get_ms, get_server_ms, after_posts = results.recv() if results.poll(30) else ([], [], [])
    prober.join(10)
    cpu_end = cpu_seconds(pids)
    # The same GET once the load is over (what a dashboard sees on a quiet system).
    idle_ms: list[float] = []
    ids_done = list(submitted)
    for _ in range(300):
        t = time.perf_counter()
        client.get(f"/deployments/{random.choice(ids_done)}").raise_for_status()
        idle_ms.append((time.perf_counter() - t) * 1000)
    cpu_idle = cpu_seconds(pids)
    cpu_idle = None if cpu_idle is None or cpu_end is None else cpu_idle - cpu_end
    cpu_load = None if cpu_end is None or cpu_start is None else cpu_end - cpu_start
    watcher.stop()
    client.close()
    with lock:
        done = {u: t for u, t in completed.items() if u in submitted}
    elapsed = max(done.values(), default=time.perf_counter()) - start
    times = [done[u] - submitted[u] for u in done]
    return {
        "bench": "orchestrator",
        "deployments": n,
        "completed": len(done),
        "failed": len(failed),
        "deployments_per_s": round(len(done) / elapsed, 2),
        "p50_time_to_complete_s": round(statistics.median(times), 3) if times else None,
        "p99_time_to_complete_s": rounded(percentile(times, 99), 3),
        "get_p99_ms": rounded(percentile(get_ms, 99)),
        "get_p50_ms": rounded(percentile(get_ms, 50)),
        "get_server_p99_ms": rounded(percentile(get_server_ms, 99)),
        "get_samples": len(get_ms),
        # The same GETs split by phase: while the 500 POSTs were being answered, and after
        # (the workflows of the submitted deployments still running).
        "get_p99_ms_during_submission": rounded(
            percentile([v for v, a in zip(get_ms, after_posts, strict=True) if not a], 99)
        ),
        "get_p99_ms_after_submission": rounded(
            percentile([v for v, a in zip(get_ms, after_posts, strict=True) if a], 99)
        ),
        "get_samples_during_submission": after_posts.count(False),
        "get_p99_ms_after_load": rounded(percentile(idle_ms, 99)),
        # Load-independent: what the orchestrator process(es) spent per deployment (their
        # share of the GETs above included), and per GET once the load is over.
        "orchestrator_cpu_ms_per_deployment": rounded(
            None if cpu_load is None else cpu_load * 1000 / n, 1
        ),
        "orchestrator_cpu_ms_per_get": rounded(
            None if cpu_idle is None else cpu_idle * 1000 / len(idle_ms)
        ),
    }


if __name__ == "__main__":
    main()
