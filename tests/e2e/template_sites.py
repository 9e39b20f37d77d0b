"""A platform with one site of every kind, for deploying every template of the library
(tests/e2e/test_e2e_templates_deploy.py).

The real infoprovider, ranker, vrouter, im and orchestrator run as separate processes on a
fresh RabbitMQ vhost and fresh PostgreSQL databases, on free ports (never the default ones
other e2e tests use). Five sites are registered the real way: each site's `hdc-info-agent`
authenticates at an OpenID provider (the fake in tests/fakes) with client credentials and
publishes over AMQP; the im's `sites:` settings hold each site's credentials. The sites'
substrates are protocol-faithful fakes, one server per site that both its agent and the im
talk to:

| site | service type | substrate | collector |
|---|---|---|---|
| `local` | local | processes on this machine (the im's local driver) | static |
| `k8s` | kubernetes | tests/fakes/fake_kubernetes_cluster.py | kubernetes |
| `marathon` | eu.indigo-datacloud.marathon | tests/fakes/fake_marathon_api.py (a GPU agent) | static YAML file |
| `os-gpu` | org.openstack.nova | tests/fakes/fake_openstack_cloud.py with GPU flavors | openstack |
| `os-b` | org.openstack.nova | tests/fakes/fake_openstack_cloud.py, no GPUs | openstack |

Callers reach the orchestrator with an identity signed by the gateway's key, as the gateway
forwards it (hdc_common.identity).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair

from tests.fakes.fake_kubernetes_cluster import FakeKubernetesCluster
from tests.fakes.fake_marathon_api import FakeMarathon
from tests.fakes.fake_openstack_cloud import FakeOpenStackCloud
from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.real_components import (
    PG_DSN,
    RABBIT_HOST,
    create_databases,
    drop_databases,
    drop_vhost,
    make_vhost,
)

BIN = Path(sys.executable).parent
TEMPLATES = Path(__file__).resolve().parents[2] / "tosca-templates" / "templates"
SERVICES = ("infoprovider", "ranker", "vrouter", "im", "orchestrator")
ALICE = Identity(subject="alice", issuer="https://iam.example.org/")
OS_USER, OS_PASSWORD, OS_PROJECT = "hdc-agent", "os-secret", "vo-ml"
K8S_TOKEN = "k8s-token-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------- processes


@dataclass
class ServiceProcess:
    """One hdc service as its own process (`hdc-<name>`), settings from HDC_<NAME>_* only."""

    name: str
    env: dict[str, str]
    log: Path
    http_port: int
    grpc_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def launch(self) -> ServiceProcess:
        # Nothing of the caller's HDC_* environment leaks in (e.g. a developer's HDC_HOME).
        env = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")} | self.env
        self.proc = subprocess.Popen(
            [str(BIN / f"hdc-{self.name}")],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"hdc-{self.name} exited: {self.tail()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        self.terminate()
        if self.proc is None:
            return
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ---------------------------------------------------------------------- sites


@dataclass
class Sites:
    """The fakes behind the five sites, and what each agent publishes."""

    oidc: FakeOIDCProvider
    k8s: FakeKubernetesCluster
    marathon: FakeMarathon
    os_gpu: FakeOpenStackCloud
    os_b: FakeOpenStackCloud
    projects: dict[str, str] = field(default_factory=dict)  # OpenStack site -> project id

    @classmethod
    def start(cls) -> Sites:
        sites = cls(
            oidc=FakeOIDCProvider().start(),
            k8s=FakeKubernetesCluster(token=K8S_TOKEN).start(),
            marathon=FakeMarathon(cpus=8, mem=32768, gpus=2).start(),
            os_gpu=FakeOpenStackCloud().start(),
            os_b=FakeOpenStackCloud().start(),
        )
        sites.k8s.add_node("worker-1", cpu="8", memory="32Gi")
        sites.k8s.add_node("worker-2", cpu="8", memory="32Gi")
        for site, cloud in (("os-gpu", sites.os_gpu), ("os-b", sites.os_b)):
            sites.projects[site] = _openstack_site(cloud, gpus=site == "os-gpu")
        return sites

    def clouds(self) -> dict[str, FakeOpenStackCloud]:
        return {"os-gpu": self.os_gpu, "os-b": self.os_b}

    def stop(self) -> None:
        for fake in (self.os_b, self.os_gpu, self.marathon, self.k8s, self.oidc):
            fake.stop()


def _openstack_site(cloud: FakeOpenStackCloud, gpus: bool) -> str:
    cloud.add_user(OS_USER, OS_PASSWORD)
    quota = {
        "instances": {"limit": 20, "in_use": 0, "reserved": 0},
        "cores": {"limit": 128, "in_use": 0, "reserved": 0},
        "ram": {"limit": 512 * 1024, "in_use": 0, "reserved": 0},
    }
    project = cloud.add_project(OS_PROJECT, quota=quota)
    # Flavor ids are not their names, as on real clouds: the im must look the name up.
    cloud.add_flavor("a1b2c3d4-0001", "m1.small", 1, 2048, 20)
    cloud.add_flavor("a1b2c3d4-0002", "m1.medium", 2, 4096, 40)
    cloud.add_flavor("a1b2c3d4-0003", "m1.xlarge", 8, 16384, 80)
    if gpus:
        spec = {"Accelerator:Number": "1", "Accelerator:Vendor": "NVIDIA",
                "Accelerator:Model": "Tesla V100"}  # fmt: skip
        cloud.add_flavor("a1b2c3d4-0101", "g1.xlarge.v100", 8, 32768, 80, spec)
        cloud.add_flavor(
            "a1b2c3d4-0102", "g2.xlarge.2v100", 16, 65536, 160, spec | {"Accelerator:Number": "2"}
        )
        cloud.add_image(
            "img-ubuntu-cuda",
            "ubuntu-22.04-cuda-12",
            os_type="linux",
            os_distro="ubuntu",
            os_version="22.04",
            gpu_driver="535",
            gpu_cuda="12.2",
        )
    cloud.add_image(
        "img-ubuntu", "ubuntu-22.04", os_type="linux", os_distro="ubuntu", os_version="22.04"
    )
    # Neutron (tests/fakes/openstack_network.py) starts as a fresh project does: an external
    # network with a floating range, a private network routed to it, the default group.
    return project.id


def _agent_config(site_id: str, sites: Sites, bus_url: str, where: Path) -> dict[str, Any]:
    secret = uuid.uuid4().hex
    client = f"agent-{site_id}"
    sites.oidc.add_client(client, secret)
    cfg: dict[str, Any] = {
        "site": {"id": site_id, "name": f"{site_id} (test site)"},
        "validity": 3600,
        "auth": {"issuer": sites.oidc.issuer, "client_id": client, "client_secret": secret},
        "publish": {"transport": "amqp", "bus_url": bus_url},
    }
    if site_id in sites.clouds():
        cloud = sites.clouds()[site_id]
        cfg["collectors"] = [
            {
                "type": "openstack",
                "auth_url": cloud.auth_url,
                "username": OS_USER,
                "password": OS_PASSWORD,
                "projects": [{"tenant": "vo.ml.example.org", "project_name": OS_PROJECT}],
            }
        ]
    elif site_id == "k8s":
        cfg["collectors"] = [{"type": "kubernetes", "host": sites.k8s.url, "token": K8S_TOKEN}]
    elif site_id == "marathon":
        # A Mesos cluster has nothing an agent can list flavors from: its operator writes them.
        static = where / "marathon-services.yaml"
        static.write_text(
            yaml.safe_dump(
                {
                    "services": [
                        {
                            "id": "marathon",
                            "type": "eu.indigo-datacloud.marathon",
                            "endpoint": sites.marathon.url,
                            "flavors": [
                                {
                                    "id": "gpu-agent",
                                    "name": "Mesos agent with 2 GPUs",
                                    "cpus": 8,
                                    "ram_mb": 32768,
                                    "gpus": 2,
                                    "gpu_vendor": "NVIDIA",
                                    "gpu_model": "Tesla T4",
                                }
                            ],
                        }
                    ]
                }
            )
        )
        cfg["collectors"] = [{"type": "static", "name": "marathon", "file": str(static)}]
    else:  # local: this machine's processes
        cfg["collectors"] = [
            {
                "type": "static",
                "name": "local",
                "services": [
                    {
                        "id": "processes",
                        "type": "local",
                        "endpoint": "http://127.0.0.1",
                        "flavors": [{"id": "this-machine", "cpus": 2, "ram_mb": 4096}],
                    }
                ],
            }
        ]
    return cfg


SITE_IDS = ("local", "k8s", "marathon", "os-gpu", "os-b")


def im_sites(sites: Sites) -> dict[str, Any]:
    """The im's `sites:`: the driver and the credentials of each site (endpoints come from
    the registry, through the orchestrator's create command)."""

    def openstack(lan: str) -> dict[str, Any]:
        return {
            "type": "openstack",
            "credentials": {
                "username": OS_USER,
                "password": OS_PASSWORD,
                "tenant": OS_PROJECT,
                "domain": "Default",
            },
            # the private range an infrastructure's own network gets at this site
            "options": {"network_cidr": lan},
            "default_image": "img-ubuntu",
        }

    return {
        "local": {"type": "local"},
        "k8s": {
            "type": "kubernetes",
            "credentials": {"token": K8S_TOKEN, "node_host": "127.0.0.1"},
            "namespace": "ml",
        },
        "marathon": {"type": "marathon"},
        "os-gpu": openstack("192.168.10.0/24"),
        "os-b": openstack("192.168.20.0/24"),
    }


