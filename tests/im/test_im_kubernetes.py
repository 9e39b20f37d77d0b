"""Container nodes on Kubernetes (the official client) against the fake API server."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

_root = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "fake_k8s", _root / "fakes" / "fake_kubernetes_api.py"
)
fake_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_mod)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host:
          properties:
            num_cpus: 1.5
            mem_size: 2 GB
            num_gpus: 1
            publish_ports: [{protocol: tcp, source: 5000}]
    model:
      type: tosca.nodes.indigo.Container.Application.Docker.Kubernetes
      properties:
        environment_variables: {MODEL: digits}
      artifacts:
        image: {file: "deephdc/deep-oc-digits:latest", type: tosca.artifacts.Deployment.Image.Container.Docker}
      requirements: [{host: runtime}]
  outputs:
    url: {value: {get_attribute: [model, endpoint]}}
"""


@pytest.fixture
def kube() -> Iterator:
    fake = fake_mod.FakeKubernetes(gpu_quota=1, token="k8s-token").start()
    yield fake
    fake.stop()


def _headers(fake) -> dict[str, str]:
    return {
        "Authorization": "type = InfrastructureManager; username = ivy; password = pw\\n"
        f"id = k8s; type = Kubernetes; host = {fake.url}; "
        "token = k8s-token; namespace = ml",
        "Content-Type": "text/yaml",
    }


def test_deployment_service_lifecycle(im_server, kube) -> None:
    h = _headers(kube)
    r = httpx.post(f"{im_server.url}/infrastructures", content=TOSCA, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    inf = r.headers["InfID"]
    (dep,) = kube.of_kind("deployments")
    assert dep["metadata"]["namespace"] == "ml"
    assert dep["metadata"]["labels"]["hdc-infrastructure-id"] == inf
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "deephdc/deep-oc-digits:latest"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["resources"]["requests"]["cpu"] == "1.5"
    assert container["env"] == [{"name": "MODEL", "value": "digits"}]
    (svc,) = kube.of_kind("services")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    out = httpx.get(f"{im_server.url}/infrastructures/{inf}/outputs", headers=h).json()
    assert out["outputs"]["url"] == f"http://127.0.0.1:{node_port}"

    r = httpx.put(
        f"{im_server.url}/infrastructures/{inf}/vms/0",
        content="system model ( cpu.count >= 3 and memory.size >= 4g )",
        headers={**h, "Content-Type": "text/plain"},
    )
    assert r.status_code == 200, r.text
    resources = kube.of_kind("deployments")[0]["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]
    assert resources["requests"]["cpu"] == "3.0" and resources["requests"]["memory"] == "4000Mi"
    assert httpx.put(f"{im_server.url}/infrastructures/{inf}/stop", headers=h).status_code == 200
    assert kube.of_kind("deployments")[0]["spec"]["replicas"] == 0
    assert httpx.put(f"{im_server.url}/infrastructures/{inf}/start", headers=h).status_code == 200
    assert kube.of_kind("deployments")[0]["spec"]["replicas"] == 1
    assert httpx.delete(f"{im_server.url}/infrastructures/{inf}", headers=h).status_code == 200
    assert kube.objects == {}


def test_gpu_quota_fails_with_the_api_servers_message(im_server, kube) -> None:
    h = _headers(kube)
    first = httpx.post(f"{im_server.url}/infrastructures", content=TOSCA, headers=h, timeout=60)
    assert first.status_code == 200, first.text
    second = httpx.post(f"{im_server.url}/infrastructures", content=TOSCA, headers=h, timeout=60)
    assert second.status_code == 400
    assert "exceeded quota: gpu-quota" in second.text
    # only the first infrastructure's objects are left
    assert {o["metadata"]["labels"]["hdc-infrastructure-id"] for o in kube.objects.values()} == {
        first.headers["InfID"]
    }


BATCH = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host: {properties: {num_cpus: 1.0, mem_size: 1 GB}}
    train:
      type: tosca.nodes.indigo.Container.Application.Docker.Chronos
      properties:
        command: "python -m train --epochs 3"
      artifacts:
        image: {file: "deephdc/deep-oc-digits:latest", type: tosca.artifacts.Deployment.Image.Container.Docker}
      requirements: [{host: runtime}]
"""


def test_batch_nodes_become_jobs(im_server, kube) -> None:
    h = _headers(kube)
    r = httpx.post(f"{im_server.url}/infrastructures", content=BATCH, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    (job,) = kube.of_kind("jobs")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["/bin/sh", "-c", "python -m train --epochs 3"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert kube.of_kind("deployments") == []
    r = httpx.delete(f"{im_server.url}/infrastructures/{r.headers['InfID']}", headers=h)
    assert r.status_code == 200 and kube.objects == {}
