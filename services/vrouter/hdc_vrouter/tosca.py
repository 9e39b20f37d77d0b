"""From the vRouter TOSCA node types (tosca-templates/vrouter/) to controller requests.

The orchestrator reads a hybrid template's hub and site-router nodes; these two functions
turn their properties into `create_overlay` / `add_site` arguments, applying INDIGO's
conventions for `tosca.nodes.indigo.VR.*` nodes.
"""

from __future__ import annotations

from typing import Any

HUB_TYPES = ("hdc.nodes.vrouter.Hub", "tosca.nodes.indigo.VR.CentralPoint")
SITE_TYPES = (
    "hdc.nodes.vrouter.SiteRouter",
    "tosca.nodes.indigo.VR.VRouter",
    "tosca.nodes.indigo.VR.Client",
)
# INDIGO's central point only named the network address and always used a /16.
INDIGO_PREFIX = 16
DEFAULT_CIDR = "10.200.0.0/16"


def overlay_request(node_type: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for Controller.create_overlay from a hub node's properties."""
    if node_type not in HUB_TYPES:
        raise ValueError(f"{node_type} is not a vRouter hub type ({', '.join(HUB_TYPES)})")
    cidr = properties.get("overlay_cidr")
    legacy = properties.get("indigovr_subnet")
    if (
        node_type == "tosca.nodes.indigo.VR.CentralPoint"
        and legacy
        and cidr in (None, DEFAULT_CIDR)
    ):
        cidr = legacy if "/" in legacy else f"{legacy}/{INDIGO_PREFIX}"
    return {
        "name": name,
        "cidr": cidr or DEFAULT_CIDR,
        "site_prefix": int(properties.get("site_prefix") or 24),
        "topology": properties.get("topology") or "hub-and-spoke",
        "listen_port": int(properties.get("listen_port") or 51820),
        "persistent_keepalive": int(properties.get("persistent_keepalive", 25)),
    }


def site_request(node_type: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for Controller.add_site from a site-router node's properties."""
    if node_type not in SITE_TYPES:
        raise ValueError(f"{node_type} is not a vRouter site type ({', '.join(SITE_TYPES)})")
    ranges = properties.get("private_ranges") or []
    if isinstance(ranges, str):
        ranges = [ranges]
    return {"name": name, "private_ranges": list(ranges), "nat": bool(properties.get("nat", False))}
