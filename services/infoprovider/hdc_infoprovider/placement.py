"""FindCandidates: which services can run a workload, with the flavors and images to use.

Placement runs over every site at once, often, and must answer in milliseconds. Each query
replica therefore keeps the catalog (services, flavors, images) of every site in memory as
column arrays, and reloads a site's part only when its `catalog_version` in the database
moved, which it checks on every query. Everything that changes with each report —
freshness, health, site status, quotas — is read from the database on every query, so a
stale record or a down site is excluded the moment its validity ends, on every replica.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from sqlalchemy.orm import Session

from hdc_infoprovider import models as m
from hdc_infoprovider.ingest import to_utc
from hdc_infoprovider.query import (
    STATUS,
    _cost,
    _health_list,
    _idps,
    _str_map,
    flavor_pb,
    image_pb,
    quota_pb,
    ts,
)
from hdc_infoprovider.report import utcnow

log = logging.getLogger(__name__)
ARCH_ALIASES = {
    "x86_64": ("x86_64", "amd64", "x64"),
    "amd64": ("x86_64", "amd64", "x64"),
    "aarch64": ("aarch64", "arm64"),
    "arm64": ("aarch64", "arm64"),
}
NO_TIME = np.inf  # "no own freshness": the record follows its part's freshness


_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_AWARE = datetime(1970, 1, 1, tzinfo=UTC)


def epoch(dt: datetime) -> float:
    """Seconds since the epoch of a UTC datetime (SQLite hands back naive ones)."""
    return (dt - (_EPOCH_NAIVE if dt.tzinfo is None else _EPOCH_AWARE)).total_seconds()


def _epoch(dt: datetime | None) -> float:
    return NO_TIME if dt is None else epoch(dt)


def _stamp(seconds: float) -> Timestamp:
    whole = int(seconds)
    return Timestamp(seconds=whole, nanos=int(round((seconds - whole) * 1e9)) % 1_000_000_000)


def version_key(v: str) -> float:
    """Dotted version as a sortable number: "12.2" -> 12.002 (minor < 1000)."""
    nums = [int(x) for x in re.findall(r"\d+", v)[:2]] or [0]
    return nums[0] + (nums[1] if len(nums) > 1 else 0) / 1000


class _Strings:
    """Interning of lower-cased strings to integer codes (codes only grow)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {"": 0}
        self.values: list[str] = [""]

    def code(self, s: str) -> int:
        c = self.codes.get(s)
        if c is None:
            c = self.codes[s] = len(self.values)
            self.values.append(s)
        return c


@dataclass
class _SiteCatalog:
    version: int
    flavor_cols: dict[str, Any]
    flavor_rows: tuple[bytes, ...]  # serialised pb.Flavor: a tenth of the memory of rows
    image_cols: dict[str, Any]
    image_rows: tuple[bytes, ...]  # serialised pb.Image
    image_keys: tuple[tuple[str, str], ...]  # (id, name) of each image, for name lookups


@dataclass
class _Flat:
    """All sites' flavors and images, as columns; rows sorted by service then preference."""

    services: list[str] = field(default_factory=list)
    f: dict[str, np.ndarray] = field(default_factory=dict)
    f_rows: tuple[bytes, ...] = ()
    i: dict[str, np.ndarray] = field(default_factory=dict)
    i_rows: tuple[bytes, ...] = ()
    i_by_name: dict[str, Any] = field(default_factory=dict)


FLAVOR_COLS = (
    "svc",
    "cpus",
    "ram_mb",
    "disk_gb",
    "gpus",
    "infiniband",
    "vendor",
    "model",
    "own_until",
)
IMAGE_COLS = ("svc", "os_type", "distro", "version", "arch", "cuda", "cuda_v", "own_until")


