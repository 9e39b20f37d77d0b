"""im-client against hdc's im on EC2 (libcloud's EC2 driver, unchanged) served by moto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from imclient import IMClient

_spec = importlib.util.spec_from_file_location(
    "im_fixtures", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    node:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: 2}}
        host: {properties: {instance_type: t3.micro}}
        os:
          properties:
            image: "aws://us-east-1/IMAGE"
            credential: {user: ops, token: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDOi5ZS65ziUQ40gJbf30LWRP1MIwyjPGp/wUxyf3dAI ops"}
        endpoint:
          properties:
            network_name: PUBLIC
            ports: {ssh: {protocol: tcp, source: 22}}
      requirements:
        - local_storage:
            node: data
            relationship:
              type: tosca.relationships.AttachesTo
              properties: {location: /mnt/data, device: sdf}
    data:
      type: tosca.nodes.BlockStorage
      properties: {size: 20 GB}
  outputs:
    ips: {value: {get_attribute: [node, public_address]}}
"""


def auth(moto_url: str) -> list[dict]:
    return [
        {"type": "InfrastructureManager", "username": "carol", "password": "pw"},
        {
            "id": "aws",
            "type": "EC2",
            "username": "testing",
            "password": "testing",
            "host": moto_url,
        },
    ]


def test_im_client_lifecycle_on_ec2_moto(im_server, moto_url: str) -> None:
    client = IMClient.init_client(im_server.url, auth(moto_url))
    tosca = TOSCA.replace("IMAGE", fx.moto_image(moto_url))
    ok, inf_id = client.create(tosca, "yaml")
    assert ok, inf_id

    made = fx.live_instances(moto_url, inf_id)
    assert len(made) == 2
    ec2 = fx.ec2_client(moto_url)
    for inst in made.values():
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["hdc-infrastructure-id"] == inf_id
        assert inst["InstanceType"] == "t3.micro"
        assert inst["KeyName"] == f"hdc-{inf_id}-node"
        data = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf"]
        assert data and data[0]["Ebs"]["DeleteOnTermination"]
        vol = ec2.describe_volumes(VolumeIds=[data[0]["Ebs"]["VolumeId"]])["Volumes"][0]
        assert vol["Size"] == 20
    assert ec2.describe_key_pairs(KeyNames=[f"hdc-{inf_id}-node"])["KeyPairs"]
    groups = fx.ec2_client(moto_url).describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"hdc-{inf_id}"]}]
    )["SecurityGroups"]
    assert groups and groups[0]["IpPermissions"][0]["FromPort"] == 22

    ok, state = client.get_infra_property(inf_id, "state")
    assert ok and state["state"] == "configured"
    ok, vms = client.getinfo(inf_id)
    ids = {vm_id: radl for vm_id, _, radl in vms}
    assert set(ids) == {"0", "1"}
    assert all(any(pid in radl for pid in made) for radl in ids.values())

    ok, new = client.addresource(inf_id, tosca.replace("count: 2", "count: 3"), "yaml")
    assert ok and new == ["2"]
    assert len(fx.live_instances(moto_url, inf_id)) == 3

    ok, radl = client.alter(inf_id, "1", "system node ( instance_type = 'm5.large' )")
    assert ok, radl
    resized = fx.live_instances(moto_url, inf_id)
    assert sorted(i["InstanceType"] for i in resized.values()) == [
        "m5.large",
        "t3.micro",
        "t3.micro",
    ]
    assert all(i["State"]["Name"] == "running" for i in resized.values())

    ok, msg = client.stop_vm(inf_id, "0")
    assert ok, msg
    states = {i["State"]["Name"] for i in fx.live_instances(moto_url, inf_id).values()}
    assert "stopped" in states or "stopping" in states
    ok, msg = client.start_vm(inf_id, "0")
    assert ok, msg

    volume_ids = [m["Ebs"]["VolumeId"] for i in made.values() for m in i["BlockDeviceMappings"]]
    ok, msg = client.destroy(inf_id)
    assert ok, msg
    assert fx.live_instances(moto_url, inf_id) == {}
    left = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": volume_ids}])["Volumes"]
    assert left == []
    keys = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [f"hdc-{inf_id}-node"]}])[
        "KeyPairs"
    ]
    assert keys == []
    groups = fx.ec2_client(moto_url).describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"hdc-{inf_id}"]}]
    )["SecurityGroups"]
    assert groups == []


def test_unknown_image_is_a_4xx_naming_it(im_server, moto_url: str) -> None:
    client = IMClient.init_client(im_server.url, auth(moto_url))
    ok, msg = client.create(TOSCA.replace("IMAGE", "ami-00000000deadbeef"), "yaml")
    assert not ok
    assert "ami-00000000deadbeef" in msg
    assert fx.live_instances(moto_url) == {} or all(
        i["ImageId"] != "ami-00000000deadbeef" for i in fx.live_instances(moto_url).values()
    )
