"""The reconciler removes cloud resources tagged for infrastructures or VMs the DB does not
keep (crash leftovers), and leaves alone everything the DB knows."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import httpx
from hdc_im.reconciler import Reconciler
from hdc_im.settings import SiteConfig

_spec = importlib.util.spec_from_file_location("im_fx_rec", Path(__file__).with_name("conftest.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        scalable: {properties: {count: 1}}
        os: {properties: {image: IMAGE}}
"""


def _orphan(moto_url: str, image: str, infra_id: str, token: str) -> str:
    res = fx.ec2_client(moto_url).run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "hdc-infrastructure-id", "Value": infra_id},
                    {"Key": "hdc-vm-token", "Value": token},
                ],
            }
        ],
    )
    return res["Instances"][0]["InstanceId"]


def _orphan_network(moto_url: str, infra_id: str) -> set[str]:
    """What a crash in the middle of preparing an EC2 infrastructure can leave."""
    ec2 = fx.ec2_client(moto_url)

    def spec(kind: str) -> list[dict]:
        return [
            {"ResourceType": kind, "Tags": [{"Key": "hdc-infrastructure-id", "Value": infra_id}]}
        ]

    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16", TagSpecifications=spec("vpc"))["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway(TagSpecifications=spec("internet-gateway"))[
        "InternetGateway"
    ]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    subnet = ec2.create_subnet(
        VpcId=vpc, CidrBlock="10.9.0.0/24", TagSpecifications=spec("subnet")
    )["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName=f"hdc-{infra_id}",
        Description="orphan",
        VpcId=vpc,
        TagSpecifications=spec("security-group"),
    )["GroupId"]
    return {vpc, igw, subnet, group}


def _orphan_address(moto_url: str, infra_id: str, token: str) -> str:
    tags = [
        {"Key": "hdc-infrastructure-id", "Value": infra_id},
        {"Key": "hdc-vm-token", "Value": token},
    ]
    return fx.ec2_client(moto_url).allocate_address(
        Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}]
    )["AllocationId"]


def _tagged_ids(moto_url: str, infra_id: str) -> set[str]:
    ec2 = fx.ec2_client(moto_url)
    f = [{"Name": "tag:hdc-infrastructure-id", "Values": [infra_id]}]
    return (
        {v["VpcId"] for v in ec2.describe_vpcs(Filters=f)["Vpcs"]}
        | {s["SubnetId"] for s in ec2.describe_subnets(Filters=f)["Subnets"]}
        | {g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]}
        | {a["AllocationId"] for a in ec2.describe_addresses(Filters=f)["Addresses"]}
        | {
            g["InternetGatewayId"]
            for g in ec2.describe_internet_gateways(Filters=f)["InternetGateways"]
        }
    )


def test_reconciler_removes_only_orphans(tmp_path: Path, sqlite_url: str, moto_url: str) -> None:
    site = SiteConfig(
        type="ec2", endpoint=moto_url, credentials={"username": "testing", "password": "testing"}
    )
    server = fx.ImServer(fx.im_settings(tmp_path, sqlite_url, sites={"aws-site": site})).start()
    try:
        image = fx.moto_image(moto_url)
        headers = {
            "Authorization": "type = InfrastructureManager; username = jo; password = pw"
            "\\nid = aws-site; type = EC2",
            "Content-Type": "text/yaml",
        }
        r = httpx.post(
            f"{server.url}/infrastructures",
            content=TOSCA.replace("IMAGE", image),
            headers=headers,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        kept_infra = r.headers["InfID"]
        (kept_vm,) = fx.live_instances(moto_url, kept_infra)

        gone_infra = str(uuid.uuid4())
        unknown_infra = _orphan(moto_url, image, gone_infra, uuid.uuid4().hex)
        unknown_token = _orphan(moto_url, image, kept_infra, uuid.uuid4().hex)
        network = _orphan_network(moto_url, gone_infra)
        stray_ip = _orphan_address(moto_url, kept_infra, uuid.uuid4().hex)
        kept_network = _tagged_ids(moto_url, kept_infra)
        reconciler: Reconciler = server.parts["reconciler"]
        removed = reconciler.run_once()
        # (other tests' leftovers in this session's moto would go too: hence <=)
        assert {unknown_infra, unknown_token, stray_ip, *network} <= set(removed)
        assert kept_vm not in removed
        assert set(fx.live_instances(moto_url, kept_infra)) == {kept_vm}
        assert unknown_infra not in fx.live_instances(moto_url)
        assert _tagged_ids(moto_url, gone_infra) == set()
        # the live infrastructure keeps its network; only the address of no VM went
        assert _tagged_ids(moto_url, kept_infra) == kept_network - {stray_ip}
        assert reconciler.run_once() == []  # nothing left to do: idempotent
    finally:
        server.stop()
