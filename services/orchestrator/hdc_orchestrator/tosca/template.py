"""Validate a TOSCA template with its parameters, synchronously, before anything is stored.

Every problem becomes a TemplateError whose message names it (a 400 for the API); nothing in
here may raise anything else for bad input.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any

import toscaparser.imports as _tp_imports
import yaml
from toscaparser.common.exception import ExceptionCollector
from toscaparser.elements.scalarunit import ScalarUnit_Size
from toscaparser.tosca_template import ToscaTemplate

from hdc_orchestrator.site_groups import GroupError, plan_groups
from hdc_orchestrator.tosca.functions import FunctionError, resolve
from hdc_orchestrator.tosca.imports import ImportRefused, rewrite_imports
from hdc_orchestrator.tosca.inputs import InputError, check_inputs, is_secret_name

MAX_TEMPLATE_BYTES = 1024 * 1024
COMPUTE = "tosca.nodes.Compute"
DOCKER_RUNTIME = "tosca.nodes.indigo.Container.Runtime.Docker"
SLA_PLACEMENT = "tosca.policies.indigo.SlaPlacement"
PROVIDER_PLACEMENT = "tosca.policies.indigo.Placement"
CONTAINER_APP = "tosca.nodes.Container.Application"
BATCH_APP = "tosca.nodes.indigo.Container.Application.Docker.Chronos"
# Which services can run what a template holds (INDIGO's deployment types, by the service
# types site agents publish): virtual machines need an IaaS cloud; long-running containers a
# container platform (the local site runs them as processes); batch jobs a platform with
# jobs. The im has a driver for each of these.
IAAS_SERVICE_TYPES = ("org.openstack.nova", "openstack", "com.amazonaws.ec2", "ec2", "dummy")
CONTAINER_SERVICE_TYPES = ("eu.indigo-datacloud.marathon", "marathon", "kubernetes", "local")
BATCH_SERVICE_TYPES = ("kubernetes",)

# tosca-parser keeps its error collector in class attributes: one parse at a time.
_PARSE_LOCK = threading.Lock()
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_load_import_uncached = _tp_imports.YAML_LOADER


@functools.lru_cache(maxsize=32)
def _load_types_file(path: str, mtime: float) -> bytes:
    with open(path, encoding="utf-8") as f:
        # Kept pickled: unpickling a fresh copy is several times faster than deepcopy.
        return pickle.dumps(yaml.load(f, Loader=_YAML))


def _load_import(path: str, a_file: bool = True) -> object:
    # tosca-parser re-reads every imported types file on every parse with the pure-Python
    # YAML loader (most of a parse's time). Imports here are only our own local files
    # (see imports.py), so parse each once and hand out copies.
    if a_file and os.path.isfile(path):
        return pickle.loads(_load_types_file(path, os.path.getmtime(path)))
    return _load_import_uncached(path, a_file)


_tp_imports.YAML_LOADER = _load_import


class TemplateError(ValueError):
    pass


@dataclass
class NodeInfo:
    name: str
    type: str
    count: int
    requires: list[str]
    compute: bool
    types: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ValidatedTemplate:
    text: str
    resolved_text: str
    inputs: dict[str, Any]
    nodes: dict[str, NodeInfo]
    requirements: dict[str, Any]
    secret_values: list[str] = field(default_factory=list)


def validate_template(text: str, parameters: dict[str, Any] | None) -> ValidatedTemplate:
    """Validate (memoised: the catalog's templates are submitted again and again, and the
    result depends only on the text and the parameters)."""
    parameters = parameters or {}
    try:
        canonical = json.dumps(parameters, sort_keys=True)
    except (TypeError, ValueError):
        return _validate(text, parameters)
    return _validate_cached(text, canonical)


@functools.lru_cache(maxsize=256)
def _validate_cached(text: str, parameters_json: str) -> ValidatedTemplate:
    # Errors are not cached (lru_cache does not keep raised exceptions).
    return _validate(text, json.loads(parameters_json))


def _validate(text: str, parameters: dict[str, Any]) -> ValidatedTemplate:
    size = len(text.encode())
    if size > MAX_TEMPLATE_BYTES:
        raise TemplateError(
            f"template is {size} bytes; the limit is {MAX_TEMPLATE_BYTES} bytes (1 MiB)"
        )
    tpl = _load_yaml(text)
    topology = tpl.get("topology_template")
    if not isinstance(topology, dict):
        raise TemplateError("template has no topology_template mapping")
    nodes_raw = topology.get("node_templates")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise TemplateError("topology_template has no node_templates")
    for name, node in nodes_raw.items():
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            raise TemplateError(f"node template '{name}' must be a mapping with a 'type'")
    try:
        values = check_inputs(topology.get("inputs"), parameters)
    except InputError as exc:
        raise TemplateError(str(exc)) from None
    graph = _requirement_graph(nodes_raw)
    _check_cycles(graph)

    parse_tpl = copy.deepcopy(tpl)
    try:
        rewrite_imports(parse_tpl)
    except ImportRefused as exc:
        raise TemplateError(str(exc)) from None
    parsed = _parse(parse_tpl, values)

    try:
        resolved_topology = resolve(topology, values, "topology_template")
    except FunctionError as exc:
        raise TemplateError(str(exc)) from None
    resolved = dict(tpl)
    resolved["topology_template"] = resolved_topology
    # The im gets the values as the inputs' defaults, so the template stays self-describing.
    for name, spec in (resolved_topology.get("inputs") or {}).items():
        if name in values and isinstance(spec, dict):
            spec["default"] = values[name]

    nodes = _node_infos(parsed, resolved_topology["node_templates"], graph)
    requirements = _requirements(parsed, resolved_topology, nodes)
    secrets = [
        str(v)
        for k, v in values.items()
        if is_secret_name(k) and isinstance(v, (str, int)) and len(str(v)) >= 4
    ]
    return ValidatedTemplate(
        text=text,
        resolved_text=yaml.dump(resolved, Dumper=_DUMPER, sort_keys=False),
        inputs=values,
        nodes=nodes,
        requirements=requirements,
        secret_values=secrets,
    )


def _load_yaml(text: str) -> dict[str, Any]:
    try:
        tpl = yaml.load(text, Loader=_YAML)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TemplateError(f"template is not valid YAML{where}: {problem}") from None
    if not isinstance(tpl, dict):
        raise TemplateError("template must be a YAML mapping (a TOSCA service template)")
    if "tosca_definitions_version" not in tpl:
        raise TemplateError("template has no tosca_definitions_version")
    return tpl


def _requirement_graph(nodes: dict[str, Any]) -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {}
    for name, node in nodes.items():
        targets: list[str] = []
        reqs = node.get("requirements") or []
        if not isinstance(reqs, list):
            raise TemplateError(f"node '{name}': requirements must be a list")
        for req in reqs:
            if not isinstance(req, dict) or len(req) != 1:
                raise TemplateError(f"node '{name}': each requirement must be a one-key mapping")
            ((_, spec),) = req.items()
            target = spec.get("node") if isinstance(spec, dict) else spec
            if isinstance(target, str) and target in nodes:
                targets.append(target)
        graph[name] = targets
    return graph


def _check_cycles(graph: dict[str, list[str]]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise TemplateError("requirements form a cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def _parse(tpl: dict[str, Any], values: dict[str, Any]) -> ToscaTemplate:
    with _PARSE_LOCK:
        try:
            return ToscaTemplate(yaml_dict_tpl=tpl, a_file=False, parsed_params=values)
        except Exception as exc:
            messages = _collected_messages() or [_first_line(exc)]
            raise TemplateError("invalid TOSCA: " + "; ".join(messages)) from None
        finally:
            ExceptionCollector.stop()
            ExceptionCollector.clear()


def _collected_messages() -> list[str]:
    out: list[str] = []
    for exc in ExceptionCollector.getExceptions() or []:
        text = _first_line(exc)
        if text and text not in out:
            out.append(text)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("The pre-parsed input failed"):
            return f"{type(exc).__name__}: {line}" if ":" not in line[:40] else line
    return type(exc).__name__


def _capability_props(node: dict[str, Any], cap: str) -> dict[str, Any]:
    caps = node.get("capabilities") or {}
    props = (caps.get(cap) or {}).get("properties") if isinstance(caps.get(cap), dict) else None
    return props if isinstance(props, dict) else {}


def _node_infos(
    parsed: ToscaTemplate, nodes_raw: dict[str, Any], graph: dict[str, list[str]]
) -> dict[str, NodeInfo]:
    infos: dict[str, NodeInfo] = {}
    for nt in parsed.nodetemplates:
        raw = nodes_raw[nt.name]
        count = _capability_props(raw, "scalable").get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise TemplateError(
                f"node '{nt.name}': scalable.count must be a non-negative integer, got {count!r}"
            )
        infos[nt.name] = NodeInfo(
            name=nt.name,
            type=nt.type,
            count=count,
            requires=graph.get(nt.name, []),
            compute=nt.is_derived_from(COMPUTE) or nt.is_derived_from(DOCKER_RUNTIME),
            types=_type_chain(nt),
        )
    return infos


def _type_chain(nt: Any) -> list[str]:
    chain: list[str] = []
    typ = nt.type_definition
    while typ is not None and getattr(typ, "type", None) and len(chain) < 50:
        chain.append(typ.type)
        typ = typ.parent_type
    return chain


def _size(value: Any, unit: str, where: str) -> int:
    if value is None:
        return 0
    try:
        return math.ceil(ScalarUnit_Size(value).get_num_from_scalar_unit(unit))
    except Exception:
        raise TemplateError(f"{where}: {value!r} is not a size like '2 GB'") from None


def _service_types(nodes: dict[str, NodeInfo]) -> list[str]:
    """The service types able to run the template (empty: any; nothing recognisable)."""
    chains = [set(n.types) for n in nodes.values()]
    if any(COMPUTE in c and DOCKER_RUNTIME not in c for c in chains):
        return list(IAAS_SERVICE_TYPES)  # containers in such templates run on its VMs
    apps = [c for c in chains if CONTAINER_APP in c]
    if any(BATCH_APP in c for c in apps):
        return list(BATCH_SERVICE_TYPES)
    return list(CONTAINER_SERVICE_TYPES) if apps else []


def _requirements(
    parsed: ToscaTemplate, topology: dict[str, Any], nodes: dict[str, NodeInfo]
) -> dict[str, Any]:
    """What the deployment needs from a provider (the infoprovider/ranker Requirements)."""
    req: dict[str, Any] = {
        "cpus": 0, "ram_mb": 0, "disk_gb": 0, "gpu": {"count": 0, "vendor": "", "model": ""},
        "infiniband": False, "image": {}, "instances": 0, "sla_ids": [], "site_ids": [],
        "service_types": _service_types(nodes),
    }  # fmt: skip
    images: set[str] = set()
    for name, info in nodes.items():
        if not info.compute:
            continue
        raw = topology["node_templates"][name]
        host = _capability_props(raw, "host")
        os_ = _capability_props(raw, "os")
        req["instances"] += info.count
        cpus = host.get("num_cpus") or 0
        if isinstance(cpus, (int, float)) and not isinstance(cpus, bool):
            req["cpus"] = max(req["cpus"], math.ceil(cpus))
        req["ram_mb"] = max(req["ram_mb"], _size(host.get("mem_size"), "MB", f"{name}.mem_size"))
        req["disk_gb"] = max(
            req["disk_gb"], _size(host.get("disk_size"), "GB", f"{name}.disk_size")
        )
        gpus = host.get("num_gpus") or 0
        if isinstance(gpus, int) and gpus > req["gpu"]["count"]:
            req["gpu"]["count"] = gpus
        for key, prop in (("vendor", "gpu_vendor"), ("model", "gpu_model")):
            if host.get(prop) and not req["gpu"][key]:
                req["gpu"][key] = str(host[prop])
        req["infiniband"] = req["infiniband"] or bool(host.get("infiniband"))
        image = {
            "name": os_.get("image") or "",
            "os_type": os_.get("type") or "",
            "os_distribution": os_.get("distribution") or "",
            "os_version": str(os_.get("version") or ""),
            "architecture": os_.get("architecture") or "",
            "cuda": bool(os_.get("cuda_support")),
            "min_cuda_version": str(os_.get("cuda_min_version") or ""),
        }
        if any(image.values()):
            key = repr(sorted(image.items()))
            if key not in images:
                images.add(key)
                req["image"] = {k: v for k, v in image.items() if v}
    # Property values from the resolved topology: tosca-parser leaves get_input unresolved.
    resolved_policies: dict[str, dict[str, Any]] = {}
    targets: dict[str, list[str]] = {}
    for entry in topology.get("policies") or []:
        if isinstance(entry, dict):
            for name, body in entry.items():
                if isinstance(body, dict):
                    resolved_policies[name] = body.get("properties") or {}
                    targets[name] = [str(t) for t in body.get("targets") or []]
    placements: list[tuple[str, str, list[str]]] = []
    for policy in parsed.policies:
        props = {p.name: p.value for p in policy.get_properties_objects()}
        props.update(resolved_policies.get(policy.name, {}))
        if policy.is_derived_from(SLA_PLACEMENT) and props.get("sla_id"):
            req["sla_ids"].append(str(props["sla_id"]))
        elif policy.is_derived_from(PROVIDER_PLACEMENT) and props.get("provider"):
            req["site_ids"].append(str(props["provider"]))
            placements.append((policy.name, str(props["provider"]), targets.get(policy.name, [])))
    # Policies sending virtual machines to different sites: one infrastructure per site.
    vms = [name for name, info in nodes.items() if info.compute]
    try:
        groups = plan_groups(topology["node_templates"], vms, placements)
    except GroupError as exc:
        raise TemplateError(str(exc)) from None
    if groups:
        req["site_groups"] = groups
    return req
