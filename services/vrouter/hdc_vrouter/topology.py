"""From an overlay's rows to one router's WireGuard configuration (peers, allowed IPs, routes).

Hub-and-spoke: every site peers only with the hub; the hub's allowed IPs at a site cover the
whole overlay plus every other site's own ranges, and the hub forwards between sites.
Full mesh: sites peer with each other directly (each peer's allowed IPs are exactly its
block and ranges) and with the hub only for the hub's own address.
Sites that have not enrolled yet have no key, so they appear in nobody's peer list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HUB_AND_SPOKE = "hub-and-spoke"
FULL_MESH = "full-mesh"
TOPOLOGIES = (HUB_AND_SPOKE, FULL_MESH)


@dataclass(frozen=True)
class Router:
    """What the config builder needs to know of a site or hub (decoupled from the ORM)."""

    id: str
    name: str
    role: str
    subnet: str
    tunnel_address: str
    private_ranges: tuple[str, ...] = ()
    endpoint: str | None = None
    public_key: str | None = None
    nat: bool = False
    rotation_requested: bool = False


@dataclass(frozen=True)
class OverlayView:
    id: str
    cidr: str
    topology: str
    listen_port: int
    keepalive_s: int
    config_version: int
    host_prefix: int
    routers: tuple[Router, ...] = field(default_factory=tuple)

    @property
    def hub(self) -> Router:
        return next(r for r in self.routers if r.role == "hub")


def _peer(router: Router, allowed: list[str], keepalive: int) -> dict[str, Any]:
    return {
        "site_id": router.id,
        "name": router.name,
        "role": router.role,
        "public_key": router.public_key,
        "endpoint": router.endpoint,
        "allowed_ips": allowed,
        "persistent_keepalive": keepalive,
    }


def peers_for(overlay: OverlayView, me: Router) -> list[dict[str, Any]]:
    enrolled = [r for r in overlay.routers if r.public_key and r.id != me.id]
    host = f"/{overlay.host_prefix}"
    # Sites keep their NAT mappings open towards peers they can reach; the hub never needs to.
    keepalive = overlay.keepalive_s if me.role == "site" else 0
    peers = []
    for other in enrolled:
        if other.role == "hub":
            if overlay.topology == HUB_AND_SPOKE:
                others = [
                    rng
                    for r in overlay.routers
                    if r.role == "site" and r.id != me.id
                    for rng in r.private_ranges
                ]
                allowed = [overlay.cidr, *others]
            else:
                allowed = [other.tunnel_address + host]
            peers.append(_peer(other, allowed, keepalive))
        elif me.role == "hub" or overlay.topology == FULL_MESH:
            peers.append(_peer(other, [other.subnet, *other.private_ranges], keepalive))
    return peers


def router_config(overlay: OverlayView, me: Router) -> dict[str, Any]:
    peers = peers_for(overlay, me)
    routes: list[str] = []
    for peer in peers:
        for net in peer["allowed_ips"]:
            if net not in routes:
                routes.append(net)
    return {
        "overlay_id": overlay.id,
        "site_id": me.id,
        "name": me.name,
        "role": me.role,
        # The key the controller holds for this router: lets the agent detect a mismatch.
        "public_key": me.public_key,
        "topology": overlay.topology,
        "config_version": overlay.config_version,
        "address": f"{me.tunnel_address}/{overlay.host_prefix}",
        "subnet": me.subnet,
        "private_ranges": list(me.private_ranges),
        "listen_port": overlay.listen_port,
        # Every router forwards between its LAN (or the other sites) and the tunnel.
        "forwarding": True,
        # Masquerade when the site's hosts do not route the overlay back through this router.
        "masquerade": me.nat,
        "rotate_key": me.rotation_requested,
        "peers": peers,
        "routes": routes,
    }
