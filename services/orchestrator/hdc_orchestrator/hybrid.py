"""Hybrid templates: the vRouter overlay a deployment's hub and site routers need.

A template with vRouter nodes (hdc's `hdc.nodes.vrouter.Hub` / `SiteRouter` or INDIGO's
`tosca.nodes.indigo.VR.*`) gets one overlay per deployment attempt in the vrouter
controller. This module reads what to ask for from the resolved template (`plan_overlay`)
and turns the routers' cloud-init documents into the one `user_data_extra` fragment of the
im's create command (`router_script`).

Why one script: the im applies `user_data_extra` to every VM of the infrastructure, and one
infrastructure holds the hub, the site routers and the ordinary nodes. The script reads the
node name the im's own cloud-config writes to /etc/hdc/node.env and applies, on each router's
host only, that router's cloud-config (with its own one-time token); other VMs do nothing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

HUB_TYPES = ("hdc.nodes.vrouter.Hub", "tosca.nodes.indigo.VR.CentralPoint")
SITE_TYPES = (
    "hdc.nodes.vrouter.SiteRouter",
    "tosca.nodes.indigo.VR.VRouter",
    "tosca.nodes.indigo.VR.Client",
)
DEFAULT_CIDR = "10.200.0.0/16"
# INDIGO's central point named only the overlay's network address and always used a /16.
INDIGO_PREFIX = 16
NODE_ENV = "/etc/hdc/node.env"
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PlanError(ValueError):
    """The template's vRouter nodes cannot be turned into an overlay (a template problem)."""


@dataclass
class Router:
    node: str
    role: str  # hub | site
    host: str  # the compute node whose VM runs the agent
    private_ranges: list[str] = field(default_factory=list)
    nat: bool = False


@dataclass
class OverlayPlan:
    hub: Router
    sites: list[Router]
    cidr: str
    site_prefix: int
    topology: str
    listen_port: int
    keepalive: int
    hub_endpoint: str

    @property
    def routers(self) -> list[Router]:
        return [self.hub, *self.sites]


def _is(chain: list[str], names: tuple[str, ...]) -> bool:
    return any(t in names for t in chain)


def _host_of(name: str, raw: dict[str, Any]) -> str:
    for req in raw.get("requirements") or []:
        if isinstance(req, dict) and "host" in req:
            target = req["host"]
            target = target.get("node") if isinstance(target, dict) else target
            if isinstance(target, str) and target:
                return target
    raise PlanError(f"vRouter node {name!r} has no 'host' requirement naming its compute node")


def plan_overlay(
    resolved: str, type_chains: dict[str, list[str]], counts: dict[str, int] | None = None
) -> OverlayPlan | None:
    """The overlay for a resolved template, or None when it has no vRouter nodes.

    `type_chains` maps node names to their type and every type it derives from (what the
    deployment's resources keep), so subtypes of the router types count too; `counts`, when
    given, the number of instances of each node.
    """
    hubs = [n for n, chain in type_chains.items() if _is(chain, HUB_TYPES)]
    sites = [n for n, chain in type_chains.items() if _is(chain, SITE_TYPES)]
    if not hubs and not sites:
        return None
    if len(hubs) != 1:
        raise PlanError(
            f"a hybrid template needs exactly one vRouter hub (central point); found {len(hubs)}"
            + (f": {', '.join(sorted(hubs))}" if hubs else "")
        )
    templates = yaml.load(resolved, Loader=_YAML)["topology_template"]["node_templates"]
    hub_name = hubs[0]
    hub_raw = templates[hub_name] or {}
    props = hub_raw.get("properties") or {}
    cidr = props.get("overlay_cidr")
    legacy = props.get("indigovr_subnet")
    if (
        legacy
        and cidr in (None, DEFAULT_CIDR)
        and "tosca.nodes.indigo.VR.CentralPoint" in (type_chains[hub_name])
    ):
        cidr = legacy if "/" in str(legacy) else f"{legacy}/{INDIGO_PREFIX}"
    listen_port = int(props.get("listen_port") or 51820)
    hub_host = _host_of(hub_name, hub_raw)
    endpoint_props = (
        ((templates.get(hub_host) or {}).get("capabilities") or {}).get("endpoint") or {}
    ).get("properties") or {}
    dns_name = endpoint_props.get("dns_name")
    if not dns_name:
        # Site routers must know where to reach the hub before any VM exists.
        raise PlanError(
            f"the vRouter hub {hub_name!r} needs a public name: set "
            f"capabilities.endpoint.properties.dns_name on its host {hub_host!r}"
        )
    routers = []
    for name in sorted(sites):
        raw = templates[name] or {}
        p = raw.get("properties") or {}
        ranges = p.get("private_ranges") or []
        routers.append(
            Router(
                node=name,
                role="site",
                host=_host_of(name, raw),
                private_ranges=[ranges] if isinstance(ranges, str) else [str(r) for r in ranges],
                nat=bool(p.get("nat", False)),
            )
        )
    hosts = [hub_host, *(r.host for r in routers)]
    if len(set(hosts)) != len(hosts):
        raise PlanError("two vRouter nodes share a host; each router needs its own VM")
    for host in hosts:
        if (counts or {}).get(host, 1) != 1:
            # One enrolment token per router: a second VM would find it already used.
            raise PlanError(f"the router host {host!r} must be a single VM (scalable count 1)")
    return OverlayPlan(
        hub=Router(node=hub_name, role="hub", host=hub_host),
        sites=routers,
        cidr=str(cidr or DEFAULT_CIDR),
        site_prefix=int(props.get("site_prefix") or 24),
        topology=str(props.get("topology") or "hub-and-spoke"),
        listen_port=listen_port,
        keepalive=int(props.get("persistent_keepalive", 25)),
        hub_endpoint=f"{dns_name}:{listen_port}",
    )


