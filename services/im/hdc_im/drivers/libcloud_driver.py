"""IaaS sites through Apache Libcloud: EC2, OpenStack, the dummy provider, any other by name."""

from __future__ import annotations

import base64
import re
import threading
import uuid
from typing import Any
from urllib.parse import urlparse

from libcloud.common.exceptions import BaseHTTPError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.dummy import DummyNodeDriver
from libcloud.compute.drivers.ec2 import NAMESPACE
from libcloud.compute.providers import Provider, get_driver
from libcloud.compute.types import NodeState
from libcloud.utils.xml import findtext

from hdc_im.drivers.base import (
    TAG_INFRA,
    TAG_NODE,
    TAG_TOKEN,
    CloudError,
    Driver,
    Tagged,
    VmRequest,
    VmStatus,
)
from hdc_im.drivers.ec2_network import Ec2Network
from hdc_im.drivers.neutron import Neutron
from hdc_im.topology import NodeSpec

_STATES = {
    NodeState.RUNNING: "running",
    NodeState.PENDING: "pending",
    NodeState.STARTING: "pending",
    NodeState.REBOOTING: "running",
    NodeState.STOPPED: "stopped",
    NodeState.STOPPING: "stopped",
    NodeState.SUSPENDED: "off",
    NodeState.PAUSED: "off",
    NodeState.TERMINATED: "deleted",
    NodeState.ERROR: "failed",
    NodeState.UNKNOWN: "unknown",
}
_GONE = {NodeState.TERMINATED}
# Error codes a cloud uses for "this input does not exist" (a 4xx for the API caller).
_BAD_INPUT_MARKERS = (
    "InvalidAMIID",
    "InvalidParameterValue",
    "Invalid image",
    "Image not found",
    "InvalidInstanceType",
    "Flavor",
    "itemNotFound",
)


