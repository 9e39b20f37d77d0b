"""EC2 networking for an infrastructure: its own VPC (or an existing one), a security group
with the template's ports open, and an elastic IP per public VM.

Made per infrastructure unless the template or the site names an existing network (a
`subnet-…` or `vpc-…` id): a VPC with one subnet, an internet gateway attached and the
default route to it in the VPC's main route table (what a public address needs to be
reached). Every resource is tagged in its create call (`TagSpecification`), elastic IPs
also with their VM's token, so a retry finds what an earlier attempt made and the
reconciler finds what a crash left. Deleting goes in dependency order and waits (bounded)
while AWS still holds the terminated instances' interfaces (`DependencyViolation`).
"""

from __future__ import annotations

import time
from typing import Any

from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NetworkSubnet
from libcloud.utils.xml import findall, findtext

from hdc_im.drivers.base import TAG_INFRA, TAG_TOKEN, CloudError, Recorder, Tagged, VmRequest
from hdc_im.topology import NodeSpec

DEFAULT_CIDR = "10.0.0.0/16"
# the order shared resources can be removed in (each kind may depend on the ones before)
RELEASE_ORDER = ("elastic_ip", "security_group", "subnet", "internet_gateway", "vpc")
_LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")


def _tag_spec(resource_type: str, tags: dict[str, str], n: int = 1) -> dict[str, str]:
    params = {f"TagSpecification.{n}.ResourceType": resource_type}
    for i, (k, v) in enumerate(tags.items(), start=1):
        params[f"TagSpecification.{n}.Tag.{i}.Key"] = k
        params[f"TagSpecification.{n}.Tag.{i}.Value"] = v
    return params


def _filters(filters: dict[str, str | list[str]]) -> dict[str, str]:
    params = {}
    for i, (name, values) in enumerate(filters.items(), start=1):
        params[f"Filter.{i}.Name"] = name
        for j, v in enumerate([values] if isinstance(values, str) else values, start=1):
            params[f"Filter.{i}.Value.{j}"] = v
    return params


def _text(el: Any, path: str) -> str:
    return findtext(element=el, xpath=path, namespace=NAMESPACE) or ""


def _tags(el: Any) -> dict[str, str]:
    return {
        _text(t, "key"): _text(t, "value")
        for t in findall(element=el, xpath="tagSet/item", namespace=NAMESPACE)
    }


