"""How rows are shown: API dictionaries for overlays and sites, and the config builder's view."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hdc_vrouter.addressing import AddressPlan
from hdc_vrouter.models import Overlay, Site
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.topology import OverlayView, Router, router_config


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def iso(dt: datetime | None) -> str | None:
    dt = aware(dt)
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def router(site: Site) -> Router:
    return Router(
        id=site.id,
        name=site.name,
        role=site.role,
        subnet=site.subnet,
        tunnel_address=site.tunnel_address,
        private_ranges=tuple(site.private_ranges),
        endpoint=site.endpoint or site.observed_endpoint,
        public_key=site.public_key,
        nat=site.nat,
        rotation_requested=site.rotation_requested,
    )


def overlay_view(overlay: Overlay, sites: list[Site]) -> OverlayView:
    plan = AddressPlan.build(overlay.cidr, overlay.site_prefix)
    return OverlayView(
        id=overlay.id,
        cidr=overlay.cidr,
        topology=overlay.topology,
        listen_port=overlay.listen_port,
        keepalive_s=overlay.keepalive_s,
        config_version=overlay.config_version,
        host_prefix=plan.host_prefix(),
        routers=tuple(router(s) for s in sites),
    )


def router_config_for(overlay: Overlay, site: Site) -> dict[str, Any]:
    return router_config(overlay_view(overlay, list(overlay.sites)), router(site))


def overlay_dict(overlay: Overlay, sites: list[Site], settings: VRouterSettings) -> dict[str, Any]:
    plan = AddressPlan.build(overlay.cidr, overlay.site_prefix)
    return {
        "id": overlay.id,
        "name": overlay.name,
        "cidr": overlay.cidr,
        "site_prefix": overlay.site_prefix,
        "topology": overlay.topology,
        "listen_port": overlay.listen_port,
        "persistent_keepalive": overlay.keepalive_s,
        "group": overlay.owner_group,
        "owner": f"{overlay.owner_subject}@{overlay.owner_issuer}",
        "config_version": overlay.config_version,
        "site_capacity": min(plan.site_capacity, settings.max_sites_per_overlay),
        "sites_allocated": sum(1 for s in sites if s.role == "site"),
        "hub_address": plan.hub_address(),
        "created_at": iso(overlay.created_at),
    }


def site_dict(site: Site) -> dict[str, Any]:
    return {
        "id": site.id,
        "overlay_id": site.overlay_id,
        "name": site.name,
        "role": site.role,
        "subnet": site.subnet,
        "tunnel_address": site.tunnel_address,
        "private_ranges": site.private_ranges,
        "nat": site.nat,
        "endpoint": site.endpoint,
        "public_key": site.public_key,
        "enrolled": site.public_key is not None,
        "rotation_requested": site.rotation_requested,
        "enrolled_at": iso(site.enrolled_at),
        "key_rotated_at": iso(site.key_rotated_at),
        "created_at": iso(site.created_at),
    }