_F, _I, _SV, _ST = m.Flavor.__table__, m.Image.__table__, m.Service.__table__, m.Site.__table__
_IDS = sa.bindparam("ids", expanding=True)
_LOAD_FLAVORS = (
    sa.select(_SV.c.site_id, *[c for c in _F.c if c.name not in ("uid", "digest")])
    .join(_SV, _SV.c.id == _F.c.service_id)
    .where(_SV.c.site_id.in_(_IDS))
    .order_by(_F.c.service_id, _F.c.gpus, _F.c.cpus, _F.c.ram_mb, _F.c.disk_gb, _F.c.id)
)
_LOAD_IMAGES = (
    sa.select(_SV.c.site_id, *[c for c in _I.c if c.name not in ("uid", "digest")])
    .join(_SV, _SV.c.id == _I.c.service_id)
    .where(_SV.c.site_id.in_(_IDS))
    .order_by(_I.c.service_id, _I.c.name, _I.c.id)
)
_LOAD_SERVICES = (
    sa.select(
        _SV.c.id, _SV.c.site_id, _SV.c.type, _SV.c.endpoint, _SV.c.region,
        _SV.c.identity_providers, _SV.c.cost, _SV.c.properties,
        _ST.c.name.label("site_name"), _ST.c.country,
    )
    .join(_ST, _ST.c.id == _SV.c.site_id)
    .where(_SV.c.site_id.in_(_IDS))
)  # fmt: skip


def _template(r: Any) -> pb.Candidate:
    cand = pb.Candidate(
        site_id=r.site_id,
        site_name=r.site_name,
        service_id=r.id,
        service_type=r.type,
        endpoint=r.endpoint,
        region=r.region,
        identity_providers=_idps(r.identity_providers),
        properties=_str_map(r.properties),
        country=r.country,
    )
    if r.cost:
        cand.cost.CopyFrom(_cost(r.cost))
    return cand


