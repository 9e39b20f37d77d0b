"""TEST DOUBLES for the orchestrator's tests — not hdc services.

* `InfoProviderDouble` / `RankerDouble`: real gRPC servers of the contracts in
  proto/hdc/infoprovider/v1 and proto/hdc/ranker/v1, answering from data the test sets
  (used until the real infoprovider and ranker services land).
* `ImDouble`: a real consumer of the im's AMQP contract (/tmp/hdc-im-contract.md) on the
  real RabbitMQ, through hdc_common.bus; the test scripts, per site, whether a create
  succeeds, fails or never answers. It stands in for the im, which is built concurrently.
* helpers to start the orchestrator (in process or as a subprocess) and to sign identities.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import sqlalchemy as sa
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from hdc.infoprovider.v1 import infoprovider_pb2 as ip_pb2
from hdc.infoprovider.v1 import infoprovider_pb2_grpc as ip_grpc
from hdc.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from hdc_common.bus import Bus, create_tables
from hdc_common.db import create_engine, session_factory
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair

from tests import real_components

# Re-exported: the orchestrator tests and bench/orchestrator.py take them from here.
from tests.real_components import PG_DSN, RABBIT_HOST, drop_vhost  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------- shared infrastructure


def make_vhost() -> str:
    return real_components.make_vhost("orch")


def make_db() -> str:
    name = f"orch_{uuid.uuid4().hex[:10]}"
    real_components.create_databases(name)
    return name


def drop_db(name: str) -> None:
    real_components.drop_databases(name)


TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - indigo_custom_types: https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml
description: one VM
topology_template:
  inputs:
    num_cpus:
      type: integer
      default: 1
      constraints:
        - in_range: [1, 64]
    admin_password:
      type: string
      default: s3cr3t-pa55
  node_templates:
    server:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable:
          properties:
            count: 1
        host:
          properties:
            num_cpus: { get_input: num_cpus }
            mem_size: 1 GB
        os:
          properties:
            image: ubuntu-22.04
    app:
      type: tosca.nodes.SoftwareComponent
      requirements:
        - host: server
  outputs:
    node_ip:
      value: { get_attribute: [ server, public_address, 0 ] }
"""


# ---------------------------------------------------------------------- gRPC doubles


@dataclass
class Site:
    site_id: str
    score: float = 0.5
    rejected: str | None = None  # a ranker rejection message (discarded candidate)
    service_type: str = "dummy"


class InfoProviderDouble(ip_grpc.InfoProviderServicer):
    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self.calls = 0
        # Answer the next `fail_next` calls with `fail_code` (an outage or a bad request).
        self.fail_next = 0
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        # Cleared by a test: calls wait until it is set again (a registry that hangs).
        self.gate = threading.Event()
        self.gate.set()

    def FindCandidates(self, request: Any, context: Any) -> Any:
        self.calls += 1
        self.gate.wait(60)
        if self.fail_next > 0:
            self.fail_next -= 1
            context.abort(self.fail_code, "registry down for maintenance")
        out = []
        now = Timestamp()
        now.GetCurrentTime()
        for s in self.sites:
            if s.site_id in request.exclude_site_ids:
                continue
            if request.site_ids and s.site_id not in request.site_ids:
                continue
            out.append(
                ip_pb2.Candidate(
                    site_id=s.site_id,
                    site_name=s.site_id.upper(),
                    service_id=f"{s.site_id}/compute",
                    service_type=s.service_type,
                    endpoint=f"http://{s.site_id}.invalid:5000",
                    flavors=[ip_pb2.Flavor(id="f1", name="small", cpus=2, ram_mb=2048, disk_gb=20)],
                    images=[
                        ip_pb2.Image(
                            id=f"{s.site_id}-img-1",
                            name="ubuntu-22.04",
                            os_type="linux",
                            os_distribution="ubuntu",
                            os_version="22.04",
                        )
                    ],
                    status=ip_pb2.STATUS_UP,
                    freshness=ip_pb2.Freshness(creation_time=now, validity_s=3600),
                )
            )
        return ip_pb2.Candidates(candidates=out)


