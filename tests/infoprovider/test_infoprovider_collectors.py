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

DATA = Path(__file__).parent / "data"  # provenance and licenses: data/README.md
CIP_GPU_SITE = DATA / "glue21-cip-1.2.0-gpu-site.json"


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


def _import(path: Path) -> list[dict]:
    return parse_glue21(json.loads(path.read_text()), GlueCollectorConfig(type="glue21", file=path))


def _redated(path: Path, tmp_path: Path) -> Path:
    """The document with its records' CreationTime removed: they are months old and would be
    stale; without it every record takes the report's own time (what a fresh run gives)."""
    doc = json.loads(path.read_text())
    for objs in doc.values():
        for o in objs if isinstance(objs, list) else [objs]:
            o.pop("CreationTime", None)
    fresh = tmp_path / path.name
    fresh.write_text(json.dumps(doc))
    return fresh


def test_cloud_info_provider_1_2_output_with_gpus_imports(op, registry, bus_url, tmp_path):
    (svc,) = _import(CIP_GPU_SITE)
    assert svc["type"] == "org.openstack.nova"
    assert svc["endpoint"] == "http://keystone.cloud.hdc-example.eu:5000/v3"
    assert svc["api_version"] == "2.0" and svc["healthy"]
    assert svc["properties"]["glue_admin_domain"] == "HDC-EXAMPLE"
    flavors = {f["name"]: f for f in svc["flavors"]}
    # Published once per share (two VOs) by cloud-info-provider; imported once.
    assert sorted(flavors) == ["g1.v100.2", "m1.small", "m1.xlarge"]
    gpu = flavors["g1.v100.2"]
    assert (gpu["id"], gpu["cpus"], gpu["ram_mb"], gpu["disk_gb"]) == ("10", 16, 65536, 160)
    assert (gpu["gpus"], gpu["gpu_vendor"], gpu["gpu_model"]) == (2, "nvidia", "Tesla V100")
    assert flavors["m1.small"]["gpus"] == 0 and flavors["m1.xlarge"]["cpus"] == 8
    images = {i["name"]: i for i in svc["images"]}
    assert sorted(images) == ["EGI Ubuntu 22.04", "Ubuntu 22.04 CUDA 12.2"]  # not deactivated
    egi = images["EGI Ubuntu 22.04"]
    assert (egi["os_distribution"], egi["os_version"], egi["architecture"]) == (
        "ubuntu",
        "22.04",
        "x86_64",
    )
    assert egi["properties"]["marketplace_url"] == "registry.egi.eu/egi_vm_images/ubuntu:22.04"
    # cloud-info-provider 1.2.0 publishes no CUDA facts: the import cannot invent them.
    assert not images["Ubuntu 22.04 CUDA 12.2"]["cuda"]
    quotas = {q["tenant"]: q for q in svc["quotas"]}
    assert sorted(quotas) == ["vo.access.egi.eu", "vo.deep-hybrid-datacloud.eu"]
    assert quotas["vo.access.egi.eu"]["limits"] == {
        "instances": 20,
        "cores": 80,
        "ram_mb": 163840,
        "floating_ips": 5,
    }
    assert quotas["vo.access.egi.eu"]["usage"] == {"instances": 2}
    assert quotas["vo.access.egi.eu"]["project_name"] == "vo-access"
    assert all(f["validity"] == 43200 for f in svc["flavors"])

    # Through the agent and the registry: a site running cloud-info-provider joins as is.
    agent = Agent(config(op, bus_url, [{"type": "glue21", "file": str(_redated(CIP_GPU_SITE, tmp_path))}]))  # fmt: skip
    try:
        agent.publish_once()
    finally:
        agent.close()
    res = wait_for(
        lambda: registry.find(gpu=pb.GpuRequirement(count=2, model="V100"), tenant="vo.access.egi.eu",
                              image=pb.ImageRequirement(os_distribution="ubuntu")).candidates,
        what="the imported GPU flavor as a candidate",
    )  # fmt: skip
    assert [f.name for f in res[0].flavors] == ["g1.v100.2"]
    assert sorted(i.name for i in res[0].images) == ["EGI Ubuntu 22.04", "Ubuntu 22.04 CUDA 12.2"]
    # instances 20 - 2 = 18, cores 80 // 16 = 5, RAM 163840 // 65536 = 2: RAM is the limit.
    assert res[0].free_instances == 2
    assert not registry.find(gpu=pb.GpuRequirement(count=1), image=pb.ImageRequirement(cuda=True)).candidates  # fmt: skip


@pytest.mark.parametrize("name", ["glue21-bifi-2025-05.json", "glue21-bifi-2025-02.json"])
def test_production_site_glue21_documents_import(name, op, registry, bus_url, tmp_path):
    path = DATA / name
    (svc,) = _import(path)
    assert svc["type"] == "org.openstack.nova"
    assert svc["endpoint"] == "https://colossus.cesar.unizar.es:5000/v3"
    assert svc["healthy"] and svc["properties"]["glue_admin_domain"] == "BIFI"
    assert svc["properties"]["glue_endpoint_id"].endswith("_OpenStack_v3_oidc")
    (flavor,) = svc["flavors"]
    assert (flavor["id"], flavor["name"], flavor["cpus"], flavor["ram_mb"], flavor["disk_gb"]) == (
        "1",
        "m1.tiny",
        1,
        512,
        1,
    )
    assert flavor["gpus"] == 0
    (image,) = svc["images"]
    assert image["id"] == "06c8bfac-0f93-48da-b0eb-4fbad3356f73"
    assert image["name"] == "EGI Image for EGI Small Ubuntu for Monitoring [Ubuntu/20.04/KVM]"
    # The 0.x template said amd64, 1.x says x86_64: the same architecture.
    assert (image["os_distribution"], image["os_version"], image["architecture"]) == (
        "ubuntu",
        "20.04",
        "x86_64",
    )
    assert image["properties"]["marketplace_url"].startswith(
        ("https://appdb.egi.eu/store/vo/image/", "registry.egi.eu/")
    )
    (quota,) = svc["quotas"]
    assert (quota["tenant"], quota["project_id"]) == ("ops", "038db3eeca5c4960a443a89b92373cd2")
    expected = {"instances": 10}
    if name == "glue21-bifi-2025-05.json":  # 1.x also publishes the project's Nova quotas
        expected = {"instances": 10, "cores": 20, "ram_mb": 51200, "floating_ips": -1}
    assert quota["limits"] == expected
    assert flavor["creationTime"].startswith(("2025-05-08T15:07:06", "2025-02-18T12:36:34"))
    assert flavor["validity"] == 3600

    agent = Agent(config(op, bus_url, [{"type": "glue21", "file": str(_redated(path, tmp_path))}]))
    try:
        agent.publish_once()
    finally:
        agent.close()
    res = wait_for(
        lambda: registry.find(cpus=1, tenant="ops", image=pb.ImageRequirement(os_version="20.04")).candidates,
        what="BIFI's service as a candidate",
    )  # fmt: skip
    assert [f.name for f in res[0].flavors] == ["m1.tiny"]
    assert res[0].free_instances == 10
    assert not registry.find(cpus=2).candidates  # m1.tiny is all BIFI publishes