class Catalog:
    def __init__(self) -> None:
        self.strings = _Strings()
        self._sites: dict[str, _SiteCatalog] = {}
        # The part of a candidate that only changes with the catalog (site and service
        # identity, endpoint, IdPs, cost): copied into each answer.
        self._templates: dict[str, pb.Candidate] = {}
        self._flat: _Flat | None = None
        self._lock = threading.Lock()
        self._flavor_pb: dict[int, pb.Flavor] = {}
        self.quotas = _QuotaCache()
        self._live_token: tuple[Any, ...] | None = None
        self._live_rows: list[_LiveRow] = []
        self._quota_keys: dict[str, tuple[Any, list[Any]]] = {}
        # Free instances by (service, tenant, quota digest, smallest flavor).
        self.free: dict[tuple[str, str, str, str], int] = {}
        self._fresh: dict[tuple[str, Any, int], pb.Freshness] = {}
        self._health: dict[tuple[str, Any], list[pb.ComponentHealth]] = {}
        self._image_pb: dict[int, pb.Image] = {}

    # -- loading ---------------------------------------------------------------------

    def sync(self, session: Session, versions: dict[str, int]) -> _Flat:
        with self._lock:
            changed = [
                s
                for s, v in versions.items()
                if s not in self._sites or self._sites[s].version != v
            ]
            dropped = [s for s in self._sites if s not in versions]
            if changed:
                # A load that fails half-way must not leave a flat view of mixed versions.
                self._flat = None
                self._load(session, changed, versions)
            for s in dropped:
                del self._sites[s]
            if changed or dropped or self._flat is None:
                self._flat = self._rebuild()
            return self._flat

    def _load(self, session: Session, site_ids: list[str], versions: dict[str, int]) -> None:
        for chunk in range(0, len(site_ids), 200):
            ids = site_ids[chunk : chunk + 200]
            flavors = defaultdict(list)
            for r in session.execute(_LOAD_FLAVORS, {"ids": ids}):
                flavors[r.site_id].append(r)
            images = defaultdict(list)
            for r in session.execute(_LOAD_IMAGES, {"ids": ids}):
                images[r.site_id].append(r)
            for r in session.execute(_LOAD_SERVICES, {"ids": ids}):
                self._templates[r.id] = _template(r)
            for site_id in ids:
                self._sites[site_id] = self._site_catalog(
                    versions[site_id], flavors.get(site_id, []), images.get(site_id, [])
                )

    def health(
        self, session: Session, sites: dict[str, Any]
    ) -> dict[str, list[pb.ComponentHealth]]:
        """Component health of these sites (keyed by their report time, read when it moved)."""
        out: dict[str, list[pb.ComponentHealth]] = {}
        missing = []
        for site_id, ct in sites.items():
            hit = self._health.get((site_id, ct))
            if hit is None:
                missing.append(site_id)
            else:
                out[site_id] = hit
        if len(self._health) > 4 * len(sites) + 100:
            self._health.clear()  # old report times of every site: drop them all at once
        for chunk in range(0, len(missing), 500):
            for r in session.execute(_HEALTH, {"ids": missing[chunk : chunk + 500]}):
                ct = sites[r.id]
                out[r.id] = self._health[(r.id, ct)] = _health_list(r.health, ct)
        return out

    def live(self, session: Session) -> tuple[list[_LiveRow], _Flat]:
        """Live state of every service, re-read only when a report was accepted since."""
        token = tuple(session.execute(_STATE).one())
        with self._lock:
            if token == self._live_token and self._flat is not None:
                return self._live_rows, self._flat
        rows = [_LiveRow(r) for r in session.execute(_LIVE)]
        flat = self.sync(session, {r.site_id: r.catalog_version for r in rows})
        with self._lock:
            self._live_token, self._live_rows = token, rows
        return rows, flat

    def quota_keys(self, session: Session, tenant: str) -> list[Any]:
        """(service, digest, validity) of a tenant's quotas, re-read when the state moved."""
        token = self._live_token
        hit = self._quota_keys.get(tenant)
        if hit is not None and token is not None and hit[0] == token:
            return hit[1]
        keys = session.execute(_QUOTA_KEYS, {"tenant": tenant}).all()
        if len(self._quota_keys) > 1000:
            self._quota_keys.clear()
        self._quota_keys[tenant] = (token, keys)
        return keys

    def freshness(self, s: Any, now_s: float) -> pb.Freshness:
        """A service's Freshness message, kept until its next report."""
        key = (s.id, s.creation_time, s.validity_s)
        msg = self._fresh.get(key)
        if msg is None:
            if len(self._fresh) > 20_000:
                self._fresh.clear()
            ct = epoch(s.creation_time)
            until = epoch(s.valid_until)
            msg = self._fresh[key] = pb.Freshness(
                creation_time=_stamp(ct), valid_until=_stamp(until), validity_s=s.validity_s
            )
        if s.until_s < now_s:  # never cached as stale: copy and flag
            msg = pb.Freshness(stale=True, creation_time=msg.creation_time,
                               valid_until=msg.valid_until, validity_s=msg.validity_s)  # fmt: skip
        return msg

    def template(self, service_id: str) -> pb.Candidate | None:
        return self._templates.get(service_id)

    def _site_catalog(self, version: int, flavors: list[Any], images: list[Any]) -> _SiteCatalog:
        code = self.strings.code
        fc = {
            # Tuples of strings, not object arrays or lists: the cyclic GC stops tracking
            # them, so a big catalog does not slow every collection down.
            "svc_id": tuple(f.service_id for f in flavors),
            "cpus": np.array([f.cpus for f in flavors], dtype=np.int64),
            "ram_mb": np.array([f.ram_mb for f in flavors], dtype=np.int64),
            "disk_gb": np.array([f.disk_gb for f in flavors], dtype=np.int64),
            "gpus": np.array([f.gpus for f in flavors], dtype=np.int64),
            "infiniband": np.array([f.infiniband for f in flavors], dtype=bool),
            "vendor": np.array([code(f.gpu_vendor.lower()) for f in flavors], dtype=np.int64),
            "model": np.array([code(f.gpu_model.lower()) for f in flavors], dtype=np.int64),
            "own_until": np.array([_epoch(f.valid_until) for f in flavors], dtype=np.float64),
        }
        ic = {
            "svc_id": tuple(i.service_id for i in images),
            "os_type": np.array([code(i.os_type.lower()) for i in images], dtype=np.int64),
            "distro": np.array([code(i.os_distribution.lower()) for i in images], dtype=np.int64),
            "version": np.array([code(i.os_version) for i in images], dtype=np.int64),
            "arch": np.array([code(i.architecture.lower()) for i in images], dtype=np.int64),
            "cuda": np.array([i.cuda for i in images], dtype=bool),
            "cuda_v": np.array([version_key(i.cuda_version) for i in images], dtype=np.float64),
            "own_until": np.array([_epoch(i.valid_until) for i in images], dtype=np.float64),
        }
        return _SiteCatalog(
            version,
            fc,
            tuple(flavor_pb(f).SerializeToString() for f in flavors),
            ic,
            tuple(image_pb(i).SerializeToString() for i in images),
            tuple((i.id, i.name) for i in images),
        )

    def _rebuild(self) -> _Flat:
        flat = _Flat()
        sites = [self._sites[s] for s in sorted(self._sites)]
        svc_index: dict[str, int] = {}
        for cat in sites:
            for sid in [*cat.flavor_cols["svc_id"], *cat.image_cols["svc_id"]]:
                if sid not in svc_index:
                    svc_index[sid] = len(flat.services)
                    flat.services.append(sid)

        def cat_cols(
            parts: list[dict[str, np.ndarray]], names: tuple[str, ...]
        ) -> dict[str, np.ndarray]:
            out = {}
            for name in names:
                if name == "svc":
                    arrs = [
                        np.array([svc_index[s] for s in p["svc_id"]], dtype=np.int64) for p in parts
                    ]
                else:
                    arrs = [p[name] for p in parts]
                out[name] = np.concatenate(arrs) if arrs else np.zeros(0)
            return out

        flat.f = cat_cols([c.flavor_cols for c in sites], FLAVOR_COLS)
        flat.f_rows = tuple(r for c in sites for r in c.flavor_rows)
        flat.i = cat_cols([c.image_cols for c in sites], IMAGE_COLS)
        flat.i_rows = tuple(r for c in sites for r in c.image_rows)
        # name/id -> row, or a tuple of rows when several images share it. Plain ints and
        # tuples of ints keep the cyclic GC from walking 200,000 small lists on every pass.
        by_name: dict[str, Any] = {}
        keys = [k for c in sites for k in c.image_keys]
        for n, (image_id, name) in enumerate(keys):
            for key in (image_id, name) if name != image_id else (image_id,):
                had = by_name.get(key)
                if had is None:
                    by_name[key] = n
                elif isinstance(had, int):
                    by_name[key] = [had, n]
                else:
                    had.append(n)
        flat.i_by_name = {k: (v if isinstance(v, int) else tuple(v)) for k, v in by_name.items()}
        self._flavor_pb.clear()
        self._image_pb.clear()
        return flat

    def flavor_msg(self, flat: _Flat, n: int) -> pb.Flavor:
        msg = self._flavor_pb.get(n)
        if msg is None:
            if len(self._flavor_pb) > 100_000:
                self._flavor_pb.clear()
            msg = self._flavor_pb[n] = pb.Flavor.FromString(flat.f_rows[n])
        return msg

    def image_msg(self, flat: _Flat, n: int) -> pb.Image:
        msg = self._image_pb.get(n)
        if msg is None:
            if len(self._image_pb) > 100_000:
                self._image_pb.clear()
            msg = self._image_pb[n] = pb.Image.FromString(flat.i_rows[n])
        return msg


