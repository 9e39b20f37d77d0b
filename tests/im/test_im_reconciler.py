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

        unknown_infra = _orphan(moto_url, image, str(uuid.uuid4()), uuid.uuid4().hex)
        unknown_token = _orphan(moto_url, image, kept_infra, uuid.uuid4().hex)
        reconciler: Reconciler = server.parts["reconciler"]
        removed = reconciler.run_once()
        # (other tests' leftovers in this session's moto would go too: hence <=)
        assert {unknown_infra, unknown_token} <= set(removed)
        assert kept_vm not in removed
        assert set(fx.live_instances(moto_url, kept_infra)) == {kept_vm}
        assert unknown_infra not in fx.live_instances(moto_url)
        assert reconciler.run_once() == []  # nothing left to do: idempotent
    finally:
        server.stop()