class Ec2Network:
    def __init__(self, conn: Any, network: str = "", cidr: str = "", retry_s: float = 300.0):
        self.conn = conn  # libcloud's EC2NodeDriver (signed connection to the region)
        self.network = network
        self.cidr = cidr or DEFAULT_CIDR
        self.retry_s = retry_s  # AWS keeps a terminated instance's interface for a while

    # -- the API ---------------------------------------------------------------------------

    def _q(self, action: str, params: dict[str, str] | None = None, gone_ok: bool = False) -> Any:
        try:
            return self.conn.connection.request(
                self.conn.path, params={"Action": action, **(params or {})}
            ).object
        except Exception as exc:  # libcloud raises the EC2 error as "Code: message"
            msg = str(exc) or f"HTTP {getattr(exc, 'code', '?')} from EC2 ({action})"
            if gone_ok and ".NotFound" in msg:
                return None
            raise CloudError(
                msg, bad_input=any(c in msg for c in ("InvalidSubnetID", "InvalidVpcID"))
            ) from None

    def _items(self, action: str, path: str, filters: dict[str, Any]) -> list[Any]:
        res = self._q(action, _filters(filters))
        return findall(element=res, xpath=path, namespace=NAMESPACE)

    def _retrying(self, action: str, params: dict[str, str]) -> None:
        """A delete AWS refuses while dependents are still going away: retried, bounded."""
        deadline = time.monotonic() + self.retry_s
        delay = 1.0
        while True:
            try:
                self._q(action, params, gone_ok=True)
                return
            except CloudError as exc:
                if "DependencyViolation" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    # -- preparing -------------------------------------------------------------------------

    def _resolve(self, ref: str) -> tuple[str, str]:
        """(vpc id, subnet id) of an existing subnet or VPC id."""
        if ref.startswith("vpc-"):
            subnets = self._items("DescribeSubnets", "subnetSet/item", {"vpc-id": ref})
            if not subnets:
                raise CloudError(f"VPC {ref} does not exist or has no subnet", bad_input=True)
            first = sorted(subnets, key=lambda s: _text(s, "subnetId"))[0]
            return ref, _text(first, "subnetId")
        subnets = self._items("DescribeSubnets", "subnetSet/item", {"subnet-id": ref})
        if not subnets:
            raise CloudError(
                f"EC2 network '{ref}' does not exist (name a subnet-… or vpc-… id)",
                bad_input=True,
            )
        return _text(subnets[0], "vpcId"), ref

    def _find(self, action: str, path: str, id_path: str, infrastructure_id: str) -> str:
        found = self._items(action, path, {f"tag:{TAG_INFRA}": infrastructure_id})
        return _text(found[0], id_path) if found else ""

    def prepare(
        self, infrastructure_id: str, nodes: list[NodeSpec], record: Recorder
    ) -> dict[str, Any]:
        refs = {n.network or self.network for n in nodes}
        if len(refs) > 1:
            raise CloudError(
                "the nodes of one EC2 infrastructure share one network; they name "
                + ", ".join(sorted(r or "(a new one)" for r in refs)),
                bad_input=True,
            )
        ref = refs.pop() if refs else ""
        if ref:
            vpc, subnet = self._resolve(ref)
        else:
            cidr = next((n.network_cidr for n in nodes if n.network_cidr), "") or self.cidr
            vpc, subnet = self._make_network(infrastructure_id, cidr, record)
        group = self._security_group(infrastructure_id, vpc, nodes, record)
        return {"vpc_id": vpc, "subnet_id": subnet, "security_group_id": group}

    def _make_network(self, infra: str, cidr: str, record: Recorder) -> tuple[str, str]:
        tags = {TAG_INFRA: infra, "Name": f"hdc-{infra}"}
        name = f"hdc-{infra}"
        record("vpc", name, None)
        vpc = self._find("DescribeVpcs", "vpcSet/item", "vpcId", infra)
        if not vpc:
            res = self._q("CreateVpc", {"CidrBlock": cidr, **_tag_spec("vpc", tags)})
            vpc = _text(res, "vpc/vpcId")
        record("vpc", name, vpc)

        record("internet_gateway", name, None)
        igw = self._find(
            "DescribeInternetGateways", "internetGatewaySet/item", "internetGatewayId", infra
        )
        if not igw:
            res = self._q("CreateInternetGateway", _tag_spec("internet-gateway", tags))
            igw = _text(res, "internetGateway/internetGatewayId")
        record("internet_gateway", name, igw)
        attached = self._items(
            "DescribeInternetGateways",
            "internetGatewaySet/item",
            {"internet-gateway-id": igw, "attachment.vpc-id": vpc},
        )
        if not attached:
            self._q("AttachInternetGateway", {"InternetGatewayId": igw, "VpcId": vpc})
        # the way out (and in, for elastic IPs): the default route of the main route table
        (table,) = self._items(
            "DescribeRouteTables",
            "routeTableSet/item",
            {"vpc-id": vpc, "association.main": "true"},
        )
        routes = {
            _text(r, "destinationCidrBlock")
            for r in findall(element=table, xpath="routeSet/item", namespace=NAMESPACE)
        }
        if "0.0.0.0/0" not in routes:
            self._q(
                "CreateRoute",
                {
                    "RouteTableId": _text(table, "routeTableId"),
                    "DestinationCidrBlock": "0.0.0.0/0",
                    "GatewayId": igw,
                },
            )

        record("subnet", name, None)
        subnet = self._find("DescribeSubnets", "subnetSet/item", "subnetId", infra)
        if not subnet:
            res = self._q(
                "CreateSubnet",
                {"VpcId": vpc, "CidrBlock": cidr, **_tag_spec("subnet", tags)},
            )
            subnet = _text(res, "subnet/subnetId")
        record("subnet", name, subnet)
        return vpc, subnet

    def _security_group(self, infra: str, vpc: str, nodes: list[NodeSpec], record: Recorder) -> str:
        name = f"hdc-{infra}"
        record("security_group", name, None)
        found = self._items(
            "DescribeSecurityGroups", "securityGroupInfo/item", {"group-name": name, "vpc-id": vpc}
        )
        have: set[tuple[int, str, str]] = set()
        if found:
            group = _text(found[0], "groupId")
            for perm in findall(found[0], "ipPermissions/item", NAMESPACE):
                for rng in findall(perm, "ipRanges/item", NAMESPACE):
                    have.add(
                        (
                            int(_text(perm, "fromPort") or 0),
                            _text(perm, "ipProtocol"),
                            _text(rng, "cidrIp"),
                        )
                    )
        else:
            # tagged in the create call itself: a crash can never leave an untagged group
            res = self._q(
                "CreateSecurityGroup",
                {
                    "GroupName": name,
                    "GroupDescription": f"hdc infrastructure {infra}",
                    "VpcId": vpc,
                    **_tag_spec("security-group", {TAG_INFRA: infra}),
                },
            )
            group = _text(res, "groupId")
        # the ports every node asks for (an update may add nodes with new ones)
        wanted = {
            (int(p["port"]), p["protocol"], p["remote_cidr"])
            for n in nodes
            for p in n.ports.values()
        }
        for port, proto, cidr in sorted(wanted - have):
            self._q(
                "AuthorizeSecurityGroupIngress",
                {
                    "GroupId": group,
                    "IpPermissions.1.IpProtocol": proto,
                    "IpPermissions.1.FromPort": str(port),
                    "IpPermissions.1.ToPort": str(port),
                    "IpPermissions.1.IpRanges.1.CidrIp": cidr,
                },
            )
        record("security_group", name, group)
        return group

    @staticmethod
    def boot_args(req: VmRequest) -> dict[str, Any]:
        """libcloud create_node arguments: the subnet and our group (by id, as a VPC wants)."""
        if not req.shared.get("subnet_id"):
            return {}
        return {
            "ex_subnet": EC2NetworkSubnet(req.shared["subnet_id"], None, "available"),
            "ex_security_group_ids": [req.shared["security_group_id"]],
        }

    # -- public addresses ------------------------------------------------------------------

    def _addresses(self, filters: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {
                "ip": _text(a, "publicIp"),
                "allocation": _text(a, "allocationId"),
                "association": _text(a, "associationId"),
                "instance": _text(a, "instanceId"),
                **{f"tag:{k}": v for k, v in _tags(a).items()},
            }
            for a in self._items("DescribeAddresses", "addressesSet/item", filters)
        ]

    def elastic_ip(self, req: VmRequest, instance_id: str) -> str:
        """The VM's elastic IP, allocated and associated unless an earlier attempt did."""
        found = self._addresses({f"tag:{TAG_TOKEN}": req.token})
        if found:
            addr = found[0]
        else:
            record = req.record or (lambda *_: None)
            record("elastic_ip", req.token, None)
            tags = {TAG_INFRA: req.infrastructure_id, TAG_TOKEN: req.token}
            res = self._q("AllocateAddress", {"Domain": "vpc", **_tag_spec("elastic-ip", tags)})
            addr = {"ip": _text(res, "publicIp"), "allocation": _text(res, "allocationId")}
            addr["instance"] = ""
            record("elastic_ip", req.token, addr["allocation"])
        if addr["instance"] != instance_id:
            try:
                self._q(
                    "AssociateAddress",
                    {"AllocationId": addr["allocation"], "InstanceId": instance_id},
                )
            except CloudError:
                # not left allocated for nothing (it would bill): the failure is reported
                self._release(addr)
                raise
        return addr["ip"]

    def _release(self, addr: dict[str, str]) -> None:
        if addr.get("association"):
            self._q("DisassociateAddress", {"AssociationId": addr["association"]}, gone_ok=True)
        self._q("ReleaseAddress", {"AllocationId": addr["allocation"]}, gone_ok=True)

    def release_vm(self, token: str) -> None:
        for addr in self._addresses({f"tag:{TAG_TOKEN}": token}):
            self._release(addr)

    # -- clean-up --------------------------------------------------------------------------

    def _wait_instances_gone(self, infra: str) -> None:
        """Security groups and subnets are held until the instances in them have terminated."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while self._items(
            "DescribeInstances",
            "reservationSet/item/instancesSet/item",
            {f"tag:{TAG_INFRA}": infra, "instance-state-name": list(_LIVE_STATES)},
        ):
            if time.monotonic() > deadline:
                return  # the deletes below report what still holds them
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _tagged(self, filters: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
        """(kind, id, tags) of every network resource matching the tag filter."""
        out = []
        for kind, action, path, id_path in (
            ("vpc", "DescribeVpcs", "vpcSet/item", "vpcId"),
            ("subnet", "DescribeSubnets", "subnetSet/item", "subnetId"),
            (
                "internet_gateway",
                "DescribeInternetGateways",
                "internetGatewaySet/item",
                "internetGatewayId",
            ),
            ("security_group", "DescribeSecurityGroups", "securityGroupInfo/item", "groupId"),
        ):
            for item in self._items(action, path, filters):
                out.append((kind, _text(item, id_path), _tags(item)))
        for addr in self._addresses(filters):
            out.append(
                (
                    "elastic_ip",
                    addr["allocation"],
                    {k[4:]: v for k, v in addr.items() if k.startswith("tag:")},
                )
            )
        return out

    def release(self, infra: str, resources: list[tuple[str, str, str | None]]) -> None:
        ids: dict[str, set[str]] = {k: set() for k in RELEASE_ORDER}
        for kind, rid, _ in self._tagged({f"tag:{TAG_INFRA}": infra}):
            ids[kind].add(rid)
        for kind, _name, pid in resources:
            if kind in ids and pid and not (kind == "security_group" and not pid.startswith("sg-")):
                ids[kind].add(pid)
        if any(ids.values()):
            self._wait_instances_gone(infra)
        for kind in RELEASE_ORDER:
            for rid in sorted(ids[kind]):
                self._remove(kind, rid)

    def _remove(self, kind: str, rid: str) -> None:
        if kind == "elastic_ip":
            for addr in self._addresses({"allocation-id": rid}):
                self._release(addr)
        elif kind == "security_group":
            self._retrying("DeleteSecurityGroup", {"GroupId": rid})
        elif kind == "subnet":
            self._retrying("DeleteSubnet", {"SubnetId": rid})
        elif kind == "internet_gateway":
            for gw in self._items(
                "DescribeInternetGateways", "internetGatewaySet/item", {"internet-gateway-id": rid}
            ):
                for att in findall(element=gw, xpath="attachmentSet/item", namespace=NAMESPACE):
                    self._q(
                        "DetachInternetGateway",
                        {"InternetGatewayId": rid, "VpcId": _text(att, "vpcId")},
                        gone_ok=True,
                    )
            self._retrying("DeleteInternetGateway", {"InternetGatewayId": rid})
        elif kind == "vpc":
            self._retrying("DeleteVpc", {"VpcId": rid})

    def list_tagged(self) -> list[Tagged]:
        return [
            Tagged(kind, rid, tags.get(TAG_INFRA, ""), tags.get(TAG_TOKEN, ""))
            for kind, rid, tags in self._tagged({"tag-key": TAG_INFRA})
        ]

    def remove(self, tagged: Tagged) -> None:
        self._remove(tagged.kind, tagged.provider_id)
