"""The site agent: collectors against protocol fakes, report building, the CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from hdc_infoprovider.agent.builder import build_report
from hdc_infoprovider.agent.cli import Agent, main, run
from hdc_infoprovider.agent.collectors.kubernetes import KubernetesCollector
from hdc_infoprovider.agent.collectors.openstack import OpenStackCollector
from hdc_infoprovider.agent.config import (
    AgentConfig,
    KubernetesCollectorConfig,
    OpenStackCollectorConfig,
)
from hdc_infoprovider.report import SiteReport

from tests.fakes.kubernetes_nodes import FakeKubernetesNodes
from tests.fakes.openstack import FakeOpenStack


@pytest.fixture
def cloud():
    with FakeOpenStack() as fake:
        fake.add_user("agent", "pw")
        fake.add_project("proj-a", quota={"instances": {"limit": 10, "in_use": 3},
                                          "cores": {"limit": 64, "in_use": 6}})  # fmt: skip
        fake.add_project("proj-b", quota={"instances": {"limit": 4, "in_use": 0}})
        for n in range(150):
            fake.add_image(f"img-{n:03d}", f"image {n}", os_distro="ubuntu", os_version="22.04")
        fake.add_image("img-cuda", "cuda", os_distro="ubuntu", gpu_cuda="12.1", gpu_cudnn="8.9")
        fake.add_image("img-queued", "not yet", status="queued")
        fake.add_flavor("f1", "small", 1, 2048, 10)
        fake.add_flavor("f2", "a100", 16, 131072, 200, {"pci_passthrough:alias": "a100:2"})
        fake.add_flavor("f3", "private", 4, 8192, 40, public=False)
        yield fake


def os_config(cloud, **extra) -> OpenStackCollectorConfig:
    return OpenStackCollectorConfig.model_validate(
        {
            "type": "openstack",
            "auth_url": cloud.auth_url,
            "username": "agent",
            "password": "pw",
            "projects": [
                {"tenant": "vo.a.eu", "project_name": "proj-a"},
                {"tenant": "vo.b.eu", "project_name": "proj-b"},
            ],
            "timeout_s": 5,
            **extra,
        }
    )


def test_openstack_collector_reads_every_api(cloud):
    (svc,) = OpenStackCollector(os_config(cloud)).collect()
    assert svc["type"] == "org.openstack.nova" and svc["endpoint"] == cloud.auth_url
    flavors = {f["id"]: f for f in svc["flavors"]}
    assert set(flavors) == {"f1", "f2", "f3"} and flavors["f3"]["public"] is False
    assert (flavors["f2"]["gpus"], flavors["f2"]["gpu_model"]) == (2, "a100")
    assert flavors["f2"]["properties"] == {"pci_passthrough:alias": "a100:2"}
    assert len(svc["images"]) == 151  # active only, across two Glance pages
    cuda = next(i for i in svc["images"] if i["id"] == "img-cuda")
    assert cuda["cuda"] and (cuda["cuda_version"], cuda["cudnn_version"]) == ("12.1", "8.9")
    quotas = {q["tenant"]: q for q in svc["quotas"]}
    assert quotas["vo.a.eu"]["limits"] == {"instances": 10, "cores": 64}
    assert quotas["vo.a.eu"]["usage"] == {"instances": 3, "cores": 6}
    assert quotas["vo.b.eu"]["limits"] == {"instances": 4}
    assert svc["failed_parts"] == []
    assert ("GET", "/image/v2/images") in cloud.requests


def test_openstack_quota_fallback_and_failed_parts(cloud):
    cloud.fail["quotas"] = 403  # members may not read os-quota-sets: /limits still works
    cloud.fail["neutron"] = 503
    (svc,) = OpenStackCollector(os_config(cloud)).collect()
    quotas = {q["tenant"]: q for q in svc["quotas"]}
    assert quotas["vo.a.eu"]["limits"]["instances"] == 10
    assert quotas["vo.a.eu"]["usage"]["cores"] == 6
    assert svc["failed_parts"] == ["networks"]
    assert "networks" in svc["properties"]["collector_warnings"]


def test_openstack_bad_credentials_fail_the_collector(cloud):
    cfg = os_config(cloud, password="wrong")
    report = build_report(
        AgentConfig.model_validate(
            {"site": {"id": "s"}, "collectors": [cfg.model_dump(mode="json")]}
        ),
        [OpenStackCollector(cfg)],
    )
    assert report["services"] == []
    assert report["health"][0]["healthy"] is False
    assert "keystone refused" in report["health"][0]["message"]


def test_kubernetes_collector_groups_node_shapes():
    with FakeKubernetesNodes(token="k8s-token") as k8s:
        k8s.add_node("cpu-1", "3800m", "16Gi")
        k8s.add_node("cpu-2", "3800m", "16Gi")
        k8s.add_node("gpu-1", "31", "128Gi", gpus=2,
                     labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"})  # fmt: skip
        k8s.add_node("cordoned", "64", "256Gi", unschedulable=True)
        cfg = KubernetesCollectorConfig(type="kubernetes", host=k8s.url, token="k8s-token")
        (svc,) = KubernetesCollector(cfg).collect()
        assert svc["type"] == "kubernetes" and svc["endpoint"] == k8s.url
        shapes = sorted(svc["flavors"], key=lambda f: f["cpus"])
        assert [(f["cpus"], f["ram_mb"], f["gpus"]) for f in shapes] == [
            (3, 16384, 0),
            (31, 131072, 2),
        ]
        assert shapes[0]["properties"]["nodes"] == "2"
        assert (
            shapes[1]["gpu_model"] == "NVIDIA-A100-SXM4-40GB"
            and shapes[1]["gpu_vendor"] == "nvidia"
        )
        bad = KubernetesCollector(
            KubernetesCollectorConfig(type="kubernetes", host=k8s.url, token="x")
        )
        with pytest.raises(Exception, match="listing nodes failed"):
            bad.collect()


def write_config(tmp_path: Path, collectors: list[dict], **extra) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {"site": {"id": "hpc-site", "name": "HPC"}, "collectors": collectors, **extra}
        )
    )
    return path


def test_cli_once_print_shows_the_report(tmp_path, capsys):
    static = tmp_path / "services.yaml"
    static.write_text(yaml.safe_dump({"services": [
        {"id": "slurm", "type": "org.hpc.slurm", "endpoint": "https://hpc.example.org",
         "flavors": [{"id": "gpu-node", "cpus": 64, "ram_mb": 515000, "gpus": 4, "gpu_vendor": "nvidia",
                      "gpu_model": "A100", "infiniband": True}]}]}))  # fmt: skip
    cfg = write_config(tmp_path, [{"type": "static", "file": "services.yaml"},
                                  {"type": "glue21", "name": "glue", "file": "missing.json"}])  # fmt: skip
    assert main(["once", "--print", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    SiteReport.model_validate(doc)
    assert doc["site"]["id"] == "hpc-site"
    assert doc["services"][0]["component"] == "static"
    assert doc["services"][0]["flavors"][0]["infiniband"] is True
    health = {h["component"]: h for h in doc["health"]}
    assert health["static"]["healthy"] and not health["glue"]["healthy"]
    assert "missing.json" in health["glue"]["message"]


def test_cli_configuration_errors_are_one_line(tmp_path, capsys):
    cfg = write_config(tmp_path, [{"type": "openstack", "auth_url": "http://x"}])
    assert main(["once", "--print", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "projects" in err
    assert main(["once", "--print", "--config", str(tmp_path / "nope.yaml")]) == 2
    cfg = write_config(tmp_path, [{"type": "static"}], bogus=1)
    assert main(["once", "--config", str(cfg)]) == 2
    assert "bogus" in capsys.readouterr().err
    # Sending needs auth and publish sections.
    cfg = write_config(tmp_path, [{"type": "static"}])
    assert main(["once", "--config", str(cfg)]) == 1


def test_run_reports_on_schedule_and_on_demand(tmp_path):
    cfg = AgentConfig.model_validate(
        {"site": {"id": "s"}, "interval": 3600, "collectors": [{"type": "static"}]}
    )
    sent: list[dict] = []

    class Recording(Agent):
        def publish_once(self) -> dict:  # what would go out, recorded instead of sent
            report = self.report()
            sent.append(report)
            return report

    stop, now = threading.Event(), threading.Event()
    loop = threading.Thread(target=run, args=(Recording(cfg), stop, now))
    loop.start()
    deadline = time.monotonic() + 10
    while len(sent) < 1 and time.monotonic() < deadline:
        stop.wait(0.05)
    now.set()  # SIGUSR1
    while len(sent) < 2 and time.monotonic() < deadline:
        stop.wait(0.05)
    stop.set()
    loop.join(5)
    assert len(sent) == 2 and not loop.is_alive()
    assert sent[1]["creationTime"] > sent[0]["creationTime"]
