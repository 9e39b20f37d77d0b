"""Read side of the registry: site views as protobuf messages (placement: placement.py).

The gRPC servicer returns these messages as they are; the REST API renders the same messages
as JSON (hdc's own documents), so both APIs always agree. A record's freshness is its own
when the site dated it, else its part's on its service; sites past validity are down.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_infoprovider import models as m
from hdc_infoprovider.ingest import to_utc
from hdc_infoprovider.report import utcnow
from sqlalchemy.orm import Session

STATUS = {"up": pb.STATUS_UP, "degraded": pb.STATUS_DEGRADED, "down": pb.STATUS_DOWN}
QUOTA_FIELDS = ("instances", "cores", "ram_mb", "gpus", "floating_ips", "volumes", "volume_gb")
# Architecture names sites use for the same thing.
ARCH_ALIASES = {
    "x86_64": ("x86_64", "amd64", "x64"),
    "amd64": ("x86_64", "amd64", "x64"),
    "aarch64": ("aarch64", "arm64"),
    "arm64": ("aarch64", "arm64"),
}
FLAVOR_ORDER = ("gpus", "cpus", "ram_mb", "disk_gb", "id")


class NotFound(Exception):
    pass


def ts(dt: datetime | None) -> Timestamp:
    out = Timestamp()
    if dt is not None:
        out.FromDatetime(to_utc(dt))
    return out


def _freshness(row: Any, now: datetime) -> pb.Freshness:
    return pb.Freshness(
        creation_time=ts(row.creation_time),
        valid_until=ts(row.valid_until),
        validity_s=row.validity_s,
        stale=to_utc(row.valid_until) < now,
    )


def site_status(site: Any, now: datetime) -> str:
    return "down" if to_utc(site.valid_until) < now else site.status


def _str_map(d: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (d or {}).items()}


def flavor_pb(r: Any) -> pb.Flavor:
    return pb.Flavor(
        id=r.id,
        name=r.name,
        cpus=r.cpus,
        ram_mb=r.ram_mb,
        disk_gb=r.disk_gb,
        gpus=r.gpus,
        gpu_vendor=r.gpu_vendor,
        gpu_model=r.gpu_model,
        infiniband=r.infiniband,
        public=r.public,
        properties=_str_map(r.properties),
    )


def image_pb(r: Any) -> pb.Image:
    return pb.Image(
        id=r.id,
        name=r.name,
        os_type=r.os_type,
        os_distribution=r.os_distribution,
        os_version=r.os_version,
        architecture=r.architecture,
        cuda=r.cuda,
        cuda_version=r.cuda_version,
        cudnn_version=r.cudnn_version,
        gpu_driver=r.gpu_driver,
        docker_image=r.docker_image,
        user_name=r.user_name,
        properties=_str_map(r.properties),
    )


def network_pb(r: Any) -> pb.Network:
    return pb.Network(id=r.id, name=r.name, public=r.public, shared=r.shared)


def quota_pb(r: Any) -> pb.Quota:
    return pb.Quota(
        tenant=r.id,
        project_id=r.project_id,
        limits=pb.QuotaValues(**{k: v for k, v in r.limits.items() if k in QUOTA_FIELDS}),
        usage=pb.QuotaValues(**{k: v for k, v in r.usage.items() if k in QUOTA_FIELDS}),
    )


def _idps(rows: list[dict[str, Any]]) -> list[pb.IdentityProvider]:
    return [
        pb.IdentityProvider(
            issuer=i.get("issuer", ""), protocol=i.get("protocol", ""), name=i.get("name", "")
        )
        for i in rows or []
    ]


def _cost(c: dict[str, Any] | None) -> pb.Cost | None:
    return pb.Cost(**c) if c else None


def _health_list(
    health: list[dict[str, Any]] | None, checked: datetime
) -> list[pb.ComponentHealth]:
    return [
        pb.ComponentHealth(
            component=h.get("component", ""),
            healthy=bool(h.get("healthy")),
            message=h.get("message", ""),
            checked_at=ts(checked),
        )
        for h in health or []
    ]


def _health(site: Any) -> list[pb.ComponentHealth]:
    return _health_list(site.health, site.creation_time)


class _Fresh:
    def __init__(self, creation_time: datetime, validity_s: int, valid_until: datetime) -> None:
        self.creation_time = creation_time
        self.validity_s = validity_s
        self.valid_until = valid_until


def record_freshness(row: Any, svc: Any, part: str) -> _Fresh:
    """A record's own freshness when the site dated it, else its part's on its service."""
    if row.valid_until is not None:
        return _Fresh(row.creation_time, row.validity_s, row.valid_until)
    return _Fresh(
        getattr(svc, f"{part}_creation_time"),
        getattr(svc, f"{part}_validity_s"),
        getattr(svc, f"{part}_valid_until"),
    )


# ---------------------------------------------------------------------- sites


def _counts(
    session: Session, site_ids: Sequence[str] | None = None
) -> dict[str, tuple[int, int, int]]:
    def per_site(model: Any) -> dict[str, int]:
        stmt = (
            sa.select(m.Service.site_id, sa.func.count())
            .select_from(model)
            .join(m.Service, m.Service.id == model.service_id)
            .group_by(m.Service.site_id)
        )
        if site_ids is not None:
            stmt = stmt.where(m.Service.site_id.in_(site_ids))
        return dict(session.execute(stmt).all())

    stmt = sa.select(m.Service.site_id, sa.func.count()).group_by(m.Service.site_id)
    if site_ids is not None:
        stmt = stmt.where(m.Service.site_id.in_(site_ids))
    services = dict(session.execute(stmt).all())
    flavors = per_site(m.Flavor)
    images = per_site(m.Image)
    keys = set(services) | set(flavors) | set(images)
    return {k: (services.get(k, 0), flavors.get(k, 0), images.get(k, 0)) for k in keys}


def site_summary(site: m.Site, counts: tuple[int, int, int], now: datetime) -> pb.SiteSummary:
    return pb.SiteSummary(
        id=site.id,
        name=site.name,
        country=site.country,
        status=STATUS[site_status(site, now)],
        freshness=_freshness(site, now),
        last_report_time=ts(site.last_report_at),
        service_count=counts[0],
        flavor_count=counts[1],
        image_count=counts[2],
        health=_health(site),
    )


def list_sites(session: Session, include_down: bool = False) -> pb.ListSitesResponse:
    now = utcnow()
    sites = session.execute(sa.select(m.Site).order_by(m.Site.id)).scalars().all()
    counts = _counts(session)
    out = pb.ListSitesResponse()
    for site in sites:
        if not include_down and site_status(site, now) == "down":
            continue
        out.sites.append(site_summary(site, counts.get(site.id, (0, 0, 0)), now))
    return out


def service_pb(svc: m.Service, children: dict[str, list[Any]], now: datetime) -> pb.Service:
    def fresh(part: str, row: Any) -> pb.Freshness:
        return _freshness(record_freshness(row, svc, part), now)

    msg = pb.Service(
        id=svc.id,
        site_id=svc.site_id,
        type=svc.type,
        endpoint=svc.endpoint,
        region=svc.region,
        api_version=svc.api_version,
        identity_providers=_idps(svc.identity_providers),
        healthy=svc.healthy,
        freshness=_freshness(svc, now),
        cost=_cost(svc.cost),
        properties=_str_map(svc.properties),
        public_ip_assignable=svc.public_ip_assignable,
    )
    for part, field, render in (
        ("flavors", msg.flavors, flavor_pb),
        ("images", msg.images, image_pb),
        ("networks", msg.networks, network_pb),
        ("quotas", msg.quotas, quota_pb),
    ):
        for row in children.get(part, []):
            item = field.add()
            item.CopyFrom(render(row))
            item.freshness.CopyFrom(fresh(part, row))
    return msg


def get_site(session: Session, site_id: str) -> pb.Site:
    now = utcnow()
    site = session.get(m.Site, site_id)
    if site is None:
        raise NotFound(f"no site {site_id!r}")
    services = (
        session.execute(
            sa.select(m.Service).where(m.Service.site_id == site_id).order_by(m.Service.id)
        )
        .scalars()
        .all()
    )
    ids = [s.id for s in services]
    children: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for part, model in m.CHILD_MODELS.items():
        if not ids:
            break
        for row in session.execute(
            sa.select(model).where(model.service_id.in_(ids)).order_by(model.service_id, model.id)
        ).scalars():
            children[row.service_id][part].append(row)
    counts = (
        len(services),
        sum(len(c["flavors"]) for c in children.values()),
        sum(len(c["images"]) for c in children.values()),
    )
    return pb.Site(
        summary=site_summary(site, counts, now),
        services=[service_pb(s, children[s.id], now) for s in services],
        gocdb_id=site.gocdb_id,
        homepage=site.homepage,
        support_emails=list(site.support_emails or []),
    )