# ---------------------------------------------------------------------- user data


def _heredoc(path: str, content: str, n: int) -> list[str]:
    tag = f"HDC_VROUTER_EOF_{n}"
    while tag in content:
        tag += "_"
    body = content[:-1] if content.endswith("\n") else content
    lines = [f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')}"]
    if content.endswith("\n"):
        lines += [f"cat > {shlex.quote(path)} <<'{tag}'", body, tag]
    else:  # no trailing newline: keep the file byte-exact
        lines += [f"printf '%s' {shlex.quote(content)} > {shlex.quote(path)}"]
    return lines


def cloud_config_to_sh(document: str) -> list[str]:
    """Shell lines doing what the vrouter's router cloud-config does (its keys only).

    Any key this does not know is refused rather than dropped, so a router never boots
    half-configured because the controller's document grew.
    """
    text = document.split("\n", 1)[1] if document.startswith("#cloud-config") else document
    cfg = yaml.load(text, Loader=_YAML) or {}
    unknown = set(cfg) - {"package_update", "packages", "write_files", "runcmd"}
    if unknown:
        raise ValueError(f"router cloud-config has keys this orchestrator cannot apply: {unknown}")
    out: list[str] = []
    packages = [shlex.quote(str(p)) for p in cfg.get("packages") or []]
    if packages or cfg.get("package_update"):
        pkgs = " ".join(packages)
        out += [
            "if command -v apt-get >/dev/null 2>&1; then",
            "  apt-get update -q",
            f"  DEBIAN_FRONTEND=noninteractive apt-get install -y -q {pkgs}" if pkgs else "  :",
            "elif command -v dnf >/dev/null 2>&1; then",
            f"  dnf install -y -q {pkgs}" if pkgs else "  :",
            "fi",
        ]
    for n, f in enumerate(cfg.get("write_files") or []):
        path = str(f["path"])
        out += _heredoc(path, str(f.get("content", "")), n)
        if f.get("permissions"):
            out.append(f"chmod {shlex.quote(str(f['permissions']))} {shlex.quote(path)}")
        if f.get("owner"):
            out.append(f"chown {shlex.quote(str(f['owner']))} {shlex.quote(path)}")
    for cmd in cfg.get("runcmd") or []:
        out.append(shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd))
    return out


def router_script(by_host: dict[str, str]) -> str:
    """One shell script for every VM: each router host applies its own cloud-config."""
    lines = [
        "#!/bin/sh",
        "# hdc orchestrator: vRouter agent enrolment for the router VMs of this deployment.",
        "set -eu",
        f"[ -r {NODE_ENV} ] || exit 0",
        f". {NODE_ENV}",
        'case "${HDC_NODE:-}" in',
    ]
    for host in sorted(by_host):
        lines.append(f"  {shlex.quote(host)})")
        # Not indented: heredoc bodies and terminators must stay as they are.
        lines += cloud_config_to_sh(by_host[host])
        lines.append("    ;;")
    lines += ["  *) exit 0 ;;", "esac", ""]
    return "\n".join(lines)
