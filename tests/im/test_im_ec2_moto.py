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

    # the infrastructure's own network: a VPC with a subnet, routed out through a gateway
    tagged = [{"Name": "tag:hdc-infrastructure-id", "Values": [inf_id]}]
    (vpc,) = ec2.describe_vpcs(Filters=tagged)["Vpcs"]
    (subnet,) = ec2.describe_subnets(Filters=tagged)["Subnets"]
    (igw,) = ec2.describe_internet_gateways(Filters=tagged)["InternetGateways"]
    assert subnet["VpcId"] == vpc["VpcId"] and groups[0]["VpcId"] == vpc["VpcId"]
    assert igw["Attachments"][0]["VpcId"] == vpc["VpcId"]
    (main,) = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    assert {"0.0.0.0/0": igw["InternetGatewayId"]}.items() <= {
        r["DestinationCidrBlock"]: r.get("GatewayId") for r in main["Routes"]
    }.items()
    assert {i["SubnetId"] for i in made.values()} == {subnet["SubnetId"]}
    # every public VM has an elastic IP, tagged with its VM's token, and it is the output
    addresses = ec2.describe_addresses(Filters=tagged)["Addresses"]
    assert {a["InstanceId"] for a in addresses} == set(made)
    for a in addresses:
        tags = {t["Key"]: t["Value"] for t in a["Tags"]}
        inst_tags = {t["Key"]: t["Value"] for t in made[a["InstanceId"]]["Tags"]}
        assert tags["hdc-vm-token"] == inst_tags["hdc-vm-token"]
    ok, outputs = client.get_infra_property(inf_id, "outputs")
    assert ok and sorted(outputs["ips"]) == sorted(a["PublicIp"] for a in addresses)

    ok, state = client.get_infra_property(inf_id, "state")
    assert ok and state["state"] == "configured"
    ok, vms = client.getinfo(inf_id)
    ids = {vm_id: radl for vm_id, _, radl in vms}
    assert set(ids) == {"0", "1"}
    assert all(any(pid in radl for pid in made) for radl in ids.values())

    ok, new = client.addresource(inf_id, tosca.replace("count: 2", "count: 3"), "yaml")
    assert ok and new == ["2"]
    assert len(fx.live_instances(moto_url, inf_id)) == 3
    assert len(ec2.describe_addresses(Filters=tagged)["Addresses"]) == 3

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
    # nothing of the infrastructure is left: addresses, network, gateway
    assert ec2.describe_addresses(Filters=tagged)["Addresses"] == []
    assert all(a["PublicIp"] not in outputs["ips"] for a in ec2.describe_addresses()["Addresses"])
    assert ec2.describe_subnets(Filters=tagged)["Subnets"] == []
    assert ec2.describe_internet_gateways(Filters=tagged)["InternetGateways"] == []
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Vpcs"] == []
    assert (
        ec2.describe_security_groups(
            Filters=[{"Name": "tag:hdc-infrastructure-id", "Values": [inf_id]}]
        )["SecurityGroups"]
        == []
    )


PRIVATE = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    node:
      type: tosca.nodes.indigo.Compute
      capabilities:
        os: {properties: {image: "aws://us-east-1/IMAGE"}}
        endpoint: {properties: {network_name: PRIVATE, ports: {web: {protocol: tcp, source: 8080}}}}
  outputs:
    private: {value: {get_attribute: [node, private_address, 0]}}
"""


def test_existing_subnet_named_by_the_site(im_server, moto_url: str) -> None:
    ec2 = fx.ec2_client(moto_url)
    vpc = ec2.create_vpc(CidrBlock="172.31.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="172.31.5.0/24")["Subnet"]["SubnetId"]
    try:
        creds = auth(moto_url)
        creds[1]["network"] = subnet
        client = IMClient.init_client(im_server.url, creds)
        ok, inf_id = client.create(PRIVATE.replace("IMAGE", fx.moto_image(moto_url)), "yaml")
        assert ok, inf_id
        (inst,) = fx.live_instances(moto_url, inf_id).values()
        assert inst["SubnetId"] == subnet and not inst.get("PublicIpAddress")
        tagged = [{"Name": "tag:hdc-infrastructure-id", "Values": [inf_id]}]
        assert ec2.describe_vpcs(Filters=tagged)["Vpcs"] == []  # none made
        (group,) = ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]
        assert group["VpcId"] == vpc and group["IpPermissions"][0]["FromPort"] == 8080
        ok, outputs = client.get_infra_property(inf_id, "outputs")
        assert outputs["private"].startswith("172.31.5.")
        assert ec2.describe_addresses(Filters=tagged)["Addresses"] == []  # private: no EIP

        ok, msg = client.destroy(inf_id)
        assert ok, msg
        assert fx.live_instances(moto_url, inf_id) == {}
        assert ec2.describe_security_groups(Filters=tagged)["SecurityGroups"] == []
        # the site's subnet is not ours to delete
        assert ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"] == vpc
    finally:
        ec2.delete_subnet(SubnetId=subnet)
        ec2.delete_vpc(VpcId=vpc)


def test_unknown_image_is_a_4xx_naming_it(im_server, moto_url: str) -> None:
    client = IMClient.init_client(im_server.url, auth(moto_url))
    ok, msg = client.create(TOSCA.replace("IMAGE", "ami-00000000deadbeef"), "yaml")
    assert not ok
    assert "ami-00000000deadbeef" in msg
    assert fx.live_instances(moto_url) == {} or all(
        i["ImageId"] != "ami-00000000deadbeef" for i in fx.live_instances(moto_url).values()
    )
