"""Agent -> RabbitMQ -> registry -> gRPC, with the real broker and the real database.

The agent collects from the OpenStack fake, authenticates at the OIDC fake with client
credentials and publishes a CloudEvent on hdc.commands; the registry verifies and stores
it in PostgreSQL; queries go through the gRPC server.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_common.bus import Bus, CloudEvent
from hdc_infoprovider.agent.cli import Agent
from hdc_infoprovider.agent.config import AgentConfig
from hdc_infoprovider.report import utcnow

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.fakes.openstack import FakeOpenStack
from tests.infoprovider.harness import Registry, registry_settings, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

GPU_SPECS = {
    "Accelerator:Number": "2",
    "Accelerator:Vendor": "nvidia",
    "Accelerator:Model": "Tesla V100",
}


@pytest.fixture
def op():
    with FakeOIDCProvider() as provider:
        provider.add_client("agent-a", "secret-a")
        provider.add_client("agent-b", "secret-b")
        yield provider


@pytest.fixture
def cloud():
    with FakeOpenStack() as fake:
        fake.add_user("info-agent", "pw")
        fake.add_project(
            "vo-example",
            quota={
                "instances": {"limit": 10, "in_use": 2, "reserved": 0},
                "cores": {"limit": 40, "in_use": 8, "reserved": 0},
                "ram": {"limit": 102400, "in_use": 16384, "reserved": 0},
            },
        )
        fake.add_flavor("1", "m1.small", 1, 2048, 20)
        fake.add_flavor("2", "m1.large", 8, 16384, 80, {"infiniband": "true"})
        fake.add_flavor("3", "g1.v100x2", 16, 65536, 100, GPU_SPECS)
        fake.add_image("img-ubuntu", "Ubuntu 22.04", os_distro="ubuntu", os_version="22.04",
                       architecture="x86_64", os_type="linux")  # fmt: skip
        fake.add_image("img-cuda", "Ubuntu 22.04 CUDA", os_distro="ubuntu", os_version="22.04",
                       architecture="x86_64", gpu_cuda="12.2", gpu_driver="535")  # fmt: skip
        fake.add_network("net-pub", "public", external=True)
        yield fake


@pytest.fixture
def registry(op, rabbitmq_url, postgres_url):
    reg = Registry(
        **registry_settings(
            op,
            {"agent-a": "site-a", "agent-b": "site-b"},
            database_url=postgres_url,
            bus_url=rabbitmq_url,
            down_check_interval_s=0.5,
        )
    ).start()
    yield reg
    reg.stop()


def agent_config(op, cloud, bus_url: str, **extra: Any) -> AgentConfig:
    collectors = extra.pop(
        "collectors",
        [
            {
                "type": "openstack",
                "auth_url": cloud.auth_url,
                "username": "info-agent",
                "password": "pw",
                "projects": [{"tenant": "vo.example.eu", "project_name": "vo-example"}],
                "identity_providers": [{"issuer": op.issuer, "name": "hdc"}],
                "timeout_s": 5,
            }
        ],
    )
    return AgentConfig.model_validate(
        {
            "site": {"id": "site-a", "name": "Site A", "country": "IT"},
            "validity": 600,
            "auth": {"issuer": op.issuer, "client_id": "agent-a", "client_secret": "secret-a"},
            "publish": {"transport": "amqp", "bus_url": bus_url, "timeout_s": 10},
            "collectors": collectors,
            **extra,
        }
    )


def test_agent_to_registry_over_rabbitmq_then_grpc_query(
    op, cloud, registry, rabbitmq_url, rabbitmq_api
):
    # Watch the announcements the registry makes on hdc.events.
    _bind_events_queue(rabbitmq_api, "watch.site-changed", "infoprovider.site.changed")

    agent = Agent(agent_config(op, cloud, rabbitmq_url))
    try:
        agent.publish_once()
        cands = wait_for(
            lambda: (
                registry.find(
                    cpus=8, gpu=pb.GpuRequirement(count=2, vendor="NVIDIA", model="v100")
                ).candidates
            ),
            what="site-a as a GPU candidate",
        )
        (cand,) = cands
        assert cand.site_id == "site-a" and cand.service_id == "site-a.nova"
        assert cand.service_type == "org.openstack.nova" and cand.endpoint == cloud.auth_url
        assert [f.name for f in cand.flavors] == ["g1.v100x2"]
        assert cand.flavors[0].gpus == 2 and cand.flavors[0].gpu_model == "Tesla V100"
        assert cand.identity_providers[0].issuer == op.issuer
        assert cand.freshness.validity_s == 600 and not cand.freshness.stale

        # Image, Infiniband and free-quota requirements.
        ib = registry.find(infiniband=True, tenant="vo.example.eu", instances=2,
                           image=pb.ImageRequirement(os_distribution="Ubuntu", cuda=True, min_cuda_version="12"))  # fmt: skip
        (cand,) = ib.candidates
        assert [f.name for f in cand.flavors] == ["m1.large"]
        assert [i.id for i in cand.images] == ["img-cuda"] and cand.images[0].cuda_version == "12.2"
        # cores: 32 free / 8 per instance = 4; instances: 8 free; RAM: 86016/16384 = 5.
        assert cand.free_instances == 4 and cand.quotas[0].limits.instances == 10
        too_many = registry.find(cpus=8, tenant="vo.example.eu", instances=5)
        assert not too_many.candidates and "quota" in too_many.excluded[0].reason

        # A flavor removed at the site disappears after the next report.
        del cloud.flavors["3"]
        agent.publish_once()
        wait_for(
            lambda: not registry.find(gpu=pb.GpuRequirement(count=1)).candidates,
            what="the GPU flavor to vanish",
        )
        site = registry.site("site-a")
        assert sorted(f.id for f in site.services[0].flavors) == ["1", "2"]
        assert site.summary.status == pb.STATUS_UP

        events = wait_for(
            lambda: [
                json.loads(m["payload"]) for m in rabbitmq_api.get_messages("watch.site-changed")
            ],
            what="site.changed events",
        )
        assert events[0]["type"] == "infoprovider.site.changed"
        assert events[0]["data"]["site_id"] == "site-a"
        removed = wait_for(
            lambda: [
                e for m in rabbitmq_api.get_messages("watch.site-changed")
                if (e := json.loads(m["payload"]))["data"]["changes"].get("flavors", {}).get("removed")
            ],
            what="an event announcing the removed flavor",
        )  # fmt: skip
        assert removed[0]["data"]["changes"]["flavors"]["removed"] == 1
    finally:
        agent.close()


def test_site_silent_past_validity_is_excluded_and_marked_down(op, registry, rabbitmq_url):
    # A report that is valid for only a few more seconds, as if the agent then went silent.
    created = utcnow() - timedelta(seconds=50)
    report = {
        "site": {"id": "site-b"},
        "creationTime": created.isoformat(),
        "validity": 60,
        "services": [
            {"id": "hpc", "type": "org.hpc.slurm", "component": "static",
             "flavors": [{"id": "node", "cpus": 64, "ram_mb": 256000}]}
        ],
    }  # fmt: skip
    with Bus(rabbitmq_url, service="e2e-agent") as bus:
        event = bus.new_event(
            "infoprovider.site.report",
            {"access_token": op.issue_token("agent-b"), "report": report},
        )
        bus.publish(event, exchange="hdc.commands", routing_key="infoprovider")
    wait_for(lambda: registry.find(cpus=32).candidates, what="site-b to be a candidate")
    res = wait_for(
        lambda: (r := registry.find(cpus=32)).excluded and r, timeout=25, what="site-b down"
    )
    assert not res.candidates
    assert res.excluded[0].site_id == "site-b" and res.excluded[0].reason.startswith("site down")
    assert not registry.stub.ListSites(pb.ListSitesRequest(), timeout=5).sites
    down = registry.stub.ListSites(pb.ListSitesRequest(include_down=True), timeout=5).sites
    assert down[0].id == "site-b" and down[0].status == pb.STATUS_DOWN


def test_report_signed_by_site_a_claiming_site_b_is_refused(op, cloud, registry, rabbitmq_url):
    agent = Agent(agent_config(op, cloud, rabbitmq_url, site={"id": "site-b", "name": "not mine"}))
    try:
        agent.publish_once()
    finally:
        agent.close()
    rejected = wait_for(registry.rejected, what="the refusal to be recorded")
    assert rejected[0]["claimed_site"] == "site-b"
    assert rejected[0]["authenticated_site"] == "site-a" and rejected[0]["client_id"] == "agent-a"
    assert "speaks for site 'site-a'" in rejected[0]["reason"]
    assert (
        "(removed)" in rejected[0]["excerpt"]
        and op.issue_token("x")[:20] not in rejected[0]["excerpt"]
    )
    assert registry.site("site-b") is None and registry.site("site-a") is None

    # A service inside an otherwise-own report that claims another site is refused too.
    report = Agent(agent_config(op, cloud, rabbitmq_url)).report()
    report["services"][0]["site_id"] = "site-b"
    with Bus(rabbitmq_url, service="e2e-agent") as bus:
        event = CloudEvent.create(
            "infoprovider.site.report",
            {"access_token": op.issue_token("agent-a"), "report": report},
            source="/test",
        )
        bus.publish(event, exchange="hdc.commands", routing_key="infoprovider")
    wait_for(lambda: len(registry.rejected()) == 2, what="the second refusal")
    assert "may only write records of site 'site-a'" in registry.rejected()[0]["reason"]
    assert registry.site("site-a") is None


def _bind_events_queue(api: Any, queue: str, key: str) -> None:
    http = api._http
    vhost = api.vhost
    http.put(f"/api/queues/{vhost}/{queue}", json={"durable": True}).raise_for_status()
    http.put(
        f"/api/exchanges/{vhost}/hdc.events", json={"type": "topic", "durable": True}
    ).raise_for_status()
    http.post(
        f"/api/bindings/{vhost}/e/hdc.events/q/{queue}", json={"routing_key": key}
    ).raise_for_status()