class TaggedDummyDriver(DummyNodeDriver):
    """libcloud's dummy provider with unique node ids and tags kept on the node.

    The stock dummy numbers nodes by list length, so ids repeat after a delete; a load test
    that creates and deletes thousands of nodes needs them unique.
    """

    def __init__(self, creds: Any = 0) -> None:
        super().__init__(creds)
        self.nl = []
        self._lock = threading.Lock()
        self._seq = 0
        # id -> node and token -> nodes (in creation order): a lookup must not scan every
        # node of a load test's thousands
        self._by_id: dict[str, Node] = {}
        self._by_token: dict[str, list[Node]] = {}

    def create_node(self, name: str, size: Any = None, image: Any = None, **kwargs: Any) -> Node:
        with self._lock:
            self._seq += 1
            n = self._seq
            node = Node(
                id=uuid.uuid4().hex,
                name=name,
                state=NodeState.RUNNING,
                public_ips=[f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"],
                private_ips=[f"192.168.{(n >> 8) & 255}.{n & 255}"],
                driver=self,
                size=size,
                image=image,
                extra={"tags": dict(kwargs.get("ex_metadata") or {})},
            )
            self.nl.append(node)
            self._by_id[node.id] = node
            token = node.extra["tags"].get(TAG_TOKEN)
            if token is not None:
                self._by_token.setdefault(token, []).append(node)
            return node

    def node_by_id(self, node_id: str) -> Node | None:
        with self._lock:
            return self._by_id.get(node_id)

    def nodes_by_token(self, token: str) -> list[Node]:
        with self._lock:
            return list(self._by_token.get(token, ()))

    def list_nodes(self) -> list[Node]:
        with self._lock:
            return list(self.nl)

    def destroy_node(self, node: Node) -> bool:
        with self._lock:
            self.nl = [n for n in self.nl if n.id != node.id]
            gone = self._by_id.pop(node.id, None)
            if gone is not None:
                token = gone.extra["tags"].get(TAG_TOKEN)
                same = [n for n in self._by_token.get(token, ()) if n.id != node.id]
                if same:
                    self._by_token[token] = same
                else:
                    self._by_token.pop(token, None)
        return True

    def start_node(self, node: Node) -> bool:
        node.state = NodeState.RUNNING
        return True

    def stop_node(self, node: Node) -> bool:
        node.state = NodeState.STOPPED
        return True

    def reboot_node(self, node: Node) -> bool:
        node.state = NodeState.RUNNING
        return True


_DUMMIES: dict[str, TaggedDummyDriver] = {}
_DUMMIES_LOCK = threading.Lock()


def dummy_for(site_id: str) -> TaggedDummyDriver:
    """One in-memory dummy cloud per site id, shared by every infrastructure in the process."""
    with _DUMMIES_LOCK:
        return _DUMMIES.setdefault(site_id, TaggedDummyDriver(0))


def _cloud_message(exc: Exception) -> str:
    if isinstance(exc, BaseHTTPError):
        return f"{exc.code}: {exc.message}"
    return str(exc) or exc.__class__.__name__


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except CloudError:
        raise
    except Exception as exc:  # libcloud raises plain Exception subclasses for cloud errors
        msg = _cloud_message(exc)
        raise CloudError(msg, bad_input=any(m in msg for m in _BAD_INPUT_MARKERS)) from None


def _ec2_device(volume: dict[str, Any], i: int) -> str:
    dev = volume.get("device") or f"sd{chr(ord('f') + i)}"
    return dev if dev.startswith("/dev/") else f"/dev/{dev}"


def image_id(url: str) -> str:
    """IM image URLs (`aws://region/ami-1`, `ost://host/uuid`) or a bare id."""
    if "://" in url:
        return urlparse(url).path.strip("/") or urlparse(url).netloc
    return url


class LibcloudDriver(Driver):
    def __init__(
        self,
        kind: str,
        site_id: str,
        endpoint: str = "",
        region: str = "",
        credentials: dict[str, str] | None = None,
        provider: str = "",
        options: dict[str, Any] | None = None,
        default_image: str = "",
        default_instance_type: str = "",
    ) -> None:
        creds = credentials or {}
        self.kind = kind
        self.provider_type = {"ec2": "EC2", "openstack": "OpenStack", "dummy": "Dummy"}.get(
            kind, provider or "LibCloud"
        )
        self.default_image = default_image
        self.default_instance_type = default_instance_type
        # only these hand the user-data to the cloud (create_vm): the others skip making it
        self.wants_user_data = kind in ("ec2", "openstack")
        opts = dict(options or {})
        if kind == "dummy":
            self.conn = dummy_for(site_id)
        elif kind == "ec2":
            url = urlparse(endpoint or creds.get("host", ""))
            if url.hostname:
                opts.setdefault("host", url.hostname)
                opts.setdefault("secure", url.scheme == "https")
                if url.port:
                    opts.setdefault("port", url.port)
            # SigV4: what every AWS region accepts today (and what names the service in the
            # request, which EC2-compatible endpoints route on)
            opts.setdefault("signature_version", "4")
            # hdc's own network settings, not libcloud arguments
            network = str(opts.pop("network", "") or creds.get("network", ""))
            cidr = str(opts.pop("network_cidr", "") or creds.get("network_cidr", ""))
            cls = get_driver(Provider.EC2)
            self.conn = cls(
                creds.get("username", ""),
                creds.get("password", ""),
                region=region or creds.get("region", "us-east-1"),
                **opts,
            )
            self.ec2net = Ec2Network(self.conn, network, cidr)
        elif kind == "openstack":
            # hdc's own network settings, not libcloud arguments
            network = str(opts.pop("network", "") or creds.get("network", ""))
            external = str(opts.pop("external_network", "") or creds.get("external_network", ""))
            cidr = str(opts.pop("network_cidr", "") or creds.get("network_cidr", ""))
            # the 2.x driver: it talks to Neutron (networks, floating IPs) besides Nova
            opts.setdefault("api_version", "2.0")
            cls = get_driver(Provider.OPENSTACK)
            # Sites publish Keystone's v3 URL (what the info agent authenticates at);
            # libcloud appends /v3/auth/tokens itself.
            auth_url = re.sub(r"/v3/?$", "", endpoint or creds.get("host", ""))
            opts.setdefault("ex_force_auth_url", auth_url)
            opts.setdefault("ex_force_auth_version", creds.get("auth_version", "3.x_password"))
            opts.setdefault("ex_tenant_name", creds.get("tenant", ""))
            opts.setdefault("ex_domain_name", creds.get("domain", "Default"))
            if region or creds.get("region"):
                opts.setdefault("ex_force_service_region", region or creds.get("region"))
            self.conn = cls(creds.get("username", ""), creds.get("password", ""), **opts)
            self.neutron = Neutron(self.conn, network, external, cidr)
        else:
            name = provider or creds.get("driver", "")
            if not name:
                raise CloudError("generic libcloud site without a provider name", bad_input=True)
            try:
                cls = get_driver(name.lower())
            except AttributeError:
                raise CloudError(f"unknown libcloud provider '{name}'", bad_input=True) from None
            self.conn = cls(creds.get("username", ""), creds.get("password", ""), **opts)

    # -- helpers -------------------------------------------------------------------------

    def _tags(self, node: Node) -> dict[str, str]:
        extra = node.extra or {}
        return dict(extra.get("tags") or extra.get("metadata") or {})

    def _status(self, node: Node) -> VmStatus:
        return VmStatus(
            provider_id=str(node.id),
            state=_STATES.get(node.state, "unknown"),
            public_ip=(node.public_ips or [None])[0],
            private_ip=(node.private_ips or [None])[0],
            info={"name": node.name},
        )

    def _nodes(self, tag_filter: dict[str, str] | None = None) -> list[Node]:
        if self.kind == "ec2":
            filters: dict[str, Any] = {
                "instance-state-name": ["pending", "running", "stopping", "stopped"]
            }
            for k, v in (tag_filter or {}).items():
                filters[f"tag:{k}"] = v
            return _call(self.conn.list_nodes, ex_filters=filters)
        nodes = [n for n in _call(self.conn.list_nodes) if n.state not in _GONE]
        if tag_filter:
            nodes = [
                n for n in nodes if all(self._tags(n).get(k) == v for k, v in tag_filter.items())
            ]
        return nodes

    def _node(self, provider_id: str) -> Node | None:
        if self.kind == "dummy":
            node = self.conn.node_by_id(provider_id)
            return node if node is not None and node.state not in _GONE else None
        if self.kind == "ec2":
            nodes = _call(self.conn.list_nodes, ex_node_ids=[provider_id]) if provider_id else []
            nodes = [n for n in nodes if n.state not in _GONE]
        else:
            nodes = [n for n in self._nodes() if str(n.id) == provider_id]
        return nodes[0] if nodes else None

    # -- Driver --------------------------------------------------------------------------

    def prepare(self, infrastructure_id: str, nodes: list[NodeSpec], record: Any) -> dict[str, Any]:
        shared: dict[str, Any] = {}
        if self.kind == "openstack":
            vms = [n for n in nodes if n.kind == "vm"]
            return self.neutron.prepare(infrastructure_id, vms, record)
        if self.kind != "ec2":
            return shared
        images = {image_id(n.image or self.default_image) for n in nodes}
        for img in images:
            if not img:
                raise CloudError(
                    "no image given for a node and the site has no default_image", bad_input=True
                )
            try:
                found = _call(self.conn.list_images, ex_image_ids=[img])
            except CloudError as exc:
                raise CloudError(f"image {img} cannot be used: {exc}", bad_input=True) from None
            if not found:
                raise CloudError(
                    f"InvalidAMIID.NotFound: image {img} does not exist", bad_input=True
                )
        shared = self.ec2net.prepare(
            infrastructure_id, [n for n in nodes if n.kind == "vm"], record
        )
        shared["key_pairs"] = {}
        for node in nodes:
            if not node.ssh_keys:
                continue
            key_name = f"hdc-{infrastructure_id}-{node.name}"
            record("key_pair", key_name, None)
            if not _call(self._key_pair_exists, key_name):
                _call(self._import_tagged_key, key_name, node.ssh_keys[0], infrastructure_id)
            record("key_pair", key_name, key_name)
            shared["key_pairs"][node.name] = key_name
        return shared

    def _key_pair_exists(self, name: str) -> bool:
        params = {
            "Action": "DescribeKeyPairs",
            "Filter.1.Name": "key-name",
            "Filter.1.Value.1": name,
        }
        res = self.conn.connection.request(self.conn.path, params=params).object
        return bool(findtext(element=res, xpath="keySet/item/keyName", namespace=NAMESPACE))

    def _import_tagged_key(self, name: str, public_key: str, infrastructure_id: str) -> None:
        params = {
            "Action": "ImportKeyPair",
            "KeyName": name,
            "PublicKeyMaterial": base64.b64encode(public_key.encode()).decode(),
            "TagSpecification.1.ResourceType": "key-pair",
            "TagSpecification.1.Tag.1.Key": TAG_INFRA,
            "TagSpecification.1.Tag.1.Value": infrastructure_id,
        }
        self.conn.connection.request(self.conn.path, params=params)

    def create_vm(self, req: VmRequest) -> VmStatus:
        node = req.node
        tags = {TAG_INFRA: req.infrastructure_id, TAG_TOKEN: req.token, TAG_NODE: node.name}
        name = f"hdc-{req.infrastructure_id[:8]}-{node.name}-{req.index}"
        img = NodeImage(id=image_id(node.image or self.default_image), name=None, driver=self.conn)
        size_id = (
            node.instance_type
            or self.default_instance_type
            or ("t3.micro" if self.kind == "ec2" else "small")
        )
        if self.kind == "openstack":
            # Nova takes a flavor id; templates (and placement) name the flavor.
            size_id = self._flavor_id(size_id)
        size = NodeSize(
            id=size_id,
            name=size_id,
            ram=node.memory_mb,
            disk=0,
            bandwidth=0,
            price=0,
            driver=self.conn,
        )
        kwargs: dict[str, Any] = {"ex_metadata": tags}
        if self.kind == "ec2":
            kwargs["ex_clienttoken"] = req.token
            kwargs["ex_userdata"] = req.user_data
            kwargs.update(Ec2Network.boot_args(req))
            if req.shared.get("key_pairs", {}).get(node.name):
                kwargs["ex_keyname"] = req.shared["key_pairs"][node.name]
            if node.volumes:
                # made with the instance and deleted with it: a volume can never outlive it
                kwargs["ex_blockdevicemappings"] = [
                    {
                        "DeviceName": _ec2_device(v, i),
                        "Ebs": {
                            "VolumeSize": v["size_gb"],
                            "DeleteOnTermination": "true",
                            "VolumeType": "gp3",
                        },
                    }
                    for i, v in enumerate(node.volumes)
                ]
        elif self.kind == "openstack":
            kwargs["ex_userdata"] = req.user_data
            kwargs.update(self.neutron.boot_args(req))
            if node.volumes:
                kwargs["ex_blockdevicemappings"] = [
                    {
                        "source_type": "blank",
                        "destination_type": "volume",
                        "volume_size": v["size_gb"],
                        "delete_on_termination": True,
                        "boot_index": -1,
                    }
                    for v in node.volumes
                ]
        created = _call(self.conn.create_node, name, size, img, **kwargs)
        return self._status(created)

    def _flavor_id(self, name_or_id: str) -> str:
        sizes = _call(self.conn.list_sizes)
        for size in sizes:
            if str(size.id) == name_or_id:
                return name_or_id
        return next((str(s.id) for s in sizes if s.name == name_or_id), name_or_id)

    def finish_vm(self, req: VmRequest, status: VmStatus) -> VmStatus:
        if not req.node.public or self.kind not in ("openstack", "ec2"):
            return status
        if self.kind == "ec2":
            ip = self.ec2net.elastic_ip(req, status.provider_id)
        else:
            ip = self.neutron.floating_ip(req, status.provider_id)
        if ip is None:  # Nova has not plugged the VM into its network yet
            return VmStatus(
                status.provider_id, "pending", None, status.private_ip, info=status.info
            )
        return VmStatus(
            status.provider_id, status.state, ip, status.private_ip, status.ports, status.info
        )

    def find_vm(self, infrastructure_id: str, token: str) -> VmStatus | None:
        if self.kind == "dummy":
            # the dummy cloud's token index: what _nodes({TAG_TOKEN: token}) finds, unscanned
            nodes = [
                n
                for n in self.conn.nodes_by_token(token)
                if n.state not in _GONE and self._tags(n).get(TAG_TOKEN) == token
            ]
            return self._status(nodes[0]) if nodes else None
        nodes = self._nodes({TAG_TOKEN: token})
        return self._status(nodes[0]) if nodes else None

    def vm_status(self, provider_id: str) -> VmStatus | None:
        node = self._node(provider_id)
        return self._status(node) if node else None

    def destroy_vm(self, provider_id: str) -> None:
        node = self._node(provider_id)
        if node is None:
            return
        tags = self._tags(node)
        if self.kind == "openstack" and tags.get(TAG_TOKEN):
            # a floating IP outlives its server's port: release it with the VM
            self.neutron.release_vm(tags.get(TAG_INFRA, ""), tags[TAG_TOKEN])
        elif self.kind == "ec2" and tags.get(TAG_TOKEN):
            # so does an elastic IP its instance (and it bills while allocated)
            self.ec2net.release_vm(tags[TAG_TOKEN])
        _call(self.conn.destroy_node, node)

    def _op(self, provider_id: str, op: str) -> None:
        node = self._node(provider_id)
        if node is None:
            raise CloudError(f"VM {provider_id} does not exist on the cloud")
        fn = getattr(self.conn, f"ex_{op}_node", None) or getattr(self.conn, f"{op}_node")
        _call(fn, node)

    def start_vm(self, provider_id: str) -> None:
        self._op(provider_id, "start")

    def stop_vm(self, provider_id: str) -> None:
        self._op(provider_id, "stop")

    def reboot_vm(self, provider_id: str) -> None:
        node = self._node(provider_id)
        if node is None:
            raise CloudError(f"VM {provider_id} does not exist on the cloud")
        _call(self.conn.reboot_node, node)

    def alter_vm(self, provider_id: str, node: NodeSpec) -> None:
        current = self._node(provider_id)
        if current is None:
            raise CloudError(f"VM {provider_id} does not exist on the cloud")
        if not node.instance_type:
            raise CloudError(
                "resizing needs an instance_type (flavor) in the new description", bad_input=True
            )
        size = NodeSize(
            id=node.instance_type,
            name=node.instance_type,
            ram=node.memory_mb,
            disk=0,
            bandwidth=0,
            price=0,
            driver=self.conn,
        )
        if self.kind == "ec2":
            # EC2 changes the type of a stopped instance only
            was_running = current.state == NodeState.RUNNING
            if was_running:
                _call(self.conn.ex_stop_node, current)
            _call(self.conn.ex_change_node_size, current, size)
            if was_running:
                _call(self.conn.ex_start_node, current)
        elif self.kind == "openstack":
            _call(self.conn.ex_resize, current, size)
            _call(self.conn.ex_confirm_resize, current)
        elif self.kind == "dummy":
            current.size = size
        else:
            raise CloudError(f"{self.provider_type} sites cannot resize a VM", bad_input=True)

    def release(self, infrastructure_id: str, resources: list[tuple[str, str, str | None]]) -> None:
        if self.kind == "openstack":
            self.neutron.release(infrastructure_id, resources)
            return
        if self.kind != "ec2":
            return
        self.ec2net.release(infrastructure_id, resources)
        for kind, name, _pid in resources:
            if kind == "key_pair" and _call(self._key_pair_exists, name):
                _call(
                    self.conn.connection.request,
                    self.conn.path,
                    params={"Action": "DeleteKeyPair", "KeyName": name},
                )

    def list_tagged_for(self, infrastructure_id: str) -> list[Tagged]:
        out = []
        for n in self._nodes({TAG_INFRA: infrastructure_id}):
            tags = self._tags(n)
            out.append(Tagged("vm", str(n.id), infrastructure_id, tags.get(TAG_TOKEN, "")))
        return out

    def list_tagged(self) -> list[Tagged]:
        out = []
        for n in self._nodes():
            tags = self._tags(n)
            if TAG_INFRA in tags:
                out.append(Tagged("vm", str(n.id), tags[TAG_INFRA], tags.get(TAG_TOKEN, "")))
        if self.kind == "ec2":
            out += self.ec2net.list_tagged()
        if self.kind == "openstack":
            out += self.neutron.list_tagged()
        return out

    def remove_tagged(self, tagged: Tagged) -> None:
        if self.kind == "openstack":
            self.neutron.remove(tagged)
        elif self.kind == "ec2":
            self.ec2net.remove(tagged)
        else:
            super().remove_tagged(tagged)
