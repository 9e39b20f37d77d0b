"""TOSCA YAML into a Topology with tosca-parser, tolerant of where the types come from.

Templates import the INDIGO types by URL; nothing is downloaded: every import is replaced by
the type files we hold (our own minimal file plus settings.tosca_types_files). A node type
that none of them defines is accepted by name, derived from the closest standard type, so a
template written for a newer type set still deploys what we understand of it.
"""

from __future__ import annotations

import copy
import functools
import logging
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from toscaparser.elements.scalarunit import ScalarUnit_Size
from toscaparser.tosca_template import ToscaTemplate

from hdc_im.topology import CONTAINER_KIND, VM_KIND, NodeSpec, Topology, TopologyError

log = logging.getLogger(__name__)
# libyaml where PyYAML was built with it: the pure-Python loader was most of a create's CPU.
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
OWN_TYPES = Path(__file__).with_name("tosca_types.yaml")
_SECTIONS = (
    "data_types",
    "capability_types",
    "node_types",
    "relationship_types",
    "artifact_types",
    "policy_types",
    "interface_types",
    "group_types",
)


# parts of a type definition that are maps of named entries, merged entry by entry
_NAMED_PARTS = ("properties", "attributes", "capabilities", "interfaces", "artifacts")


def _merge_type(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """One type defined in two files: `over` wins per entry, `base`'s other entries stay
    (INDIGO's `uris` and the im's `constraints` on the same container type both parse)."""
    out = {**base, **over}
    for part in _NAMED_PARTS:
        if isinstance(base.get(part), dict) and isinstance(over.get(part), dict):
            out[part] = {**base[part], **over[part]}
    if isinstance(base.get("requirements"), list) and isinstance(over.get("requirements"), list):
        names = {next(iter(r)) for r in over["requirements"] if isinstance(r, dict) and r}
        kept = [
            r for r in base["requirements"] if isinstance(r, dict) and next(iter(r)) not in names
        ]
        out["requirements"] = kept + over["requirements"]
    return out


@functools.lru_cache(maxsize=8)
def _type_library(files: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    lib: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    # the im's own types last: what it reads from a template (endpoint attributes,
    # constraints, ...) is defined whatever the library files say about the same type
    for name in (*files, str(OWN_TYPES)):
        path = Path(name)
        if not path.is_file():
            log.warning("TOSCA types file %s not found; skipped", path)
            continue
        doc = yaml.load(path.read_text(), Loader=_YAML) or {}
        for section in _SECTIONS:
            for tname, tdef in (doc.get(section) or {}).items():
                have = lib[section].get(tname)
                if isinstance(have, dict) and isinstance(tdef, dict):
                    tdef = _merge_type(have, tdef)
                lib[section][tname] = tdef
    return lib


def _guess_base(type_name: str) -> str:
    if "Compute" in type_name:
        return "tosca.nodes.indigo.Compute"
    if "Container.Application" in type_name:
        return "tosca.nodes.indigo.Container.Application.Docker"
    if "Container.Runtime" in type_name:
        return "tosca.nodes.indigo.Container.Runtime.Docker"
    return "tosca.nodes.Root"


def _is_builtin(type_name: str) -> bool:
    return type_name.startswith("tosca.") and not type_name.startswith("tosca.nodes.indigo")


def load(text: str, types_files: Iterable[str] = ()) -> Topology:
    """The topology of a TOSCA document (a fresh object: callers may change it)."""
    return Topology.from_dict(pickle.loads(_load_cached(text, tuple(types_files))))


@functools.lru_cache(maxsize=64)
def _load_cached(text: str, types_files: tuple[str, ...]) -> bytes:
    # The orchestrator sends the same resolved template for every deployment of it on a
    # site; tosca-parser's parse is a pure function of the text and the type files.
    # Refusals (TopologyError) are not cached: they raise through.
    return pickle.dumps(_load(text, types_files).to_dict())


def _load(text: str, types_files: tuple[str, ...]) -> Topology:
    try:
        doc = yaml.load(text, Loader=_YAML)
    except yaml.YAMLError as exc:
        raise TopologyError(f"invalid TOSCA: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or "tosca_definitions_version" not in doc:
        raise TopologyError("invalid TOSCA: 'tosca_definitions_version' is missing")
    topo = doc.get("topology_template")
    if not isinstance(topo, dict) or not isinstance(topo.get("node_templates"), dict):
        raise TopologyError("invalid TOSCA: 'topology_template.node_templates' is missing")
    lib = _type_library(types_files)
    work = copy.deepcopy(doc)
    work.pop("imports", None)
    for section in _SECTIONS:
        merged = dict(lib[section])
        merged.update(work.get(section) or {})
        if merged:
            work[section] = merged
    _coerce_floats(work["topology_template"]["node_templates"])
    node_types = work.setdefault("node_types", {})
    for name, tpl in topo["node_templates"].items():
        if not isinstance(tpl, dict) or "type" not in tpl:
            raise TopologyError(f"invalid TOSCA: node template '{name}' has no 'type'")
        t = tpl["type"]
        if t not in node_types and not _is_builtin(t):
            node_types[t] = {"derived_from": _guess_base(t)}
    try:
        parsed = ToscaTemplate(yaml_dict_tpl=work, a_file=False)
    except Exception as exc:  # tosca-parser raises ValidationError and friends
        raise TopologyError(f"invalid TOSCA: {_first_errors(exc)}") from None
    return _extract(parsed, doc)


def _coerce_floats(templates: dict[str, Any]) -> None:
    """`num_cpus: 1` on a runtime whose type says float: tosca-parser refuses an int there,
    INDIGO templates write it anyway."""
    for tpl in templates.values():
        caps = tpl.get("capabilities") if isinstance(tpl, dict) else None
        host = (caps or {}).get("host") if isinstance(caps, dict) else None
        props = (host or {}).get("properties") if isinstance(host, dict) else None
        if (
            isinstance(props, dict)
            and isinstance(props.get("num_cpus"), int)
            and not isinstance(props.get("num_cpus"), bool)
            and "Runtime" in str(tpl.get("type", ""))
        ):
            props["num_cpus"] = float(props["num_cpus"])


def _first_errors(exc: Exception) -> str:
    lines = [
        ln.strip()
        for ln in str(exc).splitlines()
        if re.match(r"\s*\w+(Error|Exception):", ln) or "Error" in ln.split(":")[0]
    ]
    return "; ".join(lines[:3]) or str(exc).strip().splitlines()[-1]


def _value(v: Any) -> Any:
    while hasattr(v, "result"):
        v = v.result()
    return v


def _cap_props(node: Any, cap: str) -> dict[str, Any]:
    c = node.get_capability(cap)
    if c is None:
        return {}
    return {p.name: _value(p.value) for p in c.get_properties_objects()}


def _mb(size: Any) -> int:
    if size in (None, ""):
        return 0
    if isinstance(size, int | float):
        return int(size)
    return int(ScalarUnit_Size(str(size)).get_num_from_scalar_unit("MB"))


def _ports(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(None, p) for p in raw]
    else:
        return out
    for name, spec in items:
        spec = _value(spec)
        if not isinstance(spec, dict):
            continue
        port = spec.get("source") or spec.get("target") or spec.get("port")
        if port is None:
            continue
        out[str(name or f"port_{port}")] = {
            "port": int(port),
            "protocol": str(spec.get("protocol", "tcp")),
            "remote_cidr": str(spec.get("remote_cidr", "0.0.0.0/0")),
        }
    return out


def _props(node: Any) -> dict[str, Any]:
    return {p.name: _value(p.value) for p in node.get_properties_objects()}


def _extract(parsed: ToscaTemplate, doc: dict[str, Any]) -> Topology:
    nodes: list[NodeSpec] = []
    by_name = {n.name: n for n in parsed.nodetemplates}
    hosted: dict[str, list[Any]] = {}
    for n in parsed.nodetemplates:
        for req in n.requirements or []:
            if "host" in req:
                target = req["host"] if isinstance(req["host"], str) else req["host"].get("node")
                hosted.setdefault(str(target), []).append(n)
    networks = _networks_by_compute(parsed.nodetemplates, by_name)
    for n in parsed.nodetemplates:
        td = n.type_definition
        if td.is_derived_from("tosca.nodes.Compute"):
            spec = _compute(n, hosted.get(n.name, []), by_name)
            _apply_networks(spec, networks.get(n.name, []))
            nodes.append(spec)
        elif td.is_derived_from("tosca.nodes.Container.Application"):
            nodes.append(_container(n, by_name))
    if not nodes:
        raise TopologyError(
            "invalid TOSCA: the topology has no Compute or Container.Application node to deploy"
        )
    inputs = {i.name: i.default for i in parsed.inputs}
    props = {
        n.name: {k: v for k, v in _props(n).items() if isinstance(v, str | int | float | bool)}
        for n in parsed.nodetemplates
    }
    # the original document: tosca-parser replaces functions in the copy it was given
    outputs = doc["topology_template"].get("outputs") or {}
    return Topology(
        nodes=nodes,
        outputs={k: (v or {}).get("value") for k, v in outputs.items()},
        inputs=inputs,
        properties=props,
        source="tosca",
    )


def _req_target(req: dict[str, Any], name: str) -> str | None:
    spec = req.get(name)
    if spec is None:
        return None
    return str(spec if isinstance(spec, str) else spec.get("node"))


def _networks_by_compute(templates: list[Any], by_name: dict[str, Any]) -> dict[str, list[dict]]:
    """Compute name -> properties of the tosca.nodes.network.Network nodes its Ports link it
    to (TOSCA's normative Port: requirement `binding` to the Compute, `link` to the Network)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for n in templates:
        if not n.type_definition.is_derived_from("tosca.nodes.network.Port"):
            continue
        compute = network = None
        for req in n.requirements or []:
            compute = _req_target(req, "binding") or compute
            network = _req_target(req, "link") or network
        net = by_name.get(str(network))
        if compute and net is not None:
            out.setdefault(compute, []).append(_props(net))
    return out


def _apply_networks(spec: NodeSpec, networks: list[dict[str, Any]]) -> None:
    """IM conventions: a Network with `network_type: public` is the outside (its
    `network_name` the external network / floating IP pool); any other Network is the private
    one, existing when it has a `network_name` (or `network_id`), made for the
    infrastructure otherwise (with its `cidr`)."""
    for props in networks:
        name = str(props.get("network_name") or props.get("network_id") or "")
        if str(props.get("network_type") or "").lower() == "public":
            spec.public = True
            spec.public_network = name if name.upper() != "PUBLIC" else ""
        elif name:
            spec.network = name
        elif props.get("cidr"):
            spec.network_cidr = str(props["cidr"])


def _gb(size: Any) -> int:
    if size in (None, ""):
        return 0
    if isinstance(size, int | float):
        return int(size)
    return max(1, round(ScalarUnit_Size(str(size)).get_num_from_scalar_unit("GB")))


def _volumes(n: Any, by_name: dict[str, Any]) -> list[dict[str, Any]]:
    """BlockStorage nodes attached with `local_storage` requirements (AttachesTo)."""
    out = []
    for req in n.requirements or []:
        spec = req.get("local_storage")
        if spec is None:
            continue
        target = spec if isinstance(spec, str) else spec.get("node")
        rel = {} if isinstance(spec, str) else spec.get("relationship") or {}
        rel_props = rel.get("properties", {}) if isinstance(rel, dict) else {}
        vol = by_name.get(str(target))
        if vol is None:
            continue
        props = _props(vol)
        out.append(
            {
                "size_gb": _gb(props.get("size")) or 1,
                "device": str(_value(rel_props.get("device")) or ""),
                "location": str(_value(rel_props.get("location")) or ""),
            }
        )
    return out


def _compute(n: Any, software: list[Any], by_name: dict[str, Any] | None = None) -> NodeSpec:
    host = _cap_props(n, "host")
    os_ = _cap_props(n, "os")
    scal = _cap_props(n, "scalable")
    ep = _cap_props(n, "endpoint")
    spec = NodeSpec(name=n.name, kind=VM_KIND)
    spec.count = int(scal.get("count") if scal.get("count") is not None else 1)
    spec.removal_list = [str(x) for x in (scal.get("removal_list") or [])]
    spec.image = str(os_.get("image") or "")
    spec.instance_type = str(host.get("instance_type") or "")
    spec.cpus = float(host.get("num_cpus") or 0)
    spec.memory_mb = _mb(host.get("mem_size"))
    spec.gpus = int(host.get("num_gpus") or 0)
    # TOSCA: network_name is PUBLIC, PRIVATE, or the name (or id) of a network to join
    net_name = str(ep.get("network_name") or "")
    spec.public = net_name.upper() == "PUBLIC"
    if net_name and net_name.upper() not in ("PUBLIC", "PRIVATE"):
        spec.network = net_name
    spec.ports = _ports(ep.get("ports"))
    cred = os_.get("credential") or ep.get("credential") or {}
    if isinstance(cred, dict):
        if cred.get("token") and "ssh" in str(cred.get("token")):
            spec.ssh_keys.append(str(cred["token"]))
        spec.username = str(cred.get("user") or "")
    spec.volumes = _volumes(n, by_name or {})
    for sw in software:
        p = _props(sw)
        spec.packages += [str(x) for x in p.get("packages") or []]
        spec.commands += [str(x) for x in p.get("commands") or []]
        spec.files.update({str(k): str(v) for k, v in (p.get("files") or {}).items()})
    return spec


def _container(n: Any, by_name: dict[str, Any]) -> NodeSpec:
    props = _props(n)
    spec = NodeSpec(name=n.name, kind=CONTAINER_KIND)
    image = props.get("image") or ""
    arts = (n.entity_tpl.get("artifacts") or {}) if isinstance(n.entity_tpl, dict) else {}
    art = arts.get("image")
    if isinstance(art, dict):
        image = art.get("file") or image
    elif isinstance(art, str):
        image = art
    spec.image = str(image)
    spec.command = str(props.get("command") or "")
    spec.environment = {
        str(k): str(v) for k, v in (props.get("environment_variables") or {}).items()
    }
    spec.secrets = {str(k): str(v) for k, v in (props.get("secrets") or {}).items()}
    for name in spec.secrets:  # a value given both ways is a secret, never plain environment
        spec.environment.pop(name, None)
    spec.model = spec.environment.get("HDC_MODEL") or spec.environment.get("MODEL_NAME") or ""
    spec.labels = {str(k): str(v) for k, v in (props.get("labels") or {}).items()}
    spec.constraints = [list(map(str, c)) for c in props.get("constraints") or []]
    spec.batch = (
        n.type_definition.is_derived_from("tosca.nodes.indigo.Container.Application.Docker.Chronos")
        if _has_type(n, "tosca.nodes.indigo.Container.Application.Docker.Chronos")
        else False
    )
    for req in n.requirements or []:
        if "host" in req:
            target = req["host"] if isinstance(req["host"], str) else req["host"].get("node")
            rt = by_name.get(str(target))
            if rt is not None:
                host = _cap_props(rt, "host")
                spec.cpus = float(host.get("num_cpus") or 0)
                spec.memory_mb = _mb(host.get("mem_size"))
                spec.gpus = int(host.get("num_gpus") or 0)
                spec.ports = _ports(host.get("publish_ports"))
                spec.count = int(_cap_props(rt, "scalable").get("count") or 1)
    spec.public = bool(spec.ports)
    return spec


def _has_type(n: Any, name: str) -> bool:
    t = n.type_definition
    while t is not None:
        if t.type == name:
            return True
        t = t.parent_type
    return False


REDACTED = "<redacted>"


def redact_secrets(text: str | None) -> str | None:
    """The TOSCA text as kept and shown (GET /tosca): values of `secrets` properties replaced.

    Re-serialised only when there is something to hide (comments and layout are kept
    otherwise); a document that does not parse is returned as it is (it never got this far).
    """
    if not text or "secrets" not in text:
        return text
    try:
        doc = yaml.load(text, Loader=_YAML)
        templates = doc["topology_template"]["node_templates"]
    except (yaml.YAMLError, KeyError, TypeError):
        return text
    changed = False
    for tpl in templates.values() if isinstance(templates, dict) else ():
        props = tpl.get("properties") if isinstance(tpl, dict) else None
        secret = props.get("secrets") if isinstance(props, dict) else None
        if isinstance(secret, dict) and secret:
            props["secrets"] = {k: REDACTED for k in secret}
            changed = True
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False) if changed else text
