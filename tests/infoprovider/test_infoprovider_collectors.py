"""Collector health and cloud-info-provider import, through the real registry.

Runs the registry in-process on SQLite with the embedded bus (`memory://`), so these
checks stay fast; the AMQP/PostgreSQL path is covered by test_infoprovider_e2e.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_infoprovider.agent.cli import Agent
from hdc_infoprovider.agent.collectors.glue import parse_glue21
from hdc_infoprovider.agent.config import AgentConfig, GlueCollectorConfig

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.fakes.openstack import FakeOpenStack
from tests.infoprovider.harness import Registry, registry_settings, wait_for

GLUE_SAMPLE = Path(__file__).parent / "data" / "glue21-example-site.json"


@pytest.fixture
def op():
    with FakeOIDCProvider() as provider:
        provider.add_client("agent-a", "secret-a")
        yield provider


@pytest.fixture
def bus_url() -> str:
    return f"memory:///ip-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def registry(op, sqlite_url, bus_url):
    reg = Registry(
        **registry_settings(op, {"agent-a": "site-a"}, database_url=sqlite_url, bus_url=bus_url)
    ).start()
    yield reg
    reg.stop()


@pytest.fixture
def cloud():
    with FakeOpenStack() as fake:
        fake.add_user("agent", "pw")
        fake.add_project("proj", quota={"instances": {"limit": 5, "in_use": 0}})
        fake.add_flavor("1", "m1.medium", 2, 4096, 40)
        fake.add_image("img-1", "Debian 12", os_distro="debian", os_version="12")
        fake.add_network("ext", "public", external=True)
        yield fake


def config(op, bus_url, collectors) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "site": {"id": "site-a"},
            "validity": 600,
            "auth": {
                "token_url": op.token_endpoint,
                "client_id": "agent-a",
                "client_secret": "secret-a",
            },
            "publish": {"transport": "amqp", "bus_url": bus_url},
            "collectors": collectors,
        }
    )


def openstack(cloud) -> dict:
    return {
        "type": "openstack",
        "auth_url": cloud.auth_url,
        "username": "agent",
        "password": "pw",
        "projects": [{"tenant": "vo.example.eu", "project_name": "proj"}],
        "timeout_s": 3,
    }


STATIC = {
    "type": "static",
    "services": [
        {"id": "slurm", "type": "org.hpc.slurm", "endpoint": "https://hpc.example.org",
         "flavors": [{"id": "gpu-node", "cpus": 64, "ram_mb": 512000, "gpus": 4,
                      "gpu_vendor": "nvidia", "gpu_model": "A100", "infiniband": True}]}
    ],
}  # fmt: skip


def test_failing_collector_marks_its_part_unhealthy_and_the_rest_is_kept(
    op, cloud, registry, bus_url
):
    agent = Agent(config(op, bus_url, [openstack(cloud), STATIC]))
    try:
        agent.publish_once()
        wait_for(lambda: len(registry.find().candidates) == 2, what="both services")

        # Glance fails: the images part is reported failed and the registry keeps the old ones.
        cloud.fail["glance"] = 500
        cloud.flavors.pop("1")
        cloud.add_flavor("2", "m1.big", 4, 8192, 80)
        report = agent.publish_once()
        assert report["services"][0]["failed_parts"] == ["images"]
        site = wait_for(
            lambda: (s := registry.site("site-a")) and s.summary.status == pb.STATUS_DEGRADED and s,
            what="site degraded",
        )
        nova = next(s for s in site.services if s.id == "site-a.nova")
        assert [f.id for f in nova.flavors] == ["2"]  # flavors were readable: replaced
        assert [i.id for i in nova.images] == ["img-1"]  # images were not: kept

        # The whole OpenStack is down: the report still goes out, with that part unhealthy.
        cloud.fail.clear()
        cloud.stop()
        report = agent.publish_once()
        health = {h["component"]: h for h in report["health"]}
        assert (
            not health["openstack"]["healthy"] and "unreachable" in health["openstack"]["message"]
        )
        assert health["static"]["healthy"]
        assert [s["id"] for s in report["services"]] == ["slurm"]
        site = wait_for(
            lambda: (s := registry.site("site-a")) and any(not s.healthy for s in s.services) and s,
            what="openstack service kept but unhealthy",
        )
        assert site.summary.status == pb.STATUS_DEGRADED
        assert {s.id: s.healthy for s in site.services} == {
            "site-a.nova": False,
            "site-a.slurm": True,
        }
        assert [f.id for f in site.services[0].flavors] == ["2"]  # the rest is kept

        found = registry.find(cpus=1)
        assert [c.service_id for c in found.candidates] == ["site-a.slurm"]
        assert any("unhealthy" in e.reason for e in found.excluded)
        assert len(registry.find(cpus=1, include_unhealthy=True).candidates) == 2
    finally:
        agent.close()


def test_cloud_info_provider_glue21_import(op, registry, bus_url, tmp_path):
    services = parse_glue21(
        json.loads(GLUE_SAMPLE.read_text()), GlueCollectorConfig(type="glue21", file=GLUE_SAMPLE)
    )
    (svc,) = services
    assert svc["type"] == "org.openstack.nova"
    assert svc["endpoint"] == "https://keystone.cloud.example-site.eu:5000/v3"
    assert svc["properties"]["glue_admin_domain"] == "EXAMPLE-SITE"
    flavors = {f["name"]: f for f in svc["flavors"]}
    assert sorted(flavors) == ["g1.v100.2", "m1.small", "m1.xlarge"]  # once, not once per share
    gpu = flavors["g1.v100.2"]
    assert (gpu["cpus"], gpu["ram_mb"], gpu["disk_gb"]) == (16, 65536, 160)
    assert (gpu["gpus"], gpu["gpu_vendor"], gpu["gpu_model"]) == (2, "nvidia", "Tesla V100")
    assert flavors["m1.small"]["gpus"] == 0
    images = {i["name"]: i for i in svc["images"]}
    assert len(images) == 3
    cuda = images["DEEP Ubuntu 22.04 CUDA 12.2"]
    assert (cuda["os_distribution"], cuda["os_version"], cuda["architecture"]) == (
        "ubuntu",
        "22.04",
        "x86_64",
    )
    assert cuda["cuda"] and cuda["cuda_version"] == "12.2" and cuda["cudnn_version"] == "8.9"
    assert not images["EGI CentOS 7"]["cuda"]
    quotas = {q["tenant"]: q for q in svc["quotas"]}
    assert quotas["vo.access.egi.eu"]["limits"] == {
        "instances": 20,
        "cores": 80,
        "ram_mb": 163840,
        "floating_ips": 5,
    }
    assert quotas["vo.access.egi.eu"]["usage"] == {"instances": 3}
    assert all(f["creationTime"].startswith("2026-11-20T09:15:02") for f in svc["flavors"])

    # Through the agent and the registry: a site running cloud-info-provider joins as is.
    # (The sample's records are dated 2026-11-20 with 1 h validity: re-date them to now.)
    doc = json.loads(GLUE_SAMPLE.read_text())
    for objs in doc.values():
        for o in objs:
            o.pop("CreationTime", None)
    fresh = tmp_path / "glue.json"
    fresh.write_text(json.dumps(doc))
    agent = Agent(config(op, bus_url, [{"type": "glue21", "file": str(fresh)}]))
    try:
        agent.publish_once()
    finally:
        agent.close()
    res = wait_for(
        lambda: registry.find(gpu=pb.GpuRequirement(count=2, model="V100"), tenant="vo.access.egi.eu",
                              image=pb.ImageRequirement(os_distribution="ubuntu", cuda=True)).candidates,
        what="the imported GPU flavor as a candidate",
    )  # fmt: skip
    assert [f.name for f in res[0].flavors] == ["g1.v100.2"]
    assert [i.name for i in res[0].images] == ["DEEP Ubuntu 22.04 CUDA 12.2"]
    # instances 20 - 3 = 17, cores 80 // 16 = 5, RAM 163840 // 65536 = 2: RAM is the limit.
    assert res[0].free_instances == 2
