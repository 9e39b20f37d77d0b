"""FAKE OpenStack Networking (Neutron v2.0): the state and operations behind the fake cloud.

Served by the HTTP server in `openstack_compute.py` under the catalog's `network` endpoint.
Speaks the subset of https://docs.openstack.org/api-ref/network/v2/ that libcloud's OpenStack
driver and hdc's im use: networks, subnets, ports, routers (with `add_router_interface` /
`remove_router_interface`), floating IPs, security groups and their rules. Lists filter on
any attribute given as a query parameter (repeated = any of) and honour `fields`. Errors are
Neutron's `{"NeutronError": {"type", "message", "detail"}}` with its status codes and texts:
409 `NetworkInUse` / `SubnetInUse` / `RouterInUse` / `SecurityGroupInUse` /
`RouterInterfaceInUseByFloatingIP` / `OverQuota` / `IpAddressGenerationFailure`, 404
`ExternalGatewayForFloatingIPNotFound` (no router joins the port's subnet to the external
network), 400 for bad requests. Not a network: addresses are handed out in order, nothing
routes packets.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
import uuid
from typing import Any

Answer = tuple[int, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, type_: str, message: str) -> Answer:
    return status, {"NeutronError": {"type": type_, "message": message, "detail": ""}}


def _matches(obj: dict[str, Any], query: dict[str, list[str]]) -> bool:
    for key, wanted in query.items():
        if key in ("fields", "limit", "marker", "sort_key", "sort_dir"):
            continue
        value = obj.get(key)
        if isinstance(value, bool):
            value = str(value).lower()
            wanted = [w.lower() for w in wanted]
        if key == "fixed_ips":
            continue
        text = "" if value is None else str(value)
        if text not in wanted:
            return False
    return True


def _fields(obj: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
    keep = query.get("fields")
    return {k: v for k, v in obj.items() if k in keep} if keep else dict(obj)


def _nova_fault(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {kind: {"code": status, "message": message}}


class FakeNeutron:
    """One project's view of Neutron, plus the external network every project can see."""

    def __init__(self, project_id: str, *, max_floating_ips: int = 10) -> None:
        self.project_id = project_id
        self.max_floating_ips = max_floating_ips
        self.lock = threading.RLock()
        self.networks: dict[str, dict[str, Any]] = {}
        self.subnets: dict[str, dict[str, Any]] = {}
        self.ports: dict[str, dict[str, Any]] = {}
        self.routers: dict[str, dict[str, Any]] = {}
        self.floatingips: dict[str, dict[str, Any]] = {}
        self.security_groups: dict[str, dict[str, Any]] = {}
        self._used: dict[str, set[str]] = {}  # subnet id -> addresses handed out
        # what a fresh project on a typical cloud has: an external network with a floating
        # range, a private network routed to it, and the default security group
        self.external = self._network("public", external=True, project="admin")["id"]
        self._subnet(self.external, "public-subnet", "203.0.113.0/24", project="admin")
        self.private = self._network("private")["id"]
        priv_subnet = self._subnet(self.private, "private-subnet", "10.0.0.0/24")
        router = self._router("router1", self.external)
        self._add_interface(router, priv_subnet)
        self._security_group("default", "Default security group")

    # -- bookkeeping ---------------------------------------------------------------------

    def _base(self, name: str, project: str | None = None, description: str = "") -> dict:
        now = _now()
        return {
            "id": str(uuid.uuid4()),
            "name": name,
            "tenant_id": project or self.project_id,
            "project_id": project or self.project_id,
            "description": description,
            "tags": [],
            "created_at": now,
            "updated_at": now,
            "revision_number": 1,
        }

    def _network(self, name: str, external: bool = False, project: str | None = None) -> dict:
        net = {
            **self._base(name, project),
            "admin_state_up": True,
            "status": "ACTIVE",
            "subnets": [],
            "shared": False,
            "router:external": external,
            "mtu": 1450,
            "availability_zones": ["nova"],
            "is_default": external,
        }
        self.networks[net["id"]] = net
        return net

    def _subnet(
        self, network_id: str, name: str, cidr: str, project: str | None = None, desc: str = ""
    ) -> dict:
        block = ipaddress.ip_network(cidr, strict=False)
        hosts = list(block.hosts())
        sub = {
            **self._base(name, project, desc),
            "network_id": network_id,
            "cidr": str(block),
            "ip_version": block.version,
            "gateway_ip": str(hosts[0]),
            "allocation_pools": [{"start": str(hosts[1]), "end": str(hosts[-1])}],
            "enable_dhcp": True,
            "dns_nameservers": [],
            "host_routes": [],
            "ipv6_address_mode": None,
            "ipv6_ra_mode": None,
            "subnetpool_id": None,
        }
        self.subnets[sub["id"]] = sub
        self.networks[network_id]["subnets"].append(sub["id"])
        self._used[sub["id"]] = {str(hosts[0])}
        return sub

    def _next_ip(self, subnet: dict[str, Any]) -> str | None:
        used = self._used[subnet["id"]]
        for host in ipaddress.ip_network(subnet["cidr"]).hosts():
            if str(host) not in used:
                used.add(str(host))
                return str(host)
        return None

    def new_port(
        self,
        network_id: str,
        device_id: str = "",
        device_owner: str = "",
        ip: str | None = None,
        subnet_id: str | None = None,
        security_groups: list[str] | None = None,
        project: str | None = None,
    ) -> dict[str, Any] | None:
        """A port with one address on the network's first subnet (or the given one)."""
        net = self.networks[network_id]
        fixed = []
        sid = subnet_id or (net["subnets"][0] if net["subnets"] else None)
        if sid is not None:
            address = ip or self._next_ip(self.subnets[sid])
            if address is None:
                return None
            self._used[sid].add(address)
            fixed = [{"subnet_id": sid, "ip_address": address}]
        port = {
            **self._base("", project),
            "network_id": network_id,
            "admin_state_up": True,
            "status": "ACTIVE",
            "mac_address": "fa:16:3e:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3]),
            "fixed_ips": fixed,
            "device_id": device_id,
            "device_owner": device_owner,
            "security_groups": list(security_groups or []),
            "allowed_address_pairs": [],
            "binding:vnic_type": "normal",
            "port_security_enabled": True,
        }
        self.ports[port["id"]] = port
        return port

    def drop_port(self, port_id: str) -> None:
        """What Neutron does when a port goes: free its addresses, unhook floating IPs."""
        port = self.ports.pop(port_id, None)
        if port is None:
            return
        for ip in port["fixed_ips"]:
            self._used.get(ip["subnet_id"], set()).discard(ip["ip_address"])
        for fip in self.floatingips.values():
            if fip["port_id"] == port_id:
                fip.update(port_id=None, fixed_ip_address=None, router_id=None, status="DOWN")
                fip["port_details"] = None

    def _router(self, name: str, external_id: str | None, desc: str = "") -> dict[str, Any]:
        router = {
            **self._base(name, description=desc),
            "admin_state_up": True,
            "status": "ACTIVE",
            "external_gateway_info": None,
            "routes": [],
            "distributed": False,
            "ha": False,
            "availability_zones": ["nova"],
        }
        self.routers[router["id"]] = router
        if external_id:
            gw = self.new_port(external_id, router["id"], "network:router_gateway", project="")
            router["external_gateway_info"] = {
                "network_id": external_id,
                "enable_snat": True,
                "external_fixed_ips": list(gw["fixed_ips"]) if gw else [],
            }
        return router

    def _add_interface(self, router: dict[str, Any], subnet: dict[str, Any]) -> dict[str, Any]:
        port = self.new_port(
            subnet["network_id"],
            router["id"],
            "network:router_interface",
            ip=subnet["gateway_ip"],
            subnet_id=subnet["id"],
        )
        assert port is not None
        return port

    def _security_group(self, name: str, description: str) -> dict[str, Any]:
        sg = {**self._base(name, description=description), "stateful": True}
        sg["security_group_rules"] = [
            self._rule_view(sg["id"], "egress", None, None, None, None, eth)
            for eth in ("IPv4", "IPv6")
        ]
        self.security_groups[sg["id"]] = sg
        return sg

    def _rule_view(
        self,
        sg_id: str,
        direction: str,
        protocol: str | None,
        pmin: int | None,
        pmax: int | None,
        prefix: str | None,
        ethertype: str = "IPv4",
    ) -> dict[str, Any]:
        return {
            **self._base(""),
            "security_group_id": sg_id,
            "direction": direction,
            "ethertype": ethertype,
            "protocol": protocol,
            "port_range_min": pmin,
            "port_range_max": pmax,
            "remote_ip_prefix": prefix,
            "remote_group_id": None,
        }

    def _visible(self, obj: dict[str, Any]) -> bool:
        return obj["project_id"] in (self.project_id, "") or bool(
            obj.get("router:external") or obj.get("shared")
        )

    def _reachable(self, external_id: str, subnet_id: str) -> str | None:
        """The router joining subnet_id to the external network, if any."""
        for router in self.routers.values():
            gw = router["external_gateway_info"] or {}
            if gw.get("network_id") != external_id:
                continue
            for port in self.ports.values():
                if port["device_id"] == router["id"] and any(
                    ip["subnet_id"] == subnet_id for ip in port["fixed_ips"]
                ):
                    return router["id"]
        return None

    def _fip_view(self, fip: dict[str, Any]) -> dict[str, Any]:
        out = dict(fip)
        port = self.ports.get(fip["port_id"] or "")
        out["port_details"] = (
            {
                "name": port["name"],
                "network_id": port["network_id"],
                "mac_address": port["mac_address"],
                "admin_state_up": True,
                "status": port["status"],
                "device_id": port["device_id"],
                "device_owner": port["device_owner"],
            }
            if port
            else None
        )
        return out

    def server_addresses(self, sid: str) -> dict[str, list[dict[str, Any]]]:
        """Nova's `addresses`: per network name, the fixed and floating addresses."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.lock:
            for port in self.ports.values():
                if port["device_id"] != sid:
                    continue
                name = self.networks[port["network_id"]]["name"]
                mac = port["mac_address"]
                for ip in port["fixed_ips"]:
                    out.setdefault(name, []).append(
                        {
                            "version": 4,
                            "addr": ip["ip_address"],
                            "OS-EXT-IPS:type": "fixed",
                            "OS-EXT-IPS-MAC:mac_addr": mac,
                        }
                    )
                for fip in self.floating_for_port(port["id"]):
                    out.setdefault(name, []).append(
                        {
                            "version": 4,
                            "addr": fip,
                            "OS-EXT-IPS:type": "floating",
                            "OS-EXT-IPS-MAC:mac_addr": mac,
                        }
                    )
        return out

    # -- what Nova asks of Neutron when it boots a server --------------------------------
    # Refusals are Nova's (status, fault body): both Nova fakes answer them as they are.

    def boot_networks(
        self, requested: Any, project_id: str
    ) -> tuple[list[str], tuple[int, dict[str, Any]] | None]:
        """The networks a server boots on (`networks` of its create request), or Nova's refusal."""
        with self.lock:
            if requested in (None, "auto"):
                usable = [
                    n
                    for n in self.networks.values()
                    if not n["router:external"] and (n["project_id"] == project_id or n["shared"])
                ]
                if len(usable) > 1:
                    return [], _nova_fault(
                        409,
                        "conflictingRequest",
                        "Multiple possible networks found, use a Network ID to be more specific.",
                    )
                requested = [{"uuid": n["id"]} for n in usable]
            if requested == "none":
                return [], None
            ids = []
            for item in requested or []:
                nid = str((item or {}).get("uuid"))
                n = self.networks.get(nid)
                if n is None or not self._visible(n):
                    return [], _nova_fault(400, "badRequest", f"Network {nid} could not be found.")
                if not n["subnets"]:
                    return [], _nova_fault(
                        400,
                        "badRequest",
                        f"Network {nid} requires a subnet in order to boot instances on.",
                    )
                ids.append(nid)
            return ids, None

    def boot_security_groups(
        self, requested: Any, project_id: str
    ) -> tuple[list[str], tuple[int, dict[str, Any]] | None]:
        """The security groups (`security_groups` of a create request, by name or id)."""
        ids = []
        with self.lock:
            for item in requested or [{"name": "default"}]:
                name = str((item or {}).get("name"))
                found = [
                    g
                    for g in self.security_groups.values()
                    if g["project_id"] == project_id and name in (g["name"], g["id"])
                ]
                if not found:
                    return [], _nova_fault(
                        400,
                        "badRequest",
                        f"Security group {name} not found for project {project_id}.",
                    )
                if len(found) > 1:
                    return [], _nova_fault(
                        409,
                        "conflictingRequest",
                        f"Multiple security groups found matching '{name}'. Use an ID to be "
                        "more specific.",
                    )
                ids.append(found[0]["id"])
        return ids, None

    def floating_for_port(self, port_id: str) -> list[str]:
        return [
            f["floating_ip_address"] for f in self.floatingips.values() if f["port_id"] == port_id
        ]

    # -- HTTP entry point ----------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "v2.0":
            return _error(404, "HTTPNotFound", "The resource could not be found.")
        parts = parts[1:]
        collections = {
            "networks": (self.networks, self._create_network, self._delete_network),
            "subnets": (self.subnets, self._create_subnet, self._delete_subnet),
            "ports": (self.ports, self._create_port, self._delete_port),
            "routers": (self.routers, self._create_router, self._delete_router),
            "floatingips": (self.floatingips, self._create_fip, self._delete_fip),
            "security-groups": (self.security_groups, self._create_sg, self._delete_sg),
            "security-group-rules": (None, self._create_rule, self._delete_rule),
        }
        if not parts or parts[0] not in collections:
            return _error(404, "HTTPNotFound", "The resource could not be found.")
        store, create, delete = collections[parts[0]]
        singular = {
            "networks": "network",
            "subnets": "subnet",
            "ports": "port",
            "routers": "router",
            "floatingips": "floatingip",
            "security-groups": "security_group",
            "security-group-rules": "security_group_rule",
        }[parts[0]]
        with self.lock:
            if store is None:  # rules live inside their groups
                store = {
                    r["id"]: r
                    for g in self.security_groups.values()
                    for r in g["security_group_rules"]
                }
            if len(parts) == 1 and method == "GET":
                view = self._fip_view if parts[0] == "floatingips" else dict
                items = [
                    _fields(view(o), query)
                    for o in store.values()
                    if self._visible(o) and _matches(view(o), query)
                ]
                return 200, {parts[0].replace("-", "_"): items}
            if len(parts) == 1 and method == "POST":
                data = (body or {}).get(singular)
                if not isinstance(data, dict):
                    return _error(
                        400, "BadRequest", f"Resource body required: '{singular}' is missing."
                    )
                return create(data)
            obj = store.get(parts[1])
            if obj is None or not self._visible(obj):
                kind = {
                    "floatingip": "Floating IP",
                    "security_group": "Security group",
                    "security_group_rule": "Security group rule",
                }.get(singular, singular.capitalize())
                type_ = {
                    "floatingip": "FloatingIPNotFound",
                    "security_group": "SecurityGroupNotFound",
                    "security_group_rule": "SecurityGroupRuleNotFound",
                }.get(singular, f"{singular.capitalize()}NotFound")
                return _error(404, type_, f"{kind} {parts[1]} could not be found.")
            if len(parts) == 2 and method == "GET":
                view = self._fip_view(obj) if parts[0] == "floatingips" else obj
                return 200, {singular: _fields(view, query)}
            if len(parts) == 2 and method == "DELETE":
                return delete(obj)
            if len(parts) == 2 and method == "PUT" and parts[0] == "floatingips":
                return self._update_fip(obj, (body or {}).get("floatingip") or {})
            if len(parts) == 3 and method == "PUT" and parts[0] == "routers":
                if parts[2] == "add_router_interface":
                    return self._router_add(obj, body or {})
                if parts[2] == "remove_router_interface":
                    return self._router_remove(obj, body or {})
            return _error(405, "HTTPMethodNotAllowed", f"{method} is not allowed on {path}")

    # -- networks and subnets ------------------------------------------------------------

    def _create_network(self, data: dict[str, Any]) -> Answer:
        for privileged in ("shared", "router:external", "provider:network_type"):
            if data.get(privileged):
                return _error(
                    403,
                    "PolicyNotAuthorized",
                    f"(rule:create_network and rule:create_network:{privileged}) is disallowed "
                    "by policy",
                )
        net = self._network(str(data.get("name") or ""))
        net["description"] = str(data.get("description") or "")
        return 201, {"network": net}

    def _delete_network(self, net: dict[str, Any]) -> Answer:
        if any(p["network_id"] == net["id"] for p in self.ports.values()):
            return _error(
                409,
                "NetworkInUse",
                f"Unable to complete operation on network {net['id']}. There are one or more "
                "ports still in use on the network.",
            )
        for sid in net["subnets"]:
            self.subnets.pop(sid, None)
            self._used.pop(sid, None)
        del self.networks[net["id"]]
        return 204, None

    def _create_subnet(self, data: dict[str, Any]) -> Answer:
        net = self.networks.get(str(data.get("network_id")))
        if net is None or not self._visible(net):
            return _error(
                404, "NetworkNotFound", f"Network {data.get('network_id')} could not be found."
            )
        try:
            block = ipaddress.ip_network(str(data.get("cidr")), strict=False)
        except ValueError:
            return _error(
                400,
                "HTTPBadRequest",
                f"Invalid input for cidr. Reason: '{data.get('cidr')}' is not a valid IP subnet.",
            )
        if block.num_addresses < 4:
            return _error(400, "BadRequest", f"Invalid CIDR {block} for IP version 4.")
        for sid in net["subnets"]:
            if ipaddress.ip_network(self.subnets[sid]["cidr"]).overlaps(block):
                return _error(
                    400,
                    "BadRequest",
                    f"Invalid input for operation: Requested subnet with cidr: {block} for "
                    f"network: {net['id']} overlaps with another subnet.",
                )
        sub = self._subnet(
            net["id"],
            str(data.get("name") or ""),
            str(block),
            desc=str(data.get("description") or ""),
        )
        return 201, {"subnet": sub}

    def _delete_subnet(self, sub: dict[str, Any]) -> Answer:
        if any(ip["subnet_id"] == sub["id"] for p in self.ports.values() for ip in p["fixed_ips"]):
            return _error(
                409,
                "SubnetInUse",
                f"Unable to complete operation on subnet {sub['id']}: One or more ports have "
                "an IP allocation from this subnet.",
            )
        self.networks[sub["network_id"]]["subnets"].remove(sub["id"])
        del self.subnets[sub["id"]]
        self._used.pop(sub["id"], None)
        return 204, None

    # -- ports ---------------------------------------------------------------------------

    def _create_port(self, data: dict[str, Any]) -> Answer:
        net = self.networks.get(str(data.get("network_id")))
        if net is None or not self._visible(net):
            return _error(
                404, "NetworkNotFound", f"Network {data.get('network_id')} could not be found."
            )
        port = self.new_port(net["id"])
        if port is None:
            return _error(
                409,
                "IpAddressGenerationFailure",
                f"No more IP addresses available on network {net['id']}.",
            )
        port["name"] = str(data.get("name") or "")
        port["description"] = str(data.get("description") or "")
        return 201, {"port": port}

    def _delete_port(self, port: dict[str, Any]) -> Answer:
        if port["device_owner"] == "network:router_interface":
            return _error(
                409,
                "PortInUse",
                f"Port {port['id']} cannot be deleted directly via the port API: has device "
                "owner network:router_interface.",
            )
        self.drop_port(port["id"])
        return 204, None

    # -- routers -------------------------------------------------------------------------

    def _create_router(self, data: dict[str, Any]) -> Answer:
        gw = data.get("external_gateway_info") or {}
        ext = gw.get("network_id")
        if ext is not None:
            net = self.networks.get(str(ext))
            if net is None:
                return _error(404, "NetworkNotFound", f"Network {ext} could not be found.")
            if not net["router:external"]:
                return _error(
                    400,
                    "BadRequest",
                    f"Bad router request: Network {ext} is not an external network.",
                )
        router = self._router(
            str(data.get("name") or ""), ext, desc=str(data.get("description") or "")
        )
        return 201, {"router": router}

    def _delete_router(self, router: dict[str, Any]) -> Answer:
        if any(
            p["device_id"] == router["id"] and p["device_owner"] == "network:router_interface"
            for p in self.ports.values()
        ):
            return _error(409, "RouterInUse", f"Router {router['id']} still has ports")
        if any(f["router_id"] == router["id"] for f in self.floatingips.values()):
            return _error(409, "RouterInUse", f"Router {router['id']} still has ports")
        for pid in [p["id"] for p in self.ports.values() if p["device_id"] == router["id"]]:
            self.drop_port(pid)
        del self.routers[router["id"]]
        return 204, None

    def _interface_answer(self, router: dict[str, Any], port: dict[str, Any]) -> Answer:
        sid = port["fixed_ips"][0]["subnet_id"]
        return 200, {
            "id": router["id"],
            "tenant_id": router["tenant_id"],
            "project_id": router["project_id"],
            "port_id": port["id"],
            "network_id": port["network_id"],
            "subnet_id": sid,
            "subnet_ids": [sid],
        }

    def _router_add(self, router: dict[str, Any], data: dict[str, Any]) -> Answer:
        sub = self.subnets.get(str(data.get("subnet_id")))
        if sub is None:
            return _error(
                404, "SubnetNotFound", f"Subnet {data.get('subnet_id')} could not be found."
            )
        for p in self.ports.values():
            if p["device_id"] == router["id"] and any(
                ip["subnet_id"] == sub["id"] for ip in p["fixed_ips"]
            ):
                return _error(
                    400, "BadRequest", f"Router already has a port on subnet {sub['id']}."
                )
        return self._interface_answer(router, self._add_interface(router, sub))

    def _router_remove(self, router: dict[str, Any], data: dict[str, Any]) -> Answer:
        sid = str(data.get("subnet_id"))
        port = next(
            (
                p
                for p in self.ports.values()
                if p["device_id"] == router["id"]
                and p["device_owner"] == "network:router_interface"
                and any(ip["subnet_id"] == sid for ip in p["fixed_ips"])
            ),
            None,
        )
        if port is None:
            return _error(
                404,
                "RouterInterfaceNotFoundForSubnet",
                f"Router {router['id']} has no interface on subnet {sid}",
            )
        for fip in self.floatingips.values():
            fport = self.ports.get(fip["port_id"] or "")
            if (
                fip["router_id"] == router["id"]
                and fport
                and any(ip["subnet_id"] == sid for ip in fport["fixed_ips"])
            ):
                return _error(
                    409,
                    "RouterInterfaceInUseByFloatingIP",
                    f"Router interface for subnet {sid} on router {router['id']} cannot be "
                    "deleted, as it is required by one or more floating IPs.",
                )
        answer = self._interface_answer(router, port)
        self.drop_port(port["id"])
        return answer

    # -- floating IPs --------------------------------------------------------------------

    def _associate(self, fip: dict[str, Any], port_id: str | None) -> Answer | None:
        if port_id is None:
            fip.update(port_id=None, fixed_ip_address=None, router_id=None, status="DOWN")
            return None
        port = self.ports.get(port_id)
        if port is None:
            return _error(404, "PortNotFound", f"Port {port_id} could not be found.")
        if not port["fixed_ips"]:
            return _error(
                400,
                "BadRequest",
                f"Bad floatingip request: Port {port_id} does not have any IP addresses on it.",
            )
        fixed = port["fixed_ips"][0]
        router = self._reachable(fip["floating_network_id"], fixed["subnet_id"])
        if router is None:
            return _error(
                404,
                "ExternalGatewayForFloatingIPNotFound",
                f"External network {fip['floating_network_id']} is not reachable from subnet "
                f"{fixed['subnet_id']}.  Therefore, cannot associate Port {port_id} with a "
                "Floating IP.",
            )
        for other in self.floatingips.values():
            if other is not fip and other["port_id"] == port_id:
                return _error(
                    409,
                    "FloatingIPPortAlreadyAssociated",
                    f"Cannot associate floating IP {fip['floating_ip_address']} ({fip['id']}) "
                    f"with port {port_id} using fixed IP {fixed['ip_address']}, as that fixed "
                    f"IP already has a floating IP on external network "
                    f"{fip['floating_network_id']}.",
                )
        fip.update(
            port_id=port_id,
            fixed_ip_address=fixed["ip_address"],
            router_id=router,
            status="ACTIVE",
        )
        return None

    def _create_fip(self, data: dict[str, Any]) -> Answer:
        ext = data.get("floating_network_id")
        if not ext:
            return _error(
                400,
                "HTTPBadRequest",
                "Failed to parse request. Required attribute 'floating_network_id' not specified",
            )
        net = self.networks.get(str(ext))
        if net is None:
            return _error(404, "NetworkNotFound", f"Network {ext} could not be found.")
        if not net["router:external"]:
            return _error(
                400,
                "BadRequest",
                f"Bad floatingip request: Network {ext} is not a valid external network.",
            )
        mine = [f for f in self.floatingips.values() if f["project_id"] == self.project_id]
        if len(mine) >= self.max_floating_ips:
            return _error(409, "OverQuota", "Quota exceeded for resources: ['floatingip'].")
        sub = self.subnets[net["subnets"][0]]
        address = self._next_ip(sub)
        if address is None:
            return _error(
                409,
                "IpAddressGenerationFailure",
                f"No more IP addresses available on network {ext}.",
            )
        fip = {
            **self._base("", description=str(data.get("description") or "")),
            "floating_network_id": net["id"],
            "floating_ip_address": address,
            "port_id": None,
            "fixed_ip_address": None,
            "router_id": None,
            "status": "DOWN",
            "qos_policy_id": None,
            "port_forwardings": [],
        }
        fip.pop("name")
        problem = self._associate(fip, data.get("port_id"))
        if problem is not None:  # nothing is allocated when the association is refused
            self._used[sub["id"]].discard(address)
            return problem
        self.floatingips[fip["id"]] = fip
        return 201, {"floatingip": self._fip_view(fip)}

    def _update_fip(self, fip: dict[str, Any], data: dict[str, Any]) -> Answer:
        if "port_id" in data:
            problem = self._associate(fip, data["port_id"])
            if problem is not None:
                return problem
        if "description" in data:
            fip["description"] = str(data["description"] or "")
        fip["updated_at"] = _now()
        return 200, {"floatingip": self._fip_view(fip)}

    def _delete_fip(self, fip: dict[str, Any]) -> Answer:
        net = self.networks.get(fip["floating_network_id"])
        if net and net["subnets"]:
            self._used[net["subnets"][0]].discard(fip["floating_ip_address"])
        del self.floatingips[fip["id"]]
        return 204, None

    # -- security groups -----------------------------------------------------------------

    def _create_sg(self, data: dict[str, Any]) -> Answer:
        name = str(data.get("name") or "")
        if name == "default":
            return _error(
                409,
                "SecurityGroupDefaultAlreadyExists",
                "Default security group already exists.",
            )
        sg = self._security_group(name, str(data.get("description") or ""))
        return 201, {"security_group": sg}

    def _delete_sg(self, sg: dict[str, Any]) -> Answer:
        if sg["name"] == "default":
            return _error(
                409,
                "SecurityGroupCannotRemoveDefault",
                "Insufficient rights for removing default security group.",
            )
        if any(sg["id"] in p["security_groups"] for p in self.ports.values()):
            return _error(409, "SecurityGroupInUse", f"Security Group {sg['id']} in use.")
        del self.security_groups[sg["id"]]
        return 204, None

    def _create_rule(self, data: dict[str, Any]) -> Answer:
        sg = self.security_groups.get(str(data.get("security_group_id")))
        if sg is None:
            return _error(
                404,
                "SecurityGroupNotFound",
                f"Security group {data.get('security_group_id')} does not exist",
            )
        direction = data.get("direction")
        if direction not in ("ingress", "egress"):
            return _error(
                400,
                "HTTPBadRequest",
                f"Invalid input for direction. Reason: {direction} is not in valid_values.",
            )
        pmin, pmax = data.get("port_range_min"), data.get("port_range_max")
        if pmin is not None and pmax is not None and int(pmin) > int(pmax):
            return _error(
                400,
                "SecurityGroupInvalidPortRange",
                "For TCP/UDP protocols, port_range_min must be <= port_range_max",
            )
        rule = self._rule_view(
            sg["id"],
            direction,
            data.get("protocol"),
            None if pmin is None else int(pmin),
            None if pmax is None else int(pmax),
            data.get("remote_ip_prefix"),
            str(data.get("ethertype") or "IPv4"),
        )
        for r in sg["security_group_rules"]:
            same = ("direction", "protocol", "port_range_min", "port_range_max", "remote_ip_prefix")
            if all(r[k] == rule[k] for k in same) and r["ethertype"] == rule["ethertype"]:
                return _error(
                    409,
                    "SecurityGroupRuleExists",
                    f"Security group rule already exists. Rule id is {r['id']}.",
                )
        sg["security_group_rules"].append(rule)
        return 201, {"security_group_rule": rule}

    def _delete_rule(self, rule: dict[str, Any]) -> Answer:
        sg = self.security_groups[rule["security_group_id"]]
        sg["security_group_rules"] = [
            r for r in sg["security_group_rules"] if r["id"] != rule["id"]
        ]
        return 204, None

    def project_resources(self) -> dict[str, list[dict[str, Any]]]:
        """What this project owns (tests check that nothing of an infrastructure is left)."""
        with self.lock:
            mine = lambda store: [  # noqa: E731
                o for o in store.values() if o["project_id"] == self.project_id
            ]
            return {
                "networks": mine(self.networks),
                "subnets": mine(self.subnets),
                "routers": mine(self.routers),
                "floatingips": mine(self.floatingips),
                "security_groups": mine(self.security_groups),
                "ports": mine(self.ports),
            }