class RankerDouble(ranker_pb2_grpc.RankerServicer):
    def __init__(self, sites: list[Site]) -> None:
        self.sites = {s.site_id: s for s in sites}
        self.requests: list[Any] = []  # every RankRequest received, for the tests to read

    def Rank(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        rows = []
        for i, c in enumerate(request.candidates):
            site = self.sites.get(c.site_id, Site(c.site_id))
            rows.append((i, c, site))
        ok = sorted((r for r in rows if not r[2].rejected), key=lambda r: -r[2].score)
        results = []
        for rank, (i, c, site) in enumerate(ok, start=1):
            results.append(
                ranker_pb2.RankedCandidate(
                    index=i,
                    site_id=c.site_id,
                    service_id=c.service_id,
                    rank=rank,
                    total_score=site.score,
                    criterion_scores=[site.score, 1.0],
                    flavor_id="f1",
                    flavor_name="small",
                )
            )
        for i, c, site in rows:
            if site.rejected:
                results.append(
                    ranker_pb2.RankedCandidate(
                        index=i,
                        site_id=c.site_id,
                        service_id=c.service_id,
                        rank=-1,
                        rejections=[
                            ranker_pb2.Rejection(code="NO_GPU", filter="gpu", message=site.rejected)
                        ],
                    )
                )
        return ranker_pb2.RankResponse(
            results=results,
            criteria=["sla", "monitoring"],
            weights=[0.5, 0.5],
            ranked_count=len(ok),
            total_count=len(rows),
            summary=f"{len(ok)}/{len(rows)} providers ranked",
        )


class GrpcDoubles:
    """Both doubles on loopback ports; `targets` goes into the orchestrator settings."""

    def __init__(self, sites: list[Site]) -> None:
        self.info = InfoProviderDouble(sites)
        self.ranker = RankerDouble(sites)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ip_grpc.add_InfoProviderServicer_to_server(self.info, self.server)
        ranker_pb2_grpc.add_RankerServicer_to_server(self.ranker, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set_sites(self, sites: list[Site]) -> None:
        self.info.sites = sites
        self.ranker.sites = {s.site_id: s for s in sites}

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0)


# ---------------------------------------------------------------------- im double


@dataclass
class ImDouble:
    """Consumes im.commands; per-site behaviour: "ok", "fail" or "hang" (never answers)."""

    bus_url: str
    db_path: Path
    behaviour: dict[str, str] = field(default_factory=dict)
    default: str = "ok"
    delay_s: float = 0.0
    creates: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    alive: dict[str, str] = field(default_factory=dict)  # infrastructure id -> deployment id
    commands: Counter = field(default_factory=Counter)
    sites: dict[str, str] = field(default_factory=dict)  # infrastructure id -> site id

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        engine = create_engine(f"sqlite:///{self.db_path}")
        create_tables(engine)
        self.engine = engine
        self.sessions = session_factory(engine)
        self.bus = Bus(self.bus_url, service="im", sessions=self.sessions, backoff=0.2)
        self.bus.on_command("im.infrastructure.create")(self._create)
        self.bus.on_command("im.infrastructure.delete")(self._delete)
        self.bus.on_command("im.infrastructure.update")(self._update)
        self.bus.on_command("im.vm.start")(self._vm)
        self.bus.on_command("im.vm.stop")(self._vm)
        self._timers: list[threading.Timer] = []

    def start(self) -> ImDouble:
        self.bus.start()
        return self

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        self.bus.stop()
        self.engine.dispose()

    def _emit_later(self, session: Any, type_: str, data: dict[str, Any]) -> None:
        if self.delay_s <= 0:
            self.bus.emit(session, type_, data)
            return

        def fire() -> None:
            with self.sessions.begin() as s:
                self.bus.emit(s, type_, data)

        t = threading.Timer(self.delay_s, fire)
        t.daemon = True
        self._timers.append(t)
        t.start()

    def _create(self, session: Any, event: Any) -> None:
        d = event.data
        site = d["site"]["id"]
        with self._lock:
            self.creates.append(d)
            self.commands["create"] += 1
            self.alive[d["infrastructure_id"]] = d["deployment_id"]
            self.sites[d["infrastructure_id"]] = site
        mode = self.behaviour.get(site, self.default)
        ids = {"infrastructure_id": d["infrastructure_id"], "deployment_id": d["deployment_id"]}
        self.bus.emit(
            session,
            "im.infrastructure.progress",
            ids | {"state": "pending", "message": f"creating on {site}"},
        )
        if mode in ("ok", "ok-nodelete"):
            self._emit_later(
                session,
                "im.infrastructure.configured",
                ids
                | {
                    "state": "configured",
                    "outputs": {"node_ip": "192.0.2.10", "admin_password": "s3cr3t-pa55"},
                    "vms": [
                        {
                            "id": f"vm-{d['infrastructure_id'][:8]}" + (f"-{i}" if i else ""),
                            "state": "configured",
                            "name": node,
                            "node": node,
                            "public_ip": f"192.0.2.{10 + i}",
                            "private_ip": f"10.0.0.{10 + i}",
                        }
                        for i, node in enumerate(compute_nodes(d.get("tosca") or ""))
                    ],
                },
            )
        elif mode == "fail":
            self._emit_later(
                session,
                "im.infrastructure.failed",
                ids | {"state": "failed", "error": f"{site}: quota exceeded (password=hunter22)"},
            )
        # "hang": never answers; the orchestrator's provider timeout must fire

    def _delete(self, session: Any, event: Any) -> None:
        infra = event.data["infrastructure_id"]
        if self.behaviour.get(self.sites.get(infra, ""), "") == "ok-nodelete":
            return  # this site never confirms deletes (a stuck delete)
        with self._lock:
            self.deletes.append(infra)
            self.commands["delete"] += 1
            dep = self.alive.pop(infra, event.data.get("deployment_id"))
        self.bus.emit(
            session, "im.infrastructure.deleted", {"infrastructure_id": infra, "deployment_id": dep}
        )

    def _update(self, session: Any, event: Any) -> None:
        d = event.data
        with self._lock:
            self.commands["update"] += 1
        self.bus.emit(
            session,
            "im.infrastructure.updated",
            {
                "infrastructure_id": d["infrastructure_id"],
                "deployment_id": d.get("deployment_id"),
                "state": "configured",
                "outputs": {"node_ip": "192.0.2.11"},
                "vms": [],
            },
        )

    def _vm(self, session: Any, event: Any) -> None:
        d = event.data
        state = "stopped" if event.type.endswith("stop") else "configured"
        with self._lock:
            self.commands[event.type] += 1
        self.bus.emit(
            session,
            "im.vm.state",
            {"infrastructure_id": d["infrastructure_id"], "vm_id": d["vm_id"], "state": state},
        )

    def report(self, type_: str, data: dict[str, Any]) -> None:
        """Emit an im event on the test's say (e.g. what the im learnt about a site)."""
        with self.sessions.begin() as s:
            self.bus.emit(s, type_, data)

    def forget(self, infrastructure_id: str) -> None:
        """The infrastructure disappears at the site, behind the orchestrator's back."""
        with self._lock:
            self.alive.pop(infrastructure_id, None)

    def alive_for(self, deployment_id: str) -> list[str]:
        with self._lock:
            return [i for i, dep in self.alive.items() if dep == deployment_id]

    def creates_for(self, deployment_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c for c in self.creates if c["deployment_id"] == deployment_id]

    def user_data_extra_for(self, deployment_id: str) -> list[str | None]:
        """The `user_data_extra` of every create received for the deployment, in order."""
        return [c.get("user_data_extra") for c in self.creates_for(deployment_id)]


def compute_nodes(tosca: str) -> list[str]:
    """The template's compute nodes (one VM each, as the im would make); "server" if none."""
    try:
        nodes = (yaml.safe_load(tosca) or {})["topology_template"]["node_templates"]
    except (yaml.YAMLError, KeyError, TypeError):
        return ["server"]
    names = [n for n, x in nodes.items() if str((x or {}).get("type", "")).endswith("Compute")]
    return names or ["server"]


# ---------------------------------------------------------------------- identities


class Signer:
    def __init__(self) -> None:
        self.private, self.public = generate_keypair()
        self._signer = InternalTokenSigner(self.private, ttl_s=300)

    def headers(self, who: Identity) -> dict[str, str]:
        return {"X-HDC-Identity": self._signer.sign(who)}


def user(name: str, groups: tuple[str, ...] = (), roles: tuple[str, ...] = ()) -> Identity:
    return Identity(subject=name, issuer="https://iam.test/", groups=groups, roles=roles)


# ---------------------------------------------------------------------- orchestrator


def orchestrator_env(
    *,
    database_url: str,
    bus_url: str,
    grpc_target: str,
    port: int,
    public_key: str,
    data_dir: Path,
    **extra: Any,
) -> dict[str, str]:
    env = {
        "HDC_ORCHESTRATOR_DATABASE_URL": database_url,
        "HDC_ORCHESTRATOR_BUS_URL": bus_url,
        "HDC_ORCHESTRATOR_INFOPROVIDER_TARGET": grpc_target,
        "HDC_ORCHESTRATOR_RANKER_TARGET": grpc_target,
        "HDC_ORCHESTRATOR_HTTP_PORT": str(port),
        "HDC_ORCHESTRATOR_IDENTITY_PUBLIC_KEY": public_key,
        "HDC_ORCHESTRATOR_DATA_DIR": str(data_dir),
        "HDC_ORCHESTRATOR_MINUTE_S": "0.5",
        "HDC_ORCHESTRATOR_SWEEP_INTERVAL_S": "0.2",
        "HDC_ORCHESTRATOR_CALLBACK_BACKOFF_S": "0.2",
        "HDC_ORCHESTRATOR_LOG_LEVEL": "WARNING",
    }
    env.update({f"HDC_ORCHESTRATOR_{k.upper()}": str(v) for k, v in extra.items()})
    return env


class OrchestratorProcess:
    """A real orchestrator process (`hdc-orchestrator`), for kill/restart and replica tests."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = os.environ | env
        self.port = int(env["HDC_ORCHESTRATOR_HTTP_PORT"])
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> OrchestratorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from hdc_orchestrator.service import main; main()"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 90.0) -> OrchestratorProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"orchestrator exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"orchestrator did not start: {self.log_path.read_text()[-3000:]}")

    def start(self, timeout: float = 90.0) -> OrchestratorProcess:
        return self.launch().wait_ready(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown code runs
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


def count_rows(database_url: str, sql: str, **params: Any) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as c:
            return int(c.execute(sa.text(sql), params).scalar() or 0)
    finally:
        engine.dispose()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """An in-process orchestrator (its real HTTP app, bus consumers and loops)."""

    def __init__(self, settings: Any) -> None:
        from hdc_orchestrator.service import build
        from starlette.testclient import TestClient

        self.settings = settings
        self.components = build(settings)
        for bg in self.components.background:
            bg.start()
        self.client = TestClient(self.components.asgi_app, base_url="http://orchestrator.test")

    def stop(self) -> None:
        self.client.close()
        for bg in reversed(self.components.background):
            bg.stop()
