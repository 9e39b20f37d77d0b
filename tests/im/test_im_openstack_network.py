"""OpenStack networking through libcloud against the fake Nova/Neutron: a network (or the one
the template names), a security group, floating IPs for public nodes, and nothing of it left
after a delete, a scale-down, a failed create, or a crash (the reconciler)."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hdc_im.settings import SiteConfig
from imclient import IMClient

_root = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "fake_openstack_net", _root / "fakes" / "openstack_compute.py"
)
fake_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_mod)
_fx_spec = importlib.util.spec_from_file_location(
    "im_fx_osnet", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_fx_spec)
_fx_spec.loader.exec_module(fx)

PUBLIC = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    web:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: COUNT}}
        host: {properties: {instance_type: m1.small}}
        os: {properties: {image: IMAGE}}
        endpoint:
          properties:
            network_name: PUBLIC
            ports: {ssh: {protocol: tcp, source: 22}, http: {protocol: tcp, source: 80}}
  outputs:
    ips: {value: {get_attribute: [web, public_address]}}
    private: {value: {get_attribute: [web, private_address]}}
"""

# the IM's way: Ports bind the Compute to a public Network and to an existing private one
EXISTING = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    outside:
      type: tosca.nodes.network.Network
      properties: {network_type: public, network_name: public}
    lan:
      type: tosca.nodes.network.Network
      properties: {network_name: private}
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        host: {properties: {instance_type: m1.tiny}}
        os: {properties: {image: IMAGE}}
    vm_public:
      type: tosca.nodes.network.Port
      requirements: [{binding: vm}, {link: outside}]
    vm_private:
      type: tosca.nodes.network.Port
      requirements: [{binding: vm}, {link: lan}]
  outputs:
    ip: {value: {get_attribute: [vm, public_address, 0]}}
    private: {value: {get_attribute: [vm, private_address, 0]}}
