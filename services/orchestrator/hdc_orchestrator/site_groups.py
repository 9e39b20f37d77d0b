"""Templates spread over several sites (e.g. a hybrid cluster joined by the vRouter).

A template whose `tosca.policies.indigo.Placement` policies send its virtual machines to two
or more different providers is a *multi-site* template: each policy's targets, and whatever
is hosted on them, form one site's group. Such a deployment has no fail-over (the user named
the sites); its one attempt makes one im infrastructure per group, each on its own site with
the part of the template that belongs there, all at once:

- the deployment is CREATE_COMPLETE when every site's infrastructure is configured; the
  outputs are the union of what each site's im computed (each evaluates the outputs about
  its own nodes);
- when one site fails or times out, every site's infrastructure is deleted and the
  deployment is CREATE_FAILED with that site's reason;
- a vRouter overlay (hybrid templates) is made once for the whole deployment and kept on the
  first site's attempt; every site gets the same router script, whose case for a router's
  host only runs on the VM of that name.

This module holds the pure parts (planning, cutting the template, merging results); the
engine calls them.
"""

from __future__ import annotations

from typing import Any

import yaml

_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class GroupError(ValueError):
    """The placement policies cannot split the template by site (a 400 for the API)."""


def _host(raw: dict[str, Any]) -> str | None:
    for req in raw.get("requirements") or []:
        if isinstance(req, dict) and "host" in req:
            target = req["host"]
            target = target.get("node") if isinstance(target, dict) else target
            if isinstance(target, str):
                return target
    return None


def plan_groups(
    node_templates: dict[str, Any],
    vms: list[str],
    placements: list[tuple[str, str, list[str]]],
) -> list[dict[str, Any]] | None:
    """[{"site", "nodes"}] in the policies' order, or None when one site (or none) is named.

    `vms` are the template's virtual-machine nodes; `placements` each provider policy as
    (policy name, site id, targets).
    """
    sites = {site for _, site, targets in placements if targets}
    if len(sites) < 2:
        return None
    site_of: dict[str, str] = {}
    for policy, site, targets in placements:
        for target in targets:
            if target not in node_templates:
                raise GroupError(f"placement policy '{policy}' targets unknown node '{target}'")
            if site_of.get(target, site) != site:
                raise GroupError(
                    f"node '{target}' is placed on two sites ({site_of[target]} and {site})"
                )
            site_of[target] = site
    unplaced = [n for n in vms if n not in site_of]
    if unplaced:
        raise GroupError(
            f"the template places nodes on {len(sites)} sites ({', '.join(sorted(sites))}); "
            f"every virtual machine must then be the target of a placement policy, and "
            f"{', '.join(sorted(unplaced))} is not"
        )
    for name in node_templates:
        seen = [name]
        node = name
        while node not in site_of:
            host = _host(node_templates.get(node) or {})
            if host is None or host in seen:
                raise GroupError(
                    f"node '{name}' is neither placed by a policy nor hosted on a placed node: "
                    "a template spread over several sites cannot tell where it goes"
                )
            seen.append(host)
            node = host
        for n in seen:
            site_of[n] = site_of[node]
    order = list(dict.fromkeys(site for _, site, targets in placements if targets))
    return [
        {"site": site, "nodes": [n for n in node_templates if site_of[n] == site]} for site in order
    ]


def group_of(groups: list[dict[str, Any]], node: str) -> dict[str, Any] | None:
    return next((g for g in groups if node in g["nodes"]), None)


def _refs(expr: Any) -> set[str]:
    """Node names an output expression reads (get_attribute / get_property)."""
    if isinstance(expr, list):
        return set().union(*(_refs(e) for e in expr)) if expr else set()
    if not isinstance(expr, dict):
        return set()
    out: set[str] = set()
    for fn, args in expr.items():
        if fn in ("get_attribute", "get_property") and isinstance(args, list) and args:
            out.add(str(args[0]))
        else:
            out |= _refs(args)
    return out


def group_tosca(resolved: str, nodes: list[str]) -> str:
    """The part of a resolved template one site deploys: its nodes, the outputs about them;
    placement policies stay with the orchestrator."""
    tpl = yaml.load(resolved, Loader=_YAML)
    topo = tpl["topology_template"]
    keep = set(nodes)
    templates = {}
    for name, raw in topo["node_templates"].items():
        if name not in keep:
            continue
        raw = dict(raw or {})
        if raw.get("requirements"):
            raw["requirements"] = [_cut(r, keep) for r in raw["requirements"]]
        templates[name] = raw
    topo["node_templates"] = templates
    topo.pop("policies", None)
    topo.pop("groups", None)
    outputs = topo.get("outputs") or {}
    topo["outputs"] = {k: v for k, v in outputs.items() if _refs((v or {}).get("value")) <= keep}
    return yaml.dump(tpl, Dumper=_DUMPER, sort_keys=False)


def _cut(req: Any, keep: set[str]) -> Any:
    """A requirement on a node of another site stays, abstract (no `node`), as TOSCA allows
    for requirements the orchestrator fulfils: the types still see it (occurrences)."""
    if not isinstance(req, dict) or len(req) != 1:
        return req
    ((name, spec),) = req.items()
    target = _target(spec)
    if target is None or target in keep:
        return req
    return {name: {k: v for k, v in spec.items() if k != "node"} if isinstance(spec, dict) else {}}


def _target(spec: Any) -> str | None:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("node"), str):
        return spec["node"]
    return None


def merge_outputs(have: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Each site's im evaluates the outputs about its nodes: keep every value some site gave."""
    out = dict(have)
    for key, value in new.items():
        if key not in out or out[key] in (None, "", [], {}):
            out[key] = value
    return out


def overlay_outputs(resolved: str, record: dict[str, Any]) -> dict[str, Any]:
    """Template outputs that read a vRouter node's attributes (`overlay_id`, `site_id`,
    `subnet`), which the vrouter controller knows rather than the im."""
    outputs = (yaml.load(resolved, Loader=_YAML)["topology_template"].get("outputs")) or {}
    sites = record.get("sites") or {}
    found: dict[str, Any] = {}
    for key, spec in outputs.items():
        expr = (spec or {}).get("value")
        if not (isinstance(expr, dict) and list(expr) == ["get_attribute"]):
            continue
        args = expr["get_attribute"]
        if not (isinstance(args, list) and len(args) >= 2 and str(args[0]) in sites):
            continue
        attr = str(args[1])
        if attr == "overlay_id":
            found[key] = record["overlay_id"]
        elif attr in ("site_id", "subnet"):
            found[key] = sites[str(args[0])][attr]
    return found
