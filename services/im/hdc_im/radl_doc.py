"""RADL (plain or JSON) documents into a Topology, and VMs back into RADL for the IM API."""

from __future__ import annotations

import json
import threading
from typing import Any

from radl import radl_json, radl_parse
from radl.radl import RADL

from hdc_im.topology import NodeSpec, Topology, TopologyError

_local = threading.local()


def _parser() -> radl_parse.RADLParser:
    """One parser per thread: building ply's tables costs milliseconds, parsing microseconds."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = radl_parse.RADLParser(lextab="radl")
    return parser


def parse(text: str, is_json: bool) -> RADL:
    # Never radl's own parse_radl(): it treats a string naming an existing file as a path
    # and reads that file, which a request body must not be able to do.
    try:
        if is_json:
            data = json.loads(text)
            if not isinstance(data, list):
                raise ValueError("a RADL JSON document is a list of objects")
            doc = radl_json.parse_radl(data)
        else:
            doc = _parser().parse(text + "\n")
        if doc is None:
            raise ValueError("empty document")
        doc.check()
        return doc
    except Exception as exc:  # the radl library raises many types; all mean bad input
        raise TopologyError(f"invalid RADL: {exc}") from None


def to_topology(doc: RADL) -> Topology:
    counts: dict[str, int] = {}
    for deploy in doc.deploys:
        counts[deploy.id] = counts.get(deploy.id, 0) + int(deploy.vm_number)
    nodes = []
    public_nets = {n.id for n in doc.networks if n.isPublic()}
    for system in doc.systems:
        if system.name not in counts:
            continue
        ports: dict[str, dict[str, Any]] = {}
        public = False
        for i in range(system.getNumNetworkIfaces()):
            net_id = system.getValue(f"net_interface.{i}.connection")
            if net_id in public_nets:
                public = True
                net = doc.get_network_by_id(net_id)
                for p in net.getOutPorts() or []:
                    ports[f"port_{p.get_remote_port()}"] = {
                        "port": int(p.get_remote_port()),
                        "protocol": p.get_protocol(),
                        "remote_cidr": "0.0.0.0/0",
                    }
        memory = system.getValue("memory.size") or 0
        key = system.getValue("disk.0.os.credentials.public_key")
        nodes.append(
            NodeSpec(
                name=system.name,
                count=counts[system.name],
                image=system.getValue("disk.0.image.url") or "",
                instance_type=system.getValue("instance_type") or "",
                cpus=float(system.getValue("cpu.count") or 0),
                memory_mb=int(memory) // 1_000_000 if memory else 0,
                gpus=int(system.getValue("gpu.count") or 0),
                public=public,
                ports=ports,
                ssh_keys=[key] if key else [],
                username=system.getValue("disk.0.os.credentials.username") or "",
            )
        )
    if not nodes:
        raise TopologyError("invalid RADL: no system is deployed (missing 'deploy' lines)")
    return Topology(nodes=nodes, source="radl")


def system_spec(system: Any) -> NodeSpec:
    """The sizing a RADL system asks for (AlterVM): instance_type, cpu, memory, gpu."""
    memory = system.getValue("memory.size") or 0
    return NodeSpec(
        name=system.name,
        instance_type=system.getValue("instance_type") or "",
        cpus=float(system.getValue("cpu.count") or 0),
        memory_mb=int(memory) // 1_000_000 if memory else 0,
        gpus=int(system.getValue("gpu.count") or 0),
    )


def vm_radl(vm: dict[str, Any], as_json: bool = False) -> str | list[dict[str, Any]]:
    """The RADL the IM returns for one VM: its system with state, addresses and provider."""
    system: dict[str, Any] = {
        "class": "system",
        "id": vm["node"],
        "state": vm["state"],
        "instance_id": vm.get("provider_id") or "",
        "provider.type": vm.get("provider_type", ""),
    }
    if vm.get("image"):
        system["disk.0.image.url"] = vm["image"]
    if vm.get("instance_type"):
        system["instance_type"] = vm["instance_type"]
    if vm.get("cpus"):
        system["cpu.count"] = int(vm["cpus"]) if float(vm["cpus"]).is_integer() else vm["cpus"]
    if vm.get("memory_mb"):
        system["memory.size"] = int(vm["memory_mb"]) * 1_000_000
    nets: list[dict[str, Any]] = []
    idx = 0
    if vm.get("public_ip"):
        nets.append({"class": "network", "id": "public", "outbound": "yes"})
        system[f"net_interface.{idx}.connection"] = "public"
        system[f"net_interface.{idx}.ip"] = vm["public_ip"]
        idx += 1
    if vm.get("private_ip"):
        nets.append({"class": "network", "id": "private"})
        system[f"net_interface.{idx}.connection"] = "private"
        system[f"net_interface.{idx}.ip"] = vm["private_ip"]
    items = [*nets, system]
    if as_json:
        return items
    return str(radl_json.parse_radl(items))