# ---------------------------------------------------------------------- the query


def _needs_flavor(req: pb.Requirements) -> bool:
    return bool(
        req.cpus
        or req.ram_mb
        or req.disk_gb
        or req.gpu.count
        or req.gpu.vendor
        or req.gpu.model
        or req.infiniband
    )


def _has_image_req(req: pb.Requirements) -> bool:
    i = req.image
    return req.HasField("image") and bool(
        i.name
        or i.os_type
        or i.os_distribution
        or i.os_version
        or i.architecture
        or i.cuda
        or i.min_cuda_version
    )


def _describe_flavor_req(req: pb.Requirements) -> str:
    parts = []
    if req.cpus:
        parts.append(f">= {req.cpus} CPUs")
    if req.ram_mb:
        parts.append(f">= {req.ram_mb} MB RAM")
    if req.disk_gb:
        parts.append(f">= {req.disk_gb} GB disk")
    if req.gpu.count or req.gpu.vendor or req.gpu.model:
        gpu = f">= {max(1, req.gpu.count)} GPUs"
        if req.gpu.vendor or req.gpu.model:
            gpu += f" ({' '.join(x for x in (req.gpu.vendor, req.gpu.model) if x)})"
        parts.append(gpu)
    if req.infiniband:
        parts.append("Infiniband")
    return "no current flavor with " + ", ".join(parts)


def _describe_image_req(img: pb.ImageRequirement) -> str:
    fields = [
        f"{k}={v}"
        for k, v in (
            ("name", img.name),
            ("os_type", img.os_type),
            ("os_distribution", img.os_distribution),
            ("os_version", img.os_version),
            ("architecture", img.architecture),
            ("cuda", "yes" if img.cuda else ""),
            ("min_cuda_version", img.min_cuda_version),
        )
        if v
    ]
    return "no current image with " + ", ".join(fields)


