"""OpenStack networking for an infrastructure, through Neutron v2.0 on libcloud's connection.

What an infrastructure gets: a security group with the template's ports open; its VMs on an
existing network (named in the template or the site's settings) or on a network + subnet
made for it, routed to the external network when a node needs a public address; a floating
IP per public VM, made already associated with the VM's port.

Neutron keeps no tags in a create call, but every resource has a `description` set in the
create call itself, so that is where ours go (`hdc-infrastructure-id=<id>`, plus
`hdc-vm-token=<token>` on floating IPs): a crash can never leave an unmarked resource, and a
retry finds what an earlier attempt made (by description) instead of making it twice.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from libcloud.common.exceptions import BaseHTTPError

from hdc_im.drivers.base import TAG_INFRA, TAG_TOKEN, CloudError, Recorder, Tagged, VmRequest
from hdc_im.topology import NodeSpec

DEFAULT_CIDR = "192.168.10.0/24"
# the order shared resources can be removed in (each kind may depend on the ones before)
RELEASE_ORDER = ("floating_ip", "router", "security_group", "subnet", "network")
_PATHS = {
    "network": "networks",
    "subnet": "subnets",
    "router": "routers",
    "security_group": "security-groups",
    "floating_ip": "floatingips",
}


def infra_tag(infrastructure_id: str) -> str:
    return f"{TAG_INFRA}={infrastructure_id}"


def vm_tag(infrastructure_id: str, token: str) -> str:
    return f"{TAG_INFRA}={infrastructure_id} {TAG_TOKEN}={token}"


def parse_tag(description: str | None) -> dict[str, str]:
    out = {}
    for part in (description or "").split():
        key, sep, value = part.partition("=")
        if sep and key in (TAG_INFRA, TAG_TOKEN):
            out[key] = value
    return out


class Neutron:
    def __init__(
        self,
        compute: Any,
        network: str = "",
        external_network: str = "",
        cidr: str = "",
        retry_s: float = 60.0,
    ) -> None:
        self.compute = compute  # libcloud's OpenStack_2_NodeDriver (holds the connections)
        self.network = network
        self.external_network = external_network
        self.cidr = cidr or DEFAULT_CIDR
        self.retry_s = retry_s  # how long a delete waits for ports that are still going away

    # -- the API ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        data: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        url = f"/v2.0/{path}" + (f"?{urlencode(query, doseq=True)}" if query else "")
        try:
            resp = self.compute.network_connection.request(url, method=method, data=data)
        except BaseHTTPError as exc:
            if missing_ok and exc.code == 404:
                return None
            raise CloudError(f"{exc.code}: {exc.message}", bad_input=exc.code == 400) from None
        except Exception as exc:  # connection refused, auth failures, ...
            raise CloudError(f"OpenStack networking: {exc}") from None
        return resp.object

    def _list(self, kind: str, **query: Any) -> list[dict[str, Any]]:
        path = _PATHS[kind]
        return self._request("GET", path, query=query or None)[path.replace("-", "_")]

    def _delete(self, kind: str, rid: str) -> None:
        """Delete by id; gone already is fine; in use (ports still going away) is retried."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                self._request("DELETE", f"{_PATHS[kind]}/{rid}", missing_ok=True)
                return
            except CloudError as exc:
                if not str(exc).startswith("409") or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _by_name_or_id(self, ref: str) -> dict[str, Any] | None:
        found = self._list("network", name=ref)
        if len(found) > 1:
            raise CloudError(
                f"several OpenStack networks are named '{ref}': name one by id", bad_input=True
            )
        if found:
            return found[0]
        got = self._request("GET", f"networks/{ref}", missing_ok=True)
        return got["network"] if got else None

    # -- preparing -------------------------------------------------------------------------

    def external(self, ref: str = "") -> dict[str, Any]:
        """The external network public addresses come from."""
        ref = ref or self.external_network
        if ref:
            net = self._by_name_or_id(ref)
            if net is None or not net.get("router:external"):
                raise CloudError(
                    f"'{ref}' is not an external network of this OpenStack project",
                    bad_input=True,
                )
            return net
        nets = self._list("network", **{"router:external": "True"})
        if len(nets) > 1:
            nets = [n for n in nets if n.get("is_default")] or nets
        if len(nets) != 1:
            names = ", ".join(sorted(n["name"] for n in nets)) or "none"
            raise CloudError(
                f"cannot choose the external network for public addresses (found: {names}); "
                "name it in the template (a public Network's network_name) or the site's "
                "external_network",
                bad_input=True,
            )
        return nets[0]

    def _ensure(
        self, kind: str, name: str, tag: str, record: Recorder, create: Any, **query: Any
    ) -> dict[str, Any]:
        """Find ours (name + description) or make it; recorded before and after the call."""
        record(kind, name, None)
        found = self._list(kind, name=name, description=tag, **query)
        obj = found[0] if found else create()
        record(kind, name, obj["id"])
        return obj

    def prepare(
        self, infrastructure_id: str, nodes: list[NodeSpec], record: Recorder
    ) -> dict[str, Any]:
        tag = infra_tag(infrastructure_id)
        name = f"hdc-{infrastructure_id}"
        shared: dict[str, Any] = {"networks": {}, "external": {}}
        sg = self._ensure(
            "security_group",
            name,
            tag,
            record,
            lambda: self._request(
                "POST", "security-groups", {"security_group": {"name": name, "description": tag}}
            )["security_group"],
        )
        self._open_ports(sg, nodes)
        shared["security_group"] = {"id": sg["id"], "name": sg["name"]}
        made: dict[str, Any] | None = None
        for node in nodes:
            ref = node.network or self.network
            if ref:
                net = self._by_name_or_id(ref)
                if net is None:
                    raise CloudError(
                        f"OpenStack network '{ref}' (node {node.name}) does not exist",
                        bad_input=True,
                    )
                if net.get("router:external"):
                    raise CloudError(
                        f"'{ref}' is an external network: VMs join a private one "
                        "(a public address is given by a floating IP)",
                        bad_input=True,
                    )
            else:
                if made is None:
                    made = self._make_network(infrastructure_id, nodes, record)
                net = made
            shared["networks"][node.name] = {"id": net["id"], "name": net["name"]}
            if node.public:
                shared["external"][node.name] = self.external(node.public_network)["id"]
        return shared

    def _open_ports(self, sg: dict[str, Any], nodes: list[NodeSpec]) -> None:
        have = {
            (r.get("protocol"), r.get("port_range_min"), r.get("remote_ip_prefix"))
            for r in sg.get("security_group_rules") or []
            if r.get("direction") == "ingress"
        }
        wanted = {
            (p["protocol"], int(p["port"]), p["remote_cidr"])
            for n in nodes
            for p in n.ports.values()
        }
        for proto, port, cidr in sorted(wanted - have):
            self._request(
                "POST",
                "security-group-rules",
                {
                    "security_group_rule": {
                        "security_group_id": sg["id"],
                        "direction": "ingress",
                        "ethertype": "IPv6" if ":" in cidr else "IPv4",
                        "protocol": proto,
                        "port_range_min": port,
                        "port_range_max": port,
                        "remote_ip_prefix": cidr,
                    }
                },
            )

    def _make_network(
        self, infrastructure_id: str, nodes: list[NodeSpec], record: Recorder
    ) -> dict[str, Any]:
        tag = infra_tag(infrastructure_id)
        name = f"hdc-{infrastructure_id}"
        cidr = next((n.network_cidr for n in nodes if n.network_cidr), "") or self.cidr
        net = self._ensure(
            "network",
            name,
            tag,
            record,
            lambda: self._request(
                "POST",
                "networks",
                {"network": {"name": name, "description": tag, "admin_state_up": True}},
            )["network"],
        )
        subnet = self._ensure(
            "subnet",
            name,
            tag,
            record,
            lambda: self._request(
                "POST",
                "subnets",
                {
                    "subnet": {
                        "network_id": net["id"],
                        "name": name,
                        "description": tag,
                        "cidr": cidr,
                        "ip_version": 4,
                    }
                },
            )["subnet"],
            network_id=net["id"],
        )
        publics = [n for n in nodes if n.public and not n.network and not self.network]
        if publics:
            # floating IPs reach only ports whose subnet a router joins to the external network
            ext = self.external(publics[0].public_network)
            router = self._ensure(
                "router",
                name,
                tag,
                record,
                lambda: self._request(
                    "POST",
                    "routers",
                    {
                        "router": {
                            "name": name,
                            "description": tag,
                            "external_gateway_info": {"network_id": ext["id"]},
                        }
                    },
                )["router"],
            )
            joined = self._request(
                "GET",
                "ports",
                query={"device_id": router["id"], "network_id": net["id"]},
            )["ports"]
            if not joined:
                self._request(
                    "PUT",
                    f"routers/{router['id']}/add_router_interface",
                    {"subnet_id": subnet["id"]},
                )
        return net

    def boot_args(self, req: VmRequest) -> dict[str, Any]:
        """libcloud create_node arguments: the VM's network and our security group."""
        from libcloud.compute.drivers.openstack import OpenStackNetwork, OpenStackSecurityGroup

        out: dict[str, Any] = {}
        net = req.shared.get("networks", {}).get(req.node.name)
        if net:
            out["networks"] = [OpenStackNetwork(net["id"], net["name"], None, self.compute)]
        sg = req.shared.get("security_group")
        if sg:
            out["ex_security_groups"] = [
                OpenStackSecurityGroup(sg["id"], None, sg["name"], "", self.compute)
            ]
        return out

    # -- public addresses ------------------------------------------------------------------

    def floating_ip(self, req: VmRequest, server_id: str) -> str | None:
        """The VM's floating IP, made (associated with its port) if it has none yet; None
        while Nova has not yet given the server its port."""
        ext = req.shared.get("external", {}).get(req.node.name)
        if not ext:
            return None
        net = req.shared.get("networks", {}).get(req.node.name, {})
        query = {"device_id": server_id}
        if net.get("id"):
            query["network_id"] = net["id"]
        ports = self._request("GET", "ports", query=query)["ports"]
        if not ports:
            return None
        port = ports[0]["id"]
        tag = vm_tag(req.infrastructure_id, req.token)
        found = self._list("floating_ip", description=tag)
        if found:
            fip = found[0]
            if fip.get("port_id") != port:
                fip = self._request(
                    "PUT", f"floatingips/{fip['id']}", {"floatingip": {"port_id": port}}
                )["floatingip"]
            return fip["floating_ip_address"]
        record = req.record or (lambda *_: None)
        record("floating_ip", req.token, None)
        # one call makes and associates it: a refused association allocates nothing
        fip = self._request(
            "POST",
            "floatingips",
            {"floatingip": {"floating_network_id": ext, "port_id": port, "description": tag}},
        )["floatingip"]
        record("floating_ip", req.token, fip["id"])
        return fip["floating_ip_address"]

    def release_vm(self, infrastructure_id: str, token: str) -> None:
        for fip in self._list("floating_ip", description=vm_tag(infrastructure_id, token)):
            self._delete("floating_ip", fip["id"])

    # -- clean-up --------------------------------------------------------------------------

    def _tagged(self) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
        out = []
        for kind in RELEASE_ORDER:
            for obj in self._list(kind):
                tags = parse_tag(obj.get("description"))
                if TAG_INFRA in tags:
                    out.append((kind, obj, tags))
        return out

    def release(self, infrastructure_id: str, resources: list[tuple[str, str, str | None]]) -> None:
        """Everything tagged for the infrastructure, plus what was recorded, in dependency
        order; idempotent."""
        ids: dict[str, set[str]] = {k: set() for k in RELEASE_ORDER}
        for kind, obj, tags in self._tagged():
            if tags[TAG_INFRA] == infrastructure_id:
                ids[kind].add(obj["id"])
        for kind, _name, pid in resources:
            if kind in ids and pid:
                ids[kind].add(pid)
        for kind in RELEASE_ORDER:
            for rid in sorted(ids[kind]):
                if kind == "router":
                    self._unplug_router(rid)
                self._delete(kind, rid)

    def _unplug_router(self, router_id: str) -> None:
        ports = self._request(
            "GET",
            "ports",
            query={"device_id": router_id, "device_owner": "network:router_interface"},
        )["ports"]
        for port in ports:
            for ip in port.get("fixed_ips") or []:
                self._request(
                    "PUT",
                    f"routers/{router_id}/remove_router_interface",
                    {"subnet_id": ip["subnet_id"]},
                    missing_ok=True,
                )

    def list_tagged(self) -> list[Tagged]:
        return [
            Tagged(kind, obj["id"], tags[TAG_INFRA], tags.get(TAG_TOKEN, ""))
            for kind, obj, tags in self._tagged()
        ]

    def remove(self, tagged: Tagged) -> None:
        if tagged.kind == "router":
            self._unplug_router(tagged.provider_id)
        self._delete(tagged.kind, tagged.provider_id)