# ---------------------------------------------------------------------- the platform


@dataclass
class Platform:
    sites: Sites
    services: dict[str, ServiceProcess]
    signer: InternalTokenSigner
    home: Path
    vhost: str
    databases: list[str]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    # -- orchestrator API, as the gateway's caller -------------------------------------------

    @property
    def orchestrator(self) -> str:
        return self.services["orchestrator"].url

    def headers(self, who: Identity = ALICE) -> dict[str, str]:
        return {"X-HDC-Identity": self.signer.sign(who)}

    def create(self, template: str, parameters: dict[str, Any]) -> str:
        body = {"template": (TEMPLATES / template).read_text(), "parameters": parameters}
        r = self.http.post(f"{self.orchestrator}/deployments", json=body, headers=self.headers())
        assert r.status_code == 201, r.text
        return r.json()["uuid"]

    def follow(
        self, uuid: str, timeout: float = 90, deleting: bool = False
    ) -> tuple[list[dict[str, Any]], str]:
        """The deployment's events (Server-Sent Events) until it leaves *_IN_PROGRESS, and the
        status the stream ended with (DELETE_COMPLETE once a deleted deployment is gone)."""
        events: list[dict[str, Any]] = []
        headers = self.headers() | {"Accept": "text/event-stream"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = events[-1]["id"] if events else 0
            url = f"{self.orchestrator}/deployments/{uuid}/events?after={after}"
            with self.http.stream("GET", url, headers=headers, timeout=timeout) as r:
                if deleting and r.status_code == 404:
                    return events, "DELETE_COMPLETE"  # gone before the stream started
                assert r.status_code == 200, r.read()
                kind = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "end":
                        return events, json.loads(line[6:])["status"]
                    elif line.startswith("data: "):
                        events.append(json.loads(line[6:]))
        raise AssertionError(f"deployment {uuid} still in progress: {events[-3:]}")

    def deployment(self, uuid: str) -> httpx.Response:
        return self.http.get(f"{self.orchestrator}/deployments/{uuid}", headers=self.headers())

    def resources(self, uuid: str) -> list[dict[str, Any]]:
        r = self.http.get(
            f"{self.orchestrator}/deployments/{uuid}/resources?size=100", headers=self.headers()
        )
        assert r.status_code == 200, r.text
        return r.json()["content"]

    def delete(self, uuid: str) -> None:
        """DELETE, follow the events to DELETE_COMPLETE; the deployment must then be 404."""
        r = self.http.delete(f"{self.orchestrator}/deployments/{uuid}", headers=self.headers())
        assert r.status_code == 204, r.text
        events, status = self.follow(uuid, deleting=True)
        assert status == "DELETE_COMPLETE", (events, self.logs())
        gone = self.deployment(uuid)
        assert gone.status_code == 404, gone.text

    def placement(self, uuid: str) -> dict[str, Any]:
        r = self.http.get(
            f"{self.orchestrator}/deployments/{uuid}/placement", headers=self.headers()
        )
        assert r.status_code == 200, r.text
        return r.json()

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{s.tail(2000)}" for n, s in self.services.items())

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self.http.close()
        for service in self.services.values():  # all shut down at once
            service.terminate()
        for service in self.services.values():
            service.stop()
        self.sites.stop()
        drop_databases(*self.databases)
        drop_vhost(self.vhost)


def _service_env(name: str, port: int, grpc: int | None, common: dict[str, str]) -> dict[str, str]:
    prefix = f"HDC_{name.upper()}_"
    env = {f"{prefix}{k}": v for k, v in common.items()} | {f"{prefix}HTTP_PORT": str(port)}
    if grpc is not None:
        env[f"{prefix}GRPC_PORT"] = str(grpc)
    return env


def start_platform(home: Path) -> Iterator[Platform]:
    """Start everything, register the five sites, yield the platform, tear it all down."""
    vhost = make_vhost("tpl")
    bus_url = f"amqp://hdc:hdc@{RABBIT_HOST}:5672/{vhost}"
    tag = uuid.uuid4().hex[:8]
    databases = [f"tpl_{tag}_{name}" for name in SERVICES]
    create_databases(*databases)
    private_pem, public_pem = generate_keypair()
    sites = Sites.start()
    services: dict[str, ServiceProcess] = {}
    platform = Platform(
        sites, services, InternalTokenSigner(private_pem, ttl_s=300), home, vhost, databases
    )
    try:
        ports = {n: free_port() for n in SERVICES}
        grpc = {n: free_port() for n in ("infoprovider", "ranker", "vrouter")}
        for name in SERVICES:
            common = {
                "DATABASE_URL": f"{PG_DSN}/tpl_{tag}_{name}",
                "BUS_URL": bus_url,
                "DATA_DIR": str(home / name),
                "IDENTITY_PUBLIC_KEY": public_pem,
                "LOG_LEVEL": "WARNING",
            }
            env = _service_env(name, ports[name], grpc.get(name), common)
            services[name] = ServiceProcess(
                name, env, home / f"{name}.log", ports[name], grpc.get(name)
            )
        services["infoprovider"].env |= {
            "HDC_INFOPROVIDER_TRUSTED_ISSUERS": json.dumps(
                [{"issuer": sites.oidc.issuer, "jwks_uri": sites.oidc.jwks_uri}]
            ),
            "HDC_INFOPROVIDER_AGENT_CLIENTS": json.dumps(
                [
                    {"site_id": s, "client_id": f"agent-{s}", "issuer": sites.oidc.issuer}
                    for s in SITE_IDS
                ]
            ),
        }
        services["vrouter"].env["HDC_VROUTER_PUBLIC_URL"] = services["vrouter"].url
        im_config = home / "im.yaml"
        serving = BIN / "hdc-serving"
        im_config.write_text(
            yaml.safe_dump(
                {
                    "sites": im_sites(sites),
                    "local_command": [
                        str(serving),
                        "run",
                        "--model",
                        "{model}",
                        "--listen-ip",
                        "{host}",
                        "--listen-port",
                        "{port}",
                    ],
                    "job_poll_s": 0.2,
                    "reconcile_interval_s": 3600,
                }  # fmt: skip
            )
        )
        services["im"].env["HDC_IM_CONFIG"] = str(im_config)
        orch = services["orchestrator"]
        orch.env |= {
            "HDC_ORCHESTRATOR_INFOPROVIDER_TARGET": services["infoprovider"].target,
            "HDC_ORCHESTRATOR_RANKER_TARGET": services["ranker"].target,
            "HDC_ORCHESTRATOR_VROUTER_TARGET": services["vrouter"].target,
            "HDC_ORCHESTRATOR_IDENTITY_PRIVATE_KEY": private_pem,
            "HDC_ORCHESTRATOR_SWEEP_INTERVAL_S": "0.5",
            # a busy test machine answers slowly: no spurious deadline, a quick retry
            "HDC_ORCHESTRATOR_GRPC_DEADLINE_S": "20",
            "HDC_ORCHESTRATOR_PLACEMENT_RETRY_S": "1",
        }
        for s in services.values():
            (home / s.name).mkdir(parents=True, exist_ok=True)
            s.launch()
        for s in services.values():
            wait_for(s.healthy, 150, f"hdc-{s.name} to answer /healthz")
        register_sites(platform, bus_url)
        yield platform
    finally:
        platform.stop()


def register_sites(platform: Platform, bus_url: str) -> None:
    """Each site's info agent publishes once, as `hdc-info-agent once --config site.yaml` does
    (the agent's own code: its collectors, OIDC client credentials, AMQP publisher), in
    threads of this process rather than five more interpreters starting on a busy machine."""
    from hdc_infoprovider.agent.cli import Agent
    from hdc_infoprovider.agent.config import load_config

    def publish(site_id: str) -> dict[str, Any]:
        where = platform.home / "agents" / site_id
        where.mkdir(parents=True, exist_ok=True)
        cfg = where / "site.yaml"
        cfg.write_text(yaml.safe_dump(_agent_config(site_id, platform.sites, bus_url, where)))
        agent = Agent(load_config(cfg))
        try:
            return agent.publish_once()
        finally:
            agent.close()

    with ThreadPoolExecutor(len(SITE_IDS)) as pool:
        reports = list(pool.map(publish, SITE_IDS))
    for report in reports:
        assert all(h["healthy"] for h in report["health"]), report["health"]
    registry = platform.services["infoprovider"].url

    def registered() -> bool:
        r = platform.http.get(f"{registry}/v1/sites", headers=platform.headers())
        assert r.status_code == 200, r.text
        return {s["id"] for s in r.json()["sites"]} >= set(SITE_IDS)

    wait_for(registered, 60, "the five sites' reports to be accepted")
