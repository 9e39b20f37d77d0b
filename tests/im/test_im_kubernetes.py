"""Container nodes on Kubernetes (the official client) against the fake API server."""

from __future__ import annotations

import base64
import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

_root = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "fake_k8s", _root / "fakes" / "fake_kubernetes_api.py"
)
fake_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_mod)
_fx_spec = importlib.util.spec_from_file_location(
    "im_fx_k8s", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_fx_spec)
_fx_spec.loader.exec_module(fx)

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


SECRETS = """
tosca_definitions_version: tosca_simple_yaml_1_0
imports:
  - hdc_types: hdc_types.yaml
topology_template:
  node_templates:
    runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host: {properties: {num_cpus: 1.0, publish_ports: [{protocol: tcp, source: 5000}]}}
    model:
      type: hdc.nodes.ModelService
      properties:
        model: digits
        environment_variables: {HDC_MODEL: digits, RCLONE_USER: ana}
        secrets: {RCLONE_PASSWORD: "s3cr3t-rclone-pw", API_TOKEN: "tok-7f3a9c"}
      artifacts:
        image: {file: "hdc/serving:0.1.0", type: tosca.artifacts.Deployment.Image.Container.Docker}
      requirements: [{host: runtime}]
  outputs:
    url: {value: {get_attribute: [model, endpoint]}}
    secrets: {value: {get_property: [model, secrets]}}
"""
PLAIN = ("s3cr3t-rclone-pw", "tok-7f3a9c")


@pytest.fixture
def typed_server(tmp_path, sqlite_url, kube) -> Iterator:
    """An im that knows hdc's types (the `secrets` property) and watches the cluster."""
    from hdc_common.tosca_types import type_files
    from hdc_im.settings import SiteConfig

    site = SiteConfig(
        type="kubernetes", endpoint=kube.url, credentials={"token": "k8s-token"}, namespace="ml"
    )
    settings = fx.im_settings(
        tmp_path, sqlite_url, tosca_types_files=type_files(), sites={"k8s": site}
    )
    server = fx.ImServer(settings).start()
    yield server
    server.stop()


def test_secrets_become_a_kubernetes_secret_and_are_never_shown(typed_server, kube) -> None:
    base, h = typed_server.url, _headers(kube)
    r = httpx.post(f"{base}/infrastructures", content=SECRETS, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    inf = r.headers["InfID"]
    (dep,) = kube.of_kind("deployments")
    (secret,) = kube.of_kind("secrets")
    name = dep["metadata"]["name"]
    assert secret["metadata"]["name"] == name and secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["hdc-infrastructure-id"] == inf
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "RCLONE_PASSWORD": "s3cr3t-rclone-pw",
        "API_TOKEN": "tok-7f3a9c",
    }
    # made before the Deployment that reads it
    kinds = [plural for plural, _, _ in kube.objects]
    assert kinds.index("secrets") < kinds.index("deployments")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HDC_MODEL"] == {"name": "HDC_MODEL", "value": "digits"}
    for key in ("RCLONE_PASSWORD", "API_TOKEN"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
    assert not any(p in json.dumps(dep) for p in PLAIN)

    # nothing the im answers shows them: outputs, template, RADL, contmsg, VM info, list
    shown = [
        httpx.get(f"{base}/infrastructures/{inf}/{prop}", headers=h).text
        for prop in ("outputs", "tosca", "radl", "contmsg", "state", "vms/0")
    ] + [httpx.get(f"{base}/infrastructures", headers=h).text]
    out = httpx.get(f"{base}/infrastructures/{inf}/outputs", headers=h).json()["outputs"]
    assert out["url"].startswith("http://127.0.0.1:") and out["secrets"] is None
    assert "<redacted>" in shown[1]
    assert not any(p in text for p in PLAIN for text in shown)
    # nor does the database hold them in clear
    with typed_server.parts["sessions"]() as s:
        row = s.execute(sa.text("SELECT topology, tosca FROM im_infrastructures")).one()
    stored = f"{row[0]} {row[1]}"
    assert not any(p in stored for p in PLAIN)

    assert httpx.delete(f"{base}/infrastructures/{inf}", headers=h).status_code == 200
    assert kube.objects == {}


def test_reconciler_removes_an_orphan_secret(typed_server, kube) -> None:
    orphan = {
        "metadata": {
            "name": "hdc-0rphan-model-0",
            "labels": {"hdc-infrastructure-id": str(uuid.uuid4()), "hdc-vm-token": "t0"},
        },
        "stringData": {"API_TOKEN": "left-behind"},
    }
    status, created = kube.create("secrets", "ml", orphan)
    assert (
        status == 201 and created["data"]["API_TOKEN"] == base64.b64encode(b"left-behind").decode()
    )
    assert typed_server.parts["reconciler"].run_once() == ["hdc-0rphan-model-0"]
    assert kube.of_kind("secrets") == []
