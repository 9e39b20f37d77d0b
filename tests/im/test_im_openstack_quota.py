"""OpenStack through libcloud against the fake Nova/Keystone: lifecycle, cloud-init, and a
quota refusal that fails the infrastructure with the cloud's message and leaves nothing."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imclient import IMClient

_root = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "fake_openstack", _root / "fakes" / "openstack_compute.py"
)
fake_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_mod)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    node:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: COUNT}}
        host: {properties: {instance_type: "2"}}
        os:
          properties:
            image: IMAGE
            credential: {user: cloudadm, token: "ssh-ed25519 AAAAC3Nza hdc-test"}
      requirements:
        - local_storage: {node: scratch, relationship: {type: tosca.relationships.AttachesTo,
                          properties: {location: /scratch}}}
    scratch:
      type: tosca.nodes.BlockStorage
      properties: {size: 5 GB}
    web:
      type: hdc.nodes.Software
      properties: {packages: [nginx], commands: ["systemctl start nginx"]}
      requirements: [{host: node}]
  outputs:
    private: {value: {get_attribute: [node, private_address]}}
"""


@pytest.fixture
def openstack() -> Iterator:
    fake = fake_mod.FakeOpenStack(max_instances=2).start()
    yield fake
    fake.stop()


def _auth(fake) -> list[dict]:
    return [
        {"type": "InfrastructureManager", "username": "frank", "password": "pw"},
        {
            "id": "ost",
            "type": "OpenStack",
            "host": fake.url,
            "username": "demo",
            "password": "secret",
            "tenant": "demo",
        },
    ]


def _tosca(fake, count: int) -> str:
    return TOSCA.replace("COUNT", str(count)).replace("IMAGE", fake.image_id("cirros"))


def test_openstack_lifecycle_with_cloud_init(im_server, openstack) -> None:
    client = IMClient.init_client(im_server.url, _auth(openstack))
    ok, inf_id = client.create(_tosca(openstack, 2), "yaml")
    assert ok, inf_id
    assert len(openstack.servers) == 2
    for sid, server in openstack.servers.items():
        assert server["metadata"]["hdc-infrastructure-id"] == inf_id
        ud = openstack.user_data[sid]
        assert ud.startswith("#cloud-config")
        assert "ssh-ed25519 AAAAC3Nza hdc-test" in ud and "nginx" in ud
        assert "/scratch" in ud  # cloud-init formats and mounts the attached volume
        (vol,) = server["_volumes"]
        assert vol["volume_size"] == 5 and vol["delete_on_termination"] is True
    ok, outputs = client.get_infra_property(inf_id, "outputs")
    # on the network made for the infrastructure (the fake project also has "private")
    assert ok and len(outputs["private"]) == 2 and outputs["private"][0].startswith("192.168.10.")
    ok, radl = client.alter(inf_id, "0", "system node ( instance_type = '3' )")
    assert ok, radl
    assert sorted(s["flavor"]["id"] for s in openstack.servers.values()) == ["2", "3"]
    assert {s["status"] for s in openstack.servers.values()} == {"ACTIVE"}
    ok, msg = client.stop_infra(inf_id)
    assert ok, msg
    assert {s["status"] for s in openstack.servers.values()} == {"SHUTOFF"}
    ok, msg = client.start_infra(inf_id)
    assert {s["status"] for s in openstack.servers.values()} == {"ACTIVE"}
    ok, msg = client.destroy(inf_id)
    assert ok, msg
    assert openstack.servers == {}


def test_quota_refusal_fails_with_cloud_message_and_cleans_up(im_server, openstack) -> None:
    client = IMClient.init_client(im_server.url, _auth(openstack))
    ok, msg = client.create(_tosca(openstack, 3), "yaml")
    assert not ok
    assert "Quota exceeded for instances" in msg
    assert openstack.servers == {}  # the two VMs made before the refusal were destroyed


def test_quota_refusal_async_reports_failed_state(im_server, openstack) -> None:
    client = IMClient.init_client(im_server.url, _auth(openstack))
    ok, inf_id = client.create(_tosca(openstack, 3), "yaml", asyncr=True)
    assert ok, inf_id
    headers = {"Authorization": client.rest_auth_data, "Accept": "application/json"}

    def failed() -> bool:
        r = httpx.get(f"{im_server.url}/infrastructures/{inf_id}/state", headers=headers)
        return r.json()["state"]["state"] == "failed"

    fx_wait(failed)
    ok, contmsg = client.get_infra_property(inf_id, "contmsg")
    assert "Quota exceeded for instances" in contmsg
    assert openstack.servers == {}


def fx_wait(predicate, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")
