"""Container nodes as Marathon apps (the `marathon` client) against the fake Marathon."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

_root = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "fake_marathon", _root / "fakes" / "fake_marathon_api.py"
)
fake_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_mod)
_spec2 = importlib.util.spec_from_file_location(
    "im_fx_mar", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_spec2)
_spec2.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    runtime:
      type: tosca.nodes.indigo.Container.Runtime.Docker
      capabilities:
        host:
          properties:
            num_cpus: CPUS
            mem_size: 2 GB
            num_gpus: 1
            publish_ports: [{protocol: tcp, source: 5000}]
    app:
      type: tosca.nodes.indigo.Container.Application.Docker.Marathon
      properties:
        environment_variables: {MODEL: digits}
        labels: {team: ml}
        constraints: [[hostname, UNIQUE]]
      artifacts:
        image: {file: "deephdc/deep-oc-digits:latest", type: tosca.artifacts.Deployment.Image.Container.Docker}
      requirements: [{host: runtime}]
  outputs:
    url: {value: {get_attribute: [app, endpoint]}}
"""


@pytest.fixture
def marathon() -> Iterator:
    fake = fake_mod.FakeMarathon(cpus=4, mem=8192, gpus=1).start()
    yield fake
    fake.stop()


def _headers(fake) -> dict[str, str]:
    return {
        "Authorization": "type = InfrastructureManager; username = hal; password = pw\\n"
        f"id = mesos; type = Marathon; host = {fake.url}",
        "Content-Type": "text/yaml",
    }


def test_marathon_app_lifecycle(im_server, marathon) -> None:
    h = _headers(marathon)
    r = httpx.post(
        f"{im_server.url}/infrastructures",
        content=TOSCA.replace("CPUS", "2.0"),
        headers=h,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    inf = r.headers["InfID"]
    ((aid, app),) = marathon.apps.items()
    assert aid == f"/hdc/{inf}/app-0"
    assert app["gpus"] == 1 and app["cpus"] == 2.0 and app["mem"] == 2000
    assert app["labels"]["hdc-infrastructure-id"] == inf and app["labels"]["team"] == "ml"
    assert app["env"] == {"MODEL": "digits"} and app["constraints"] == [["hostname", "UNIQUE"]]
    assert app["container"]["docker"]["portMappings"][0]["containerPort"] == 5000
    out = httpx.get(f"{im_server.url}/infrastructures/{inf}/outputs", headers=h).json()
    assert out["outputs"]["url"] == f"http://agent-1.fake:{app['tasks'][0]['ports'][0]}"

    assert (
        httpx.put(f"{im_server.url}/infrastructures/{inf}/vms/0/stop", headers=h).status_code == 200
    )
    assert marathon.apps[aid]["instances"] == 0
    assert (
        httpx.put(f"{im_server.url}/infrastructures/{inf}/vms/0/start", headers=h).status_code
        == 200
    )
    assert marathon.apps[aid]["instances"] == 1
    assert httpx.delete(f"{im_server.url}/infrastructures/{inf}", headers=h).status_code == 200
    assert marathon.apps == {}


def test_app_that_never_fits_fails_and_is_removed(tmp_path, sqlite_url, marathon) -> None:
    server = fx.ImServer(fx.im_settings(tmp_path, sqlite_url, sync_timeout_s=2.0)).start()
    try:
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA.replace("CPUS", "16.0"),
            headers=_headers(marathon),
            timeout=60,
        )
        assert r.status_code == 400
        assert "not running after" in r.text
        assert marathon.apps == {}
    finally:
        server.stop()