def _first_k(svc: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Of the row indices `idx` (sorted by service), keep the first k of each service."""
    if not k or not len(idx):
        return idx
    groups = svc[idx]
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    rank = np.arange(len(idx)) - np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
    return idx[rank < k]


def _free_instances(quota: Any, flavor: pb.Flavor | None) -> int:
    """Instances of `flavor` the tenant's remaining quota allows; -1 = unlimited."""
    limits, usage = quota.limits or {}, quota.usage or {}
    need = {"instances": 1}
    if flavor is not None:
        need.update(cores=flavor.cpus, ram_mb=flavor.ram_mb, gpus=flavor.gpus)
    free = -1
    for key, per_instance in need.items():
        limit = limits.get(key)
        if limit is None or limit < 0 or per_instance <= 0:
            continue
        left = max(0, limit - usage.get(key, 0)) // per_instance
        free = left if free < 0 else min(free, left)
    return free


_S, _SITE = m.Service, m.Site
_LIVE = (
    sa.select(
        _S.id, _S.site_id, _S.type, _S.healthy, _S.creation_time, _S.validity_s, _S.valid_until,
        _S.flavors_valid_until, _S.images_valid_until,
        _SITE.status.label("site_status"), _SITE.valid_until.label("site_valid_until"),
        _SITE.creation_time.label("site_ct"), _SITE.catalog_version,
    )
    .join(_SITE, _SITE.id == _S.site_id)
    .order_by(_S.id)
)  # fmt: skip
# Every accepted report adds one to its site's reports_accepted, in its own transaction: the
# sum is a token of the committed state of everything _LIVE reads (statuses set by the down
# detector aside, which placement derives from valid_until itself).
_STATE = sa.select(
    sa.func.count(), sa.func.coalesce(sa.func.sum(_SITE.reports_accepted), 0)
).select_from(_SITE)


class _LiveRow:
    """A _LIVE row with its times as epoch seconds, computed once per state."""

    __slots__ = (
        "id", "site_id", "type", "healthy", "creation_time", "validity_s", "valid_until",
        "site_status", "site_valid_until", "site_ct", "catalog_version",
        "until_s", "site_until_s", "flavors_until_s", "images_until_s",
    )  # fmt: skip

    def __init__(self, r: Any) -> None:
        for name in self.__slots__[:11]:
            setattr(self, name, getattr(r, name))
        self.until_s = epoch(r.valid_until)
        self.site_until_s = epoch(r.site_valid_until)
        self.flavors_until_s = epoch(r.flavors_valid_until)
        self.images_until_s = epoch(r.images_valid_until)


_HEALTH = sa.select(_SITE.id, _SITE.health).where(_SITE.id.in_(sa.bindparam("ids", expanding=True)))
_Q = m.Quota
_QUOTA_KEYS = (
    sa.select(_Q.service_id, _Q.digest, _Q.valid_until, _S.quotas_valid_until)
    .join(_S, _S.id == _Q.service_id)
    .where(_Q.id == sa.bindparam("tenant"))
)
_QUOTA_ROWS = sa.select(_Q.service_id, _Q.id, _Q.project_id, _Q.limits, _Q.usage, _Q.digest).where(
    _Q.id == sa.bindparam("tenant"), _Q.service_id.in_(sa.bindparam("ids", expanding=True))
)


class _QuotaCache:
    """Parsed quotas by (service, tenant, digest): usage moves, but not on every report."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[str, Any, pb.Quota]] = {}

    def get(
        self, session: Session, tenant: str, keys: list[Any]
    ) -> dict[str, tuple[Any, pb.Quota]]:
        out: dict[str, tuple[Any, pb.Quota]] = {}
        missing = []
        for k in keys:
            hit = self.rows.get((k.service_id, tenant))
            if hit is not None and hit[0] == k.digest:
                out[k.service_id] = (hit[1], hit[2])
            else:
                missing.append(k.service_id)
        for chunk in range(0, len(missing), 500):
            ids = missing[chunk : chunk + 500]
            for r in session.execute(_QUOTA_ROWS, {"tenant": tenant, "ids": ids}):
                msg = quota_pb(r)
                self.rows[(r.service_id, tenant)] = (r.digest, r, msg)
                out[r.service_id] = (r, msg)
        return out


def find_candidates(session: Session, req: pb.Requirements, catalog: Catalog) -> pb.Candidates:
    now = utcnow()
    now_s = now.timestamp()
    out = pb.Candidates(evaluated_at=ts(now))

    # Live state of every service: freshness, health, site status, catalog version (one
    # query; the request's service filters apply below so the catalog sees every site).
    live, flat = catalog.live(session)
    types = set(req.service_types)
    only = set(req.site_ids)
    never = set(req.exclude_site_ids)
    live = [
        s
        for s in live
        if (not types or s.type in types)
        and (not only or s.site_id in only)
        and s.site_id not in never
    ]

    alive: dict[str, Any] = {}
    down: set[str] = set()
    for s in live:
        if s.site_until_s < now_s:
            if s.site_id not in down:
                down.add(s.site_id)
                out.excluded.append(
                    pb.Exclusion(
                        site_id=s.site_id,
                        reason="site down: no report since it expired at "
                        f"{to_utc(s.site_valid_until).isoformat()}",
                    )
                )
        elif s.until_s < now_s:
            out.excluded.append(
                pb.Exclusion(site_id=s.site_id, service_id=s.id,
                             reason=f"stale: service record expired at {to_utc(s.valid_until).isoformat()}")
            )  # fmt: skip
        elif not s.healthy and not req.include_unhealthy:
            out.excluded.append(
                pb.Exclusion(site_id=s.site_id, service_id=s.id,
                             reason="unhealthy: its collector failed at the last report")
            )  # fmt: skip
        else:
            alive[s.id] = s
    if not alive:
        return out

    # Per-service vectors over the catalog's service index.
    nsvc = len(flat.services)
    svc_ok = np.zeros(nsvc, dtype=bool)
    f_part_until = np.full(nsvc, -np.inf)
    i_part_until = np.full(nsvc, -np.inf)
    for n, sid in enumerate(flat.services):
        s = alive.get(sid)
        if s is not None:
            svc_ok[n] = True
            f_part_until[n] = s.flavors_until_s
            i_part_until[n] = s.images_until_s

    # Flavors: smallest matching first (the one a placement picks), up to k per service.
    f = flat.f
    flavors: dict[str, list[pb.Flavor]] = defaultdict(list)
    if len(f.get("svc", ())):
        fsvc = f["svc"]
        mask = svc_ok[fsvc]
        mask &= np.where(f["own_until"] == NO_TIME, f_part_until[fsvc], f["own_until"]) > now_s
        if req.cpus:
            mask &= f["cpus"] >= req.cpus
        if req.ram_mb:
            mask &= f["ram_mb"] >= req.ram_mb
        if req.disk_gb:
            mask &= f["disk_gb"] >= req.disk_gb
        if req.gpu.count or req.gpu.vendor or req.gpu.model:
            mask &= f["gpus"] >= max(1, req.gpu.count)
        if req.gpu.vendor:
            mask &= f["vendor"] == catalog.strings.codes.get(req.gpu.vendor.lower(), -1)
        if req.gpu.model:
            want = req.gpu.model.lower()
            hit = np.array([want in v for v in catalog.strings.values], dtype=bool)
            mask &= hit[f["model"]]
        if req.infiniband:
            mask &= f["infiniband"]
        sel = _first_k(fsvc, np.flatnonzero(mask), req.max_flavors_per_candidate)
        for n, sv in zip(sel.tolist(), fsvc[sel].tolist(), strict=True):
            flavors[flat.services[sv]].append(catalog.flavor_msg(flat, n))
    ids = list(alive)
    if _needs_flavor(req):
        reason = _describe_flavor_req(req)
        for sid in ids:
            if sid not in flavors:
                out.excluded.append(
                    pb.Exclusion(site_id=alive[sid].site_id, service_id=sid, reason=reason)
                )
        ids = [sid for sid in ids if sid in flavors]

    # Images.
    images: dict[str, list[pb.Image]] = defaultdict(list)
    i = flat.i
    if ids and len(i.get("svc", ())):
        isvc = i["svc"]
        wanted_svc = np.zeros(nsvc, dtype=bool)
        pos = {sid: n for n, sid in enumerate(flat.services)}
        for sid in ids:
            if sid in pos:
                wanted_svc[pos[sid]] = True
        img = req.image
        codes = catalog.strings.codes
        if img.name:
            rows = flat.i_by_name.get(img.name, ())
            cand = np.array([rows] if isinstance(rows, int) else rows, dtype=np.int64)
            mask = np.zeros(len(isvc), dtype=bool)
            mask[cand] = True
        else:
            mask = np.ones(len(isvc), dtype=bool)
        mask &= wanted_svc[isvc]
        mask &= np.where(i["own_until"] == NO_TIME, i_part_until[isvc], i["own_until"]) > now_s
        if img.os_type:
            mask &= i["os_type"] == codes.get(img.os_type.lower(), -1)
        if img.os_distribution:
            mask &= i["distro"] == codes.get(img.os_distribution.lower(), -1)
        if img.os_version:
            mask &= i["version"] == codes.get(img.os_version, -1)
        if img.architecture:
            arch = img.architecture.lower()
            mask &= np.isin(i["arch"], [codes.get(a, -1) for a in ARCH_ALIASES.get(arch, (arch,))])
        if img.cuda or img.min_cuda_version:
            mask &= i["cuda"]
        if img.min_cuda_version:
            mask &= i["cuda_v"] >= version_key(img.min_cuda_version)
        sel = _first_k(isvc, np.flatnonzero(mask), req.max_images_per_candidate)
        for n, sv in zip(sel.tolist(), isvc[sel].tolist(), strict=True):
            images[flat.services[sv]].append(catalog.image_msg(flat, n))
    if _has_image_req(req):
        reason = _describe_image_req(req.image)
        for sid in ids:
            if sid not in images:
                out.excluded.append(
                    pb.Exclusion(site_id=alive[sid].site_id, service_id=sid, reason=reason)
                )
        ids = [sid for sid in ids if sid in images]

    # Quota of the requested tenant (live: usage changes with every report).
    quotas: dict[str, Any] = {}
    free: dict[str, int] = {}
    if ids and req.tenant:
        wanted = max(1, req.instances)
        current = []
        for k in catalog.quota_keys(session, req.tenant):
            until = k.valid_until if k.valid_until is not None else k.quotas_valid_until
            if k.service_id in alive and epoch(until) > now_s:
                current.append(k)
        quotas = catalog.quotas.get(session, req.tenant, current)
        keep = []
        for sid in ids:
            q = quotas.get(sid, (None, None))[0]
            if q is None:
                out.excluded.append(
                    pb.Exclusion(site_id=alive[sid].site_id, service_id=sid,
                                 reason=f"tenant {req.tenant!r} has no current quota at this service")
                )  # fmt: skip
                continue
            smallest = flavors[sid][0] if flavors.get(sid) else None
            key = (sid, req.tenant, q.digest, smallest.id if smallest else "")
            n = catalog.free.get(key)
            if n is None:
                if len(catalog.free) > 100_000:
                    catalog.free.clear()
                n = catalog.free[key] = _free_instances(q, smallest)
            if 0 <= n < wanted:
                what = f" of flavor {smallest.name or smallest.id}" if smallest else ""
                out.excluded.append(
                    pb.Exclusion(site_id=alive[sid].site_id, service_id=sid,
                                 reason=f"quota: tenant {req.tenant!r} has room for {n} instance(s){what}, "
                                 f"{wanted} needed")
                )  # fmt: skip
                continue
            free[sid] = n
            keep.append(sid)
        ids = keep

    health = catalog.health(session, {alive[sid].site_id: alive[sid].site_ct for sid in ids})
    for sid in ids:
        s = alive[sid]
        cand = out.candidates.add()
        template = catalog.template(sid)
        if template is not None:
            cand.CopyFrom(template)
        cand.flavors.extend(flavors.get(sid, ()))
        cand.images.extend(images.get(sid, ()))
        cand.status = STATUS[s.site_status]
        cand.health.extend(health.get(s.site_id, ()))
        cand.freshness.CopyFrom(catalog.freshness(s, now_s))
        cand.free_instances = free.get(sid, -1)
        if sid in quotas:
            cand.quotas.append(quotas[sid][1])
    return out


class CatalogWarmer:
    """Background start-up load of the catalog, so a replica's first placement query does
    not pay for reading every site (seconds at 1,000 sites)."""

    def __init__(self, sessions: Any, catalog: Catalog) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self._thread: threading.Thread | None = None

    def warm(self) -> None:
        with self.sessions() as s:
            versions = dict(s.execute(sa.select(m.Site.id, m.Site.catalog_version)).all())
            self.catalog.sync(s, versions)

    def start(self) -> None:
        def run() -> None:
            try:
                self.warm()
            except Exception:  # the first query loads it instead
                log.exception("catalog warm-up failed")

        self._thread = threading.Thread(target=run, name="infoprovider-catalog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