"""


@pytest.fixture
def openstack() -> Iterator:
    fake = fake_mod.FakeOpenStack(max_instances=4, max_cores=8, max_floating_ips=2).start()
    yield fake
    fake.stop()


def _auth(fake) -> list[dict]:
    return [
        {"type": "InfrastructureManager", "username": "olga", "password": "pw"},
        {
            "id": "ost",
            "type": "OpenStack",
            "host": fake.url,
            "username": "demo",
            "password": "secret",
            "tenant": "demo",
        },
    ]


def _ids(fake) -> dict[str, set[str]]:
    return {k: {o["id"] for o in v} for k, v in fake.neutron.project_resources().items()}


def _public(fake, count: int) -> str:
    return PUBLIC.replace("COUNT", str(count)).replace("IMAGE", fake.image_id("cirros"))


def test_public_nodes_get_floating_ips_and_delete_releases_everything(im_server, openstack) -> None:
    before = _ids(openstack)
    client = IMClient.init_client(im_server.url, _auth(openstack))
    ok, inf_id = client.create(_public(openstack, 2), "yaml")
    assert ok, inf_id
    tag = f"hdc-infrastructure-id={inf_id}"
    net = openstack.neutron
    (made_net,) = [n for n in net.networks.values() if n["description"] == tag]
    assert made_net["name"] == f"hdc-{inf_id}"
    (subnet,) = [s for s in net.subnets.values() if s["network_id"] == made_net["id"]]
    assert subnet["description"] == tag and subnet["cidr"] == "192.168.10.0/24"
    (router,) = [r for r in net.routers.values() if r["description"] == tag]
    assert router["external_gateway_info"]["network_id"] == net.external
    (group,) = [g for g in net.security_groups.values() if g["description"] == tag]
    ingress = {
        (r["protocol"], r["port_range_min"], r["remote_ip_prefix"])
        for r in group["security_group_rules"]
        if r["direction"] == "ingress"
    }
    assert ingress == {("tcp", 22, "0.0.0.0/0"), ("tcp", 80, "0.0.0.0/0")}

    fips = list(net.floatingips.values())
    assert len(fips) == 2
    for sid, server in openstack.servers.items():
        ports = [p for p in net.ports.values() if p["device_id"] == sid]
        assert [p["network_id"] for p in ports] == [made_net["id"]]
        assert ports[0]["security_groups"] == [group["id"]]
        (fip,) = [f for f in fips if f["port_id"] == ports[0]["id"]]
        token = server["metadata"]["hdc-vm-token"]
        assert fip["description"] == f"{tag} hdc-vm-token={token}"
        assert fip["status"] == "ACTIVE"
    ok, outputs = client.get_infra_property(inf_id, "outputs")
    assert ok, outputs
    assert sorted(outputs["ips"]) == sorted(f["floating_ip_address"] for f in fips)
    assert all(ip.startswith("203.0.113.") for ip in outputs["ips"])
    assert all(ip.startswith("192.168.10.") for ip in outputs["private"])

    # scaling down releases the removed VM's floating IP with it
    ok, msg = client.removeresource(inf_id, ["1"])
    assert ok, msg
    assert len(openstack.servers) == 1 and len(net.floatingips) == 1

    ok, msg = client.destroy(inf_id)
    assert ok, msg
    assert openstack.servers == {}
    assert _ids(openstack) == before  # networks, subnets, routers, ports, groups, IPs


def test_existing_network_from_the_template(im_server, openstack) -> None:
    before = _ids(openstack)
    client = IMClient.init_client(im_server.url, _auth(openstack))
    ok, inf_id = client.create(EXISTING.replace("IMAGE", openstack.image_id("cirros")), "yaml")
    assert ok, inf_id
    net = openstack.neutron
    # nothing but the security group and the floating IP was made
    made = {k: v - before[k] for k, v in _ids(openstack).items()}
    assert len(made["networks"]) == len(made["subnets"]) == len(made["routers"]) == 0
    assert len(made["security_groups"]) == 1 and len(made["floatingips"]) == 1
    (sid,) = openstack.servers
    (port,) = [p for p in net.ports.values() if p["device_id"] == sid]
    assert port["network_id"] == net.private  # the existing network named in the template
    ok, outputs = client.get_infra_property(inf_id, "outputs")
    assert outputs["private"].startswith("10.0.0.")
    assert outputs["ip"] == next(iter(net.floatingips.values()))["floating_ip_address"]

    ok, msg = client.destroy(inf_id)
    assert ok, msg
    assert _ids(openstack) == before  # the named network stays, what we made is gone


def test_unknown_network_is_a_4xx_naming_it(im_server, openstack) -> None:
    client = IMClient.init_client(im_server.url, _auth(openstack))
    tosca = EXISTING.replace("IMAGE", openstack.image_id("cirros")).replace(
        "network_name: private", "network_name: no-such-net"
    )
    r = httpx.post(
        f"{im_server.url}/infrastructures",
        content=tosca,
        headers={"Authorization": client.rest_auth_data, "Content-Type": "text/yaml"},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert "no-such-net" in r.text
    assert openstack.servers == {}


def test_failed_create_releases_the_floating_ip(im_server, openstack) -> None:
    before = _ids(openstack)
    client = IMClient.init_client(im_server.url, _auth(openstack))
    # the project may hold 2 floating IPs: the third VM's is refused
    ok, msg = client.create(_public(openstack, 3), "yaml")
    assert not ok
    assert "Quota exceeded for resources: ['floatingip']" in msg
    assert openstack.servers == {}
    assert _ids(openstack) == before  # the two floating IPs made first were released


def test_reconciler_removes_orphan_networking(tmp_path: Path, sqlite_url: str, openstack) -> None:
    site = SiteConfig(
        type="openstack",
        endpoint=openstack.url,
        credentials={"username": "demo", "password": "secret", "tenant": "demo"},
    )
    server = fx.ImServer(fx.im_settings(tmp_path, sqlite_url, sites={"ost": site})).start()
    try:
        before = _ids(openstack)
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=_public(openstack, 1),
            headers={
                "Authorization": "type = InfrastructureManager; username = una; password = pw"
                "\\nid = ost; type = OpenStack",
                "Content-Type": "text/yaml",
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        kept = _ids(openstack)
        # what a crash could leave of an infrastructure the database never kept: a network
        # routed outside, and a floating IP
        net = openstack.neutron
        tag = f"hdc-infrastructure-id={uuid.uuid4()}"
        with net.lock:
            orphan = net._network("orphan")
            orphan["description"] = tag
            sub = net._subnet(orphan["id"], "orphan", "172.16.0.0/24", desc=tag)
            router = net._router("orphan", net.external, desc=tag)
            net._add_interface(router, sub)
        status, _ = net.handle(
            "POST",
            "/v2.0/floatingips",
            {},
            {"floatingip": {"floating_network_id": net.external, "description": tag}},
        )
        assert status == 201
        removed = server.parts["reconciler"].run_once()
        assert len(removed) == 4
        assert _ids(openstack) == kept  # the live infrastructure's resources are untouched
        assert server.parts["reconciler"].run_once() == []
        assert before != kept
    finally:
        server.stop()
