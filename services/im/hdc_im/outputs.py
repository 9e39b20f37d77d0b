"""TOSCA output values evaluated against what was made (the TOSCA functions the IM supports)."""

from __future__ import annotations

from typing import Any

from hdc_im.secrets import redact
from hdc_im.topology import Topology


def _attribute(node: str, attr: str, index: Any, vms: list[dict[str, Any]]) -> Any:
    mine = sorted((v for v in vms if v["node"] == node), key=lambda v: v["index"])
    if attr in ("public_address", "public_ip"):
        values: list[Any] = [v.get("public_ip") for v in mine]
    elif attr in ("private_address", "private_ip", "ip_address"):
        values = [v.get("private_ip") for v in mine]
    elif attr == "endpoint":
        values = [v.get("ports", {}).get("url") for v in mine]
    elif attr == "tosca_id":
        values = [v.get("provider_id") for v in mine]
    elif attr == "tosca_name":
        values = [node for _ in mine]
    elif attr == "state":
        values = [v.get("state") for v in mine]
    elif attr == "ctxt_log":
        values = ["".join(v.get("contmsg", "") for v in mine)]
    else:
        values = [v.get("ports", {}).get(attr) for v in mine]
    if index is not None:
        try:
            return values[int(index)]
        except (IndexError, ValueError):
            return None
    if attr in ("public_address", "private_address") and len(values) == 1:
        return values[0]
    return values if len(values) != 1 else values[0]


def evaluate(expr: Any, topo: Topology, vms: list[dict[str, Any]]) -> Any:
    if isinstance(expr, list):
        return [evaluate(e, topo, vms) for e in expr]
    if not isinstance(expr, dict):
        return expr
    if len(expr) == 1:
        ((fn, args),) = expr.items()
        if fn == "get_input":
            name = args[0] if isinstance(args, list) else args
            return topo.inputs.get(name)
        if fn == "get_attribute" and isinstance(args, list) and len(args) >= 2:
            return _attribute(str(args[0]), str(args[1]), args[2] if len(args) > 2 else None, vms)
        if fn == "get_property" and isinstance(args, list) and len(args) >= 2:
            return topo.properties.get(str(args[0]), {}).get(str(args[-1]))
        if fn == "concat" and isinstance(args, list):
            return "".join("" if (v := evaluate(a, topo, vms)) is None else str(v) for a in args)
        if fn == "join" and isinstance(args, list) and args:
            items = evaluate(args[0], topo, vms) or []
            sep = args[1] if len(args) > 1 else ""
            return sep.join(str(i) for i in items)
    return {k: evaluate(v, topo, vms) for k, v in expr.items()}


def compute(topo: Topology, vms: list[dict[str, Any]]) -> dict[str, Any]:
    # Outputs are returned to users: never a private key or a password in them.
    return redact({name: evaluate(expr, topo, vms) for name, expr in topo.outputs.items()})
