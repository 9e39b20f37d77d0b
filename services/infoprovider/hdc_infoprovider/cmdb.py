"""INDIGO CMDB-compatible documents, as the INDIGO PaaS orchestrator reads them.

A document is `{"_id", "_rev", "type", "data"}`; a `has_many` or list view is
`{"total_rows", "offset", "rows": [{"id", "key", "value", "doc"?}]}` (CouchDB view shape,
`doc` only with `include_docs=true`). Providers are sites, tenants are the per-tenant
quota records. Only current records are shown: a stale record must not be used for
placement, so it is absent here exactly as it is absent from FindCandidates. Each `data`
also carries hdc's `creationTime` and `validity`, which the orchestrator ignores.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlparse

import sqlalchemy as sa
from hdc_infoprovider import models as m
from hdc_infoprovider.ingest import to_utc
from hdc_infoprovider.query import record_freshness
from hdc_infoprovider.report import utcnow
from sqlalchemy.orm import Session

COMPUTE_TYPES_HINT = ("nova", "compute", "vm-management", "kubernetes", "marathon", "static")


class CmdbNotFound(Exception):
    pass


def _rev(data: dict[str, Any]) -> str:
    body = json.dumps(data, sort_keys=True, default=str).encode()
    return "1-" + hashlib.md5(body, usedforsecurity=False).hexdigest()


def _doc(doc_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"_id": doc_id, "_rev": _rev(data), "type": kind, "data": data}


def _fresh(row: Any) -> dict[str, Any]:
    return {"creationTime": to_utc(row.creation_time).isoformat(), "validity": row.validity_s}


def _current(model: Any, part: str, now: Any) -> Any:
    """SQL: the record is current (its own validity, else its part's on its service)."""
    part_until = getattr(m.Service, f"{part}_valid_until")
    return sa.or_(
        model.valid_until > now,
        sa.and_(model.valid_until.is_(None), part_until > now, m.Service.id == model.service_id),
    )


def provider_data(site: m.Site) -> dict[str, Any]:
    return {
        "id": site.id,
        "primary_key": site.gocdb_id,
        "name": site.name or site.id,
        "country": site.country,
        "country_code": site.country if len(site.country) == 2 else "",
        "roc": "",
        "subgrid": "",
        "giis_url": "",
        "status": "down" if to_utc(site.valid_until) < utcnow() else site.status,
        **_fresh(site),
    }


def service_data(svc: m.Service) -> dict[str, Any]:
    kind = "compute" if any(h in svc.type.lower() for h in COMPUTE_TYPES_HINT) else "storage"
    return {
        "service_type": svc.type,
        "endpoint": svc.endpoint,
        "provider_id": svc.site_id,
        "sitename": svc.site_id,
        "type": kind,
        "region": svc.region,
        "hostname": urlparse(svc.endpoint).hostname or "",
        "is_public_service": True,
        "iam_enabled": bool(svc.identity_providers),
        "public_ip_assignable": svc.public_ip_assignable,
        **_fresh(svc),
    }


def image_data(img: m.Image, svc: m.Service) -> dict[str, Any]:
    return {
        "image_id": img.id,
        "image_name": img.name,
        "image_description": img.description,
        "architecture": img.architecture,
        "type": img.os_type,
        "distribution": img.os_distribution,
        "version": img.os_version,
        "service": img.service_id,
        "user_name": img.user_name,
        "gpu_driver": bool(img.gpu_driver),
        "gpu_driver_version": img.gpu_driver,
        "cuda_support": img.cuda,
        "cuda_version": img.cuda_version,
        "cuDNN_version": img.cudnn_version,
        "docker_image": img.docker_image,
        **_fresh(record_freshness(img, svc, "images")),
    }


def flavor_data(f: m.Flavor, svc: m.Service) -> dict[str, Any]:
    return {
        "flavor_id": f.id,
        "flavor_name": f.name,
        "ram": f.ram_mb,
        "num_vcpus": f.cpus,
        "disk": f.disk_gb,
        "num_gpus": f.gpus,
        "gpu_vendor": f.gpu_vendor,
        "gpu_model": f.gpu_model,
        "infiniband_support": f.infiniband,
        "service": f.service_id,
        **_fresh(record_freshness(f, svc, "flavors")),
    }


def tenant_data(q: m.Quota, svc: m.Service, public_network: str = "") -> dict[str, Any]:
    return {
        "tenant_id": q.project_id or q.id,
        "tenant_name": q.project_name or q.id,
        "service": q.service_id,
        "iam_organisation": q.id,
        "public_network_name": public_network,
        "quota": {"limits": q.limits, "usage": q.usage},
        **_fresh(record_freshness(q, svc, "quotas")),
    }


KINDS: dict[str, tuple[type[Any], str, str]] = {
    "images": (m.Image, "image", "images"),
    "flavors": (m.Flavor, "flavor", "flavors"),
    "tenants": (m.Quota, "tenant", "quotas"),
}


def _rows(
    items: list[tuple[str, dict[str, Any]]],
    kind: str,
    key: Any,
    include_docs: bool,
    total: int | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    rows = []
    for doc_id, data in items:
        row: dict[str, Any] = {
            "id": doc_id,
            "key": key if key is not None else doc_id,
            "value": {k: v for k, v in data.items() if not isinstance(v, dict | list)},
        }
        if include_docs:
            row["doc"] = _doc(doc_id, kind, data)
        rows.append(row)
    return {"total_rows": total if total is not None else len(rows), "offset": offset, "rows": rows}


class Cmdb:
    def __init__(self, session: Session) -> None:
        self.s = session
        self.now = utcnow()

    # providers

    def provider(self, site_id: str) -> dict[str, Any]:
        site = self.s.get(m.Site, site_id)
        if site is None:
            raise CmdbNotFound(f"no provider {site_id!r}")
        return _doc(site.id, "provider", provider_data(site))

    def provider_list(self, include_docs: bool, limit: int, skip: int) -> dict[str, Any]:
        total = self.s.scalar(sa.select(sa.func.count()).select_from(m.Site)) or 0
        sites = self.s.scalars(sa.select(m.Site).order_by(m.Site.id).offset(skip).limit(limit))
        items = [(s.id, provider_data(s)) for s in sites]
        return _rows(items, "provider", ["provider"], include_docs, total, skip)

    def provider_services(self, site_id: str, include_docs: bool) -> dict[str, Any]:
        if self.s.get(m.Site, site_id) is None:
            raise CmdbNotFound(f"no provider {site_id!r}")
        svcs = self.s.scalars(
            sa.select(m.Service)
            .where(m.Service.site_id == site_id, m.Service.valid_until > self.now)
            .order_by(m.Service.id)
        )
        items = [(s.id, service_data(s)) for s in svcs]
        return _rows(items, "service", [site_id, "services"], include_docs)

    # services

    def service(self, service_id: str) -> dict[str, Any]:
        svc = self.s.get(m.Service, service_id)
        if svc is None or to_utc(svc.valid_until) < self.now:
            raise CmdbNotFound(f"no current service {service_id!r}")
        return _doc(svc.id, "service", service_data(svc))

    def service_list(self, include_docs: bool, limit: int, skip: int) -> dict[str, Any]:
        where = m.Service.valid_until > self.now
        total = self.s.scalar(sa.select(sa.func.count()).select_from(m.Service).where(where))
        svcs = self.s.scalars(
            sa.select(m.Service).where(where).order_by(m.Service.id).offset(skip).limit(limit)
        )
        items = [(s.id, service_data(s)) for s in svcs]
        return _rows(items, "service", ["service"], include_docs, total or 0, skip)

    def service_has_many(self, service_id: str, kind: str, include_docs: bool) -> dict[str, Any]:
        self.service(service_id)
        model, doc_kind, part = KINDS[kind]
        rows = self.s.execute(
            sa.select(model, m.Service)
            .join(m.Service, m.Service.id == model.service_id)
            .where(model.service_id == service_id, _current(model, part, self.now))
            .order_by(model.id)
        ).all()
        items = [(r[0].uid, self._render(kind, r[0], r[1])) for r in rows]
        return _rows(items, doc_kind, [service_id, kind], include_docs)

    def _render(self, kind: str, row: Any, svc: m.Service) -> dict[str, Any]:
        if kind == "images":
            return image_data(row, svc)
        if kind == "flavors":
            return flavor_data(row, svc)
        return tenant_data(row, svc, self._public_network(row.service_id))

    def _public_network(self, service_id: str) -> str:
        name = self.s.scalar(
            sa.select(m.Network.name)
            .where(m.Network.service_id == service_id, m.Network.public.is_(True))
            .order_by(m.Network.id)
            .limit(1)
        )
        return name or ""

    # images, flavors, tenants

    def one(self, kind: str, doc_id: str) -> dict[str, Any]:
        model, doc_kind, part = KINDS[kind]
        found = self.s.execute(
            sa.select(model, m.Service)
            .join(m.Service, m.Service.id == model.service_id)
            .where(model.uid == doc_id, _current(model, part, self.now))
        ).first()
        if found is None:
            raise CmdbNotFound(f"no current {doc_kind} {doc_id!r}")
        return _doc(found[0].uid, doc_kind, self._render(kind, found[0], found[1]))

    def listing(self, kind: str, include_docs: bool, limit: int, skip: int) -> dict[str, Any]:
        model, doc_kind, part = KINDS[kind]
        base = (
            sa.select(model, m.Service)
            .join(m.Service, m.Service.id == model.service_id)
            .where(_current(model, part, self.now))
        )
        total = self.s.scalar(sa.select(sa.func.count()).select_from(base.subquery()))
        rows = self.s.execute(base.order_by(model.uid).offset(skip).limit(limit)).all()
        items = [(r[0].uid, self._render(kind, r[0], r[1])) for r in rows]
        return _rows(items, doc_kind, [doc_kind], include_docs, total or 0, skip)

    def tenant_has_many(self, tenant_uid: str, kind: str, include_docs: bool) -> dict[str, Any]:
        tenant = self.one("tenants", tenant_uid)
        listing = self.service_has_many(tenant["data"]["service"], kind, include_docs)
        for row in listing["rows"]:
            row["key"] = [tenant_uid, kind]
        return listing

    def tenants_by_organisation(self, organisation: str, include_docs: bool) -> dict[str, Any]:
        rows = self.s.execute(
            sa.select(m.Quota, m.Service)
            .join(m.Service, m.Service.id == m.Quota.service_id)
            .where(m.Quota.id == organisation, _current(m.Quota, "quotas", self.now))
            .order_by(m.Quota.uid)
        ).all()
        items = [(r[0].uid, self._render("tenants", r[0], r[1])) for r in rows]
        return _rows(items, "tenant", ["tenant", "iam_organisation", organisation], include_docs)
