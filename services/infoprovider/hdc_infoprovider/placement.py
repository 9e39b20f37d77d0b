"""FindCandidates: which services can run a workload, with the flavors and images to use.

Placement runs over every site at once, often, and must answer in milliseconds. Each query
replica therefore keeps the catalog (services, flavors, images) of every site in memory as
column arrays, and reloads a site's part only when its `catalog_version` in the database
moved, which it checks on every query. Everything that changes with each report —
freshness, health, site status, quotas — is read from the database on every query, so a
stale record or a down site is excluded the moment its validity ends, on every replica.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

import numpy as np
import sqlalchemy as sa
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
    # Each flavor/image as it appears inside a serialised Candidate (field tag, length,
    # message): a reply is assembled by joining these, never by building messages.
    flavor_fields: tuple[bytes, ...]
    image_cols: dict[str, Any]
    image_fields: tuple[bytes, ...]
    image_keys: tuple[tuple[str, str], ...]  # (id, name) of each image, for name lookups


@dataclass
class _Flat:
    """All sites' flavors and images, as columns; rows sorted by service then preference."""

    services: list[str] = field(default_factory=list)
    f: dict[str, np.ndarray] = field(default_factory=dict)
    f_fields: tuple[bytes, ...] = ()
    i: dict[str, np.ndarray] = field(default_factory=dict)
    i_fields: tuple[bytes, ...] = ()
    i_by_name: dict[str, Any] = field(default_factory=dict)
    # Rows [start, end) of each service in f and i (a service's rows are contiguous).
    f_span: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    i_span: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))


def _spans(svc: np.ndarray, nsvc: int) -> np.ndarray:
    out = np.zeros((nsvc, 2), dtype=np.int64)
    if len(svc):
        starts = np.flatnonzero(np.r_[True, svc[1:] != svc[:-1]])
        out[svc[starts], 0] = starts
        out[svc[starts], 1] = np.r_[starts[1:], len(svc)]
    return out


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

# ---------------------------------------------------------------------- protobuf wire
# Field tags of hdc.infoprovider.v1 messages (field number << 3 | wire type; 2 = length-
# delimited, 0 = varint). A test checks the assembled bytes parse into the same message.
_CANDIDATES_CANDIDATE = 0x0A  # Candidates.candidates = 1
_CANDIDATES_EXCLUDED = 0x12  # Candidates.excluded = 2
_CANDIDATES_EVALUATED_AT = 0x1A  # Candidates.evaluated_at = 3
_CANDIDATE_FLAVOR = 0x42  # Candidate.flavors = 8
_CANDIDATE_IMAGE = 0x4A  # Candidate.images = 9
_CANDIDATE_QUOTA = 0x52  # Candidate.quotas = 10
_CANDIDATE_STATUS = 0x58  # Candidate.status = 11 (enum)
_CANDIDATE_HEALTH = 0x62  # Candidate.health = 12
_CANDIDATE_FRESHNESS = 0x6A  # Candidate.freshness = 13
_CANDIDATE_FREE = 0x78  # Candidate.free_instances = 15 (int64)


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 as protobuf writes it: negatives take ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _unfield(data: bytes) -> bytes:
    """The message inside a length-delimited field made by _field."""
    pos = 1
    while data[pos] & 0x80:
        pos += 1
    return data[pos + 1 :]


_FREE_UNLIMITED = bytes((_CANDIDATE_FREE,)) + _varint(-1)


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


def _template(r: Any) -> bytes:
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
    return cand.SerializeToString()


class Catalog:
    def __init__(self) -> None:
        self.strings = _Strings()
        self._sites: dict[str, _SiteCatalog] = {}
        # The part of a candidate that only changes with the catalog (site and service
        # identity, endpoint, IdPs, cost), serialised.
        self._templates: dict[str, bytes] = {}
        self._flat: _Flat | None = None
        self._lock = threading.Lock()
        self.quotas = _QuotaCache()
        self._live_token: tuple[Any, ...] | None = None
        self._live: _LiveState | None = None
        # Which services each live state changed ((version, ids); None: everything).
        self._version = 0
        self._log: deque[tuple[int, frozenset[str] | None]] = deque(maxlen=64)
        # Free instances by (service, tenant, quota digest, smallest flavor's row, generation).
        self.free: dict[tuple[str, str, str, int, int], int] = {}
        # What of a candidate changes only with its site's report (template, status, health,
        # freshness), serialised, by service: (the values it was made from, bytes).
        self._static: dict[str, tuple[tuple[Any, ...], bytes]] = {}
        self._health: dict[str, tuple[Any, bytes]] = {}  # site -> (report time, fields)
        self._gpu_models: dict[tuple[str, int], np.ndarray] = {}
        self._tenant_quotas: dict[str, tuple[Any, dict[str, tuple[float, Any, bytes]]]] = {}
        self._exclusions: dict[tuple[str, str, str], bytes] = {}
        # Bumped at every rebuild of the flat view: row numbers then mean other rows.
        self.generation = 0

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

    def live(self, session: Session) -> _LiveState:
        """Live state of every service, re-read only when a report was accepted since, and
        then only for the sites that reported (unless the catalog or the set of sites moved).
        """
        token = tuple(session.execute(_STATE).one())
        with self._lock:
            state = self._live
            if state is not None and token == self._live_token and state.flat is self._flat:
                return state
        new = self._refresh(session, state)
        with self._lock:
            if new is not state:
                self._version += 1
                new.version = self._version
                self._log.append((new.version, new.changed))
            self._live_token, self._live = token, new
        return new

    def _refresh(self, session: Session, old: _LiveState | None) -> _LiveState:
        counts = {r.id: (r.reports_accepted, r.catalog_version) for r in session.execute(_COUNTS)}
        if old is not None and old.flat is self._flat and counts.keys() == old.counts.keys():
            changed = [s for s, c in counts.items() if c != old.counts[s]]
            if not changed:
                return old
            same_catalog = all(counts[s][1] == old.counts[s][1] for s in changed)
            if same_catalog and len(changed) <= 200:
                rows = session.execute(_LIVE_OF_SITES, {"ids": changed}).all()
                new = old.patched(rows, counts)
                if new is not None:
                    return new
        rows = session.execute(_LIVE).all()
        flat = self.sync(session, {r.site_id: r.catalog_version for r in rows})
        return _LiveState(rows, flat, counts)

    def tenant_quotas(self, session: Session, tenant: str) -> dict[str, tuple[float, Any, bytes]]:
        """A tenant's quotas by service: (valid until, row, serialised field), as of the live
        state; after a few reports only the services that reported are read again."""
        version = self._live.version if self._live is not None else 0
        hit = self._tenant_quotas.get(tenant)
        if hit is not None and hit[0] == version:
            return hit[1]
        changed: set[str] | None = None
        if hit is not None and self._log and self._log[0][0] <= hit[0] + 1:
            changed = set()
            for v, ids in self._log:
                if v > hit[0]:
                    if ids is None:
                        changed = None
                        break
                    changed |= ids
        if changed is None or hit is None:
            keys = session.execute(_QUOTA_KEYS, {"tenant": tenant}).all()
            out: dict[str, tuple[float, Any, bytes]] = {}
        else:
            out = dict(hit[1])
            for sid in changed:
                out.pop(sid, None)
            keys = []
            ids = sorted(changed)
            for chunk in range(0, len(ids), 500):
                params = {"tenant": tenant, "ids": ids[chunk : chunk + 500]}
                keys += session.execute(_QUOTA_KEYS_OF, params).all()
        rows = self.quotas.get(session, tenant, keys)
        for k in keys:
            if k.service_id in rows:
                until = k.valid_until if k.valid_until is not None else k.quotas_valid_until
                out[k.service_id] = (epoch(until), *rows[k.service_id])
        if len(self._tenant_quotas) > 1000:
            self._tenant_quotas.clear()
        self._tenant_quotas[tenant] = (version, out)
        return out

    def exclusion(self, site_id: str, service_id: str, reason: str) -> bytes:
        """An Exclusion as a Candidates field (the same ones recur query after query)."""
        key = (site_id, service_id, reason)
        data = self._exclusions.get(key)
        if data is None:
            if len(self._exclusions) > 100_000:
                self._exclusions.clear()
            msg = pb.Exclusion(site_id=site_id, service_id=service_id, reason=reason)
            data = self._exclusions[key] = _field(_CANDIDATES_EXCLUDED, msg.SerializeToString())
        return data

    def statics(self, session: Session, state: _LiveState, live_idx: list[int]) -> list[bytes]:
        """The serialised static part of these services' candidates (made when it moved)."""
        rows = state.rows
        known = state.statics
        out: list[bytes] = []
        stale: list[int] = []
        for k in live_idx:
            data = known[k]
            if data is not None:
                out.append(data)
                continue
            r = rows[k]
            hit = self._static.get(r.id)
            key = (r.catalog_version, r.site_status, r.site_ct, r.creation_time, r.validity_s)
            if hit is not None and hit[0] == key:
                out.append(hit[1])
                known[k] = hit[1]
            else:
                out.append(b"")
                stale.append(len(out) - 1)
        if stale:
            health = self._health_fields(session, {rows[live_idx[n]].site_id: rows[live_idx[n]].site_ct for n in stale})  # fmt: skip
            if len(self._static) > 4 * len(rows) + 100:
                self._static.clear()  # services that are gone
            for n in stale:
                r = rows[live_idx[n]]
                freshness = pb.Freshness(
                    creation_time=ts(r.creation_time),
                    valid_until=ts(r.valid_until),
                    validity_s=r.validity_s,
                ).SerializeToString()
                status = STATUS.get(r.site_status, 0)
                data = b"".join(
                    (
                        self._templates.get(r.id, b""),
                        bytes((_CANDIDATE_STATUS,)) + _varint(status) if status else b"",
                        health.get(r.site_id, b""),
                        _field(_CANDIDATE_FRESHNESS, freshness),
                    )
                )
                key = (r.catalog_version, r.site_status, r.site_ct, r.creation_time, r.validity_s)
                self._static[r.id] = (key, data)
                out[n] = known[live_idx[n]] = data
        return out

    def _health_fields(self, session: Session, sites: dict[str, Any]) -> dict[str, bytes]:
        """Component health of these sites as Candidate fields, read when their report moved."""
        out: dict[str, bytes] = {}
        missing = []
        for site_id, ct in sites.items():
            hit = self._health.get(site_id)
            if hit is not None and hit[0] == ct:
                out[site_id] = hit[1]
            else:
                missing.append(site_id)
        for chunk in range(0, len(missing), 500):
            for r in session.execute(_HEALTH, {"ids": missing[chunk : chunk + 500]}):
                ct = sites[r.id]
                data = b"".join(
                    _field(_CANDIDATE_HEALTH, h.SerializeToString())
                    for h in _health_list(r.health, ct)
                )
                self._health[r.id] = (ct, data)
                out[r.id] = data
        return out

    def gpu_model_hits(self, model: str) -> np.ndarray:
        """Which interned strings contain `model` (codes only grow: extended when they do)."""
        values = self.strings.values
        key = (model, len(values))
        hit = self._gpu_models.get(key)
        if hit is None:
            if len(self._gpu_models) > 100:
                self._gpu_models.clear()
            hit = self._gpu_models[key] = np.array([model in v for v in values], dtype=bool)
        return hit

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
            tuple(_field(_CANDIDATE_FLAVOR, flavor_pb(f).SerializeToString()) for f in flavors),
            ic,
            tuple(_field(_CANDIDATE_IMAGE, image_pb(i).SerializeToString()) for i in images),
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
        flat.f_fields = tuple(r for c in sites for r in c.flavor_fields)
        flat.i = cat_cols([c.image_cols for c in sites], IMAGE_COLS)
        flat.i_fields = tuple(r for c in sites for r in c.image_fields)
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
        flat.f_span = _spans(flat.f["svc"].astype(np.int64), len(flat.services))
        flat.i_span = _spans(flat.i["svc"].astype(np.int64), len(flat.services))
        self.generation += 1
        self.free.clear()
        return flat


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


class _LiveState:
    """The live rows of every service (one state of the registry) as arrays, lined up with
    the catalog's flat view, so a query's freshness and health checks are vector operations.
    Never changed once built: a newer state is a patched copy (queries may still use this).
    """

    def __init__(self, rows: list[Any], flat: _Flat, counts: dict[str, tuple[int, int]]) -> None:
        self.flat = flat
        self.counts = counts  # site -> (reports accepted, catalog version) this state holds
        self.version = 0
        self.changed: frozenset[str] | None = None  # services changed from the previous state
        self.rows = rows
        self.ids = [r.id for r in rows]
        self.pos = {sid: k for k, sid in enumerate(self.ids)}
        self.by_site: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            self.by_site[r.site_id].append(r.id)
        self.until = np.array([epoch(r.valid_until) for r in rows], dtype=np.float64)
        self.site_until = np.array([epoch(r.site_valid_until) for r in rows], dtype=np.float64)
        self.healthy = np.array([bool(r.healthy) for r in rows], dtype=bool)
        pos = {sid: k for k, sid in enumerate(flat.services)}
        # Row of each live service in the flat view (-1: it has no flavor and no image).
        self.flat_of_live_list = [pos.get(sid, -1) for sid in self.ids]
        self.flat_of_live = np.array(self.flat_of_live_list, dtype=np.int64)
        has = self.flat_of_live >= 0
        nsvc = len(flat.services)
        self.live_of_flat = np.full(nsvc, -1, dtype=np.int64)
        self.live_of_flat[self.flat_of_live[has]] = np.flatnonzero(has)
        self.mapped = np.flatnonzero(self.live_of_flat >= 0)

        # Until when each flavor/image row is current: its own validity when the site dated
        # it, else its part's on its service (-inf for services no longer live).
        def until_of(cols: dict[str, np.ndarray], part: str) -> np.ndarray:
            if not len(cols.get("svc", ())):
                return np.zeros(0)
            part_until = np.full(nsvc, -np.inf)
            part_until[self.flat_of_live[has]] = np.array(
                [epoch(getattr(r, f"{part}_valid_until")) for r, h in zip(rows, has, strict=True) if h],
                dtype=np.float64,
            )  # fmt: skip
            own = cols["own_until"]
            return np.where(own == NO_TIME, part_until[cols["svc"]], own)

        self.f_until = until_of(flat.f, "flavors")
        self.i_until = until_of(flat.i, "images")
        # Static parts of the candidates, filled by Catalog.statics as queries need them.
        self.statics: list[bytes | None] = [None] * len(rows)

    def patched(self, rows: list[Any], counts: dict[str, tuple[int, int]]) -> _LiveState | None:
        """This state with the rows of the sites that reported replaced; None when one of
        them gained or lost a service (then everything is rebuilt)."""
        fresh: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            fresh[r.site_id].append(r)
        sites = {s for s, c in counts.items() if c != self.counts.get(s)}
        for site in sites:
            if sorted(r.id for r in fresh.get(site, [])) != sorted(self.by_site.get(site, [])):
                return None
        new = copy.copy(self)
        new.counts = counts
        new.rows = list(self.rows)
        new.until, new.site_until = self.until.copy(), self.site_until.copy()
        new.healthy = self.healthy.copy()
        new.f_until, new.i_until = self.f_until.copy(), self.i_until.copy()
        new.statics = list(self.statics)
        flat = self.flat
        for r in rows:
            k = self.pos[r.id]
            new.rows[k] = r
            new.statics[k] = None
            new.until[k] = epoch(r.valid_until)
            new.site_until[k] = epoch(r.site_valid_until)
            new.healthy[k] = bool(r.healthy)
            j = self.flat_of_live_list[k]
            if j < 0:
                continue
            for cols, span, until, part in (
                (flat.f, flat.f_span, new.f_until, r.flavors_valid_until),
                (flat.i, flat.i_span, new.i_until, r.images_valid_until),
            ):
                a, b = span[j]
                if b > a:
                    own = cols["own_until"][a:b]
                    until[a:b] = np.where(own == NO_TIME, epoch(part), own)
        new.changed = frozenset(r.id for r in rows)
        return new


_COUNTS = sa.select(_SITE.id, _SITE.reports_accepted, _SITE.catalog_version)
_LIVE_OF_SITES = _LIVE.where(_S.site_id.in_(sa.bindparam("ids", expanding=True)))
_HEALTH = sa.select(_SITE.id, _SITE.health).where(_SITE.id.in_(sa.bindparam("ids", expanding=True)))
_Q = m.Quota
_QUOTA_KEYS = (
    sa.select(_Q.service_id, _Q.digest, _Q.valid_until, _S.quotas_valid_until)
    .join(_S, _S.id == _Q.service_id)
    .where(_Q.id == sa.bindparam("tenant"))
)
_QUOTA_KEYS_OF = _QUOTA_KEYS.where(_Q.service_id.in_(sa.bindparam("ids", expanding=True)))
_QUOTA_ROWS = sa.select(_Q.service_id, _Q.id, _Q.project_id, _Q.limits, _Q.usage, _Q.digest).where(
    _Q.id == sa.bindparam("tenant"), _Q.service_id.in_(sa.bindparam("ids", expanding=True))
)


class _QuotaCache:
    """Quotas by (service, tenant), kept with their digest: usage moves, not on every report.
    Each is held as its row (for the arithmetic) and as its serialised Candidate field."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[str, Any, bytes]] = {}

    def get(self, session: Session, tenant: str, keys: list[Any]) -> dict[str, tuple[Any, bytes]]:
        out: dict[str, tuple[Any, bytes]] = {}
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
                data = _field(_CANDIDATE_QUOTA, quota_pb(r).SerializeToString())
                self.rows[(r.service_id, tenant)] = (r.digest, r, data)
                out[r.service_id] = (r, data)
        return out


class _Smallest:
    """The smallest matching flavor of a candidate, as the quota arithmetic needs it."""

    __slots__ = ("cpus", "ram_mb", "gpus")

    def __init__(self, f: dict[str, np.ndarray], n: int) -> None:
        self.cpus, self.ram_mb, self.gpus = (
            int(f["cpus"][n]),
            int(f["ram_mb"][n]),
            int(f["gpus"][n]),
        )


def find_candidates(session: Session, req: pb.Requirements, catalog: Catalog) -> pb.Candidates:
    """The candidates as a message (REST and tests); gRPC sends find_candidates_wire's bytes."""
    return pb.Candidates.FromString(find_candidates_wire(session, req, catalog))


class _Selection:
    """Selected rows (sorted by service) of the flat view, as one byte string of their
    serialised fields, with each service's slice of it. Index nsvc stands for "no row in
    the flat view" (services without flavors or images): always empty."""

    def __init__(self, svc: np.ndarray, idx: np.ndarray, fields: tuple[bytes, ...], nsvc: int):
        self.rows = idx.tolist()
        self.first = np.zeros(nsvc + 1, dtype=np.int64)  # position in rows of a service's first
        self.count = np.zeros(nsvc + 1, dtype=np.int64)
        if len(idx):
            groups = svc[idx]
            starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
            self.first[groups[starts]] = starts
            self.count[groups[starts]] = np.diff(np.r_[starts, len(idx)])
        parts = list(map(fields.__getitem__, self.rows))
        self.blob = b"".join(parts)
        self.offsets = [0, *accumulate(map(len, parts))]

    def has(self, flat_idx: np.ndarray) -> np.ndarray:
        return self.count[flat_idx] > 0

    def slices(self, flat_idx: np.ndarray) -> tuple[list[int], list[int]]:
        """Byte offsets (start, end) in blob of each of these services' rows."""
        first = self.first[flat_idx]
        end = first + self.count[flat_idx]
        offsets = np.asarray(self.offsets, dtype=np.int64)
        return offsets[first].tolist(), offsets[end].tolist()


_EMPTY = np.zeros(0, dtype=np.int64)
_LENGTHS = [_varint(n) for n in range(1 << 14)]  # two-byte varints: candidates < 16 KiB


def _wrap(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_LENGTHS[n] if n < 16384 else _varint(n)) + payload


def find_candidates_wire(session: Session, req: pb.Requirements, catalog: Catalog) -> bytes:
    """FindCandidates' reply, serialised (a pb.Candidates message)."""
    now = utcnow()
    now_s = now.timestamp()
    excluded: list[bytes] = []

    def exclude(site_id: str, reason: str, service_id: str = "") -> None:
        excluded.append(catalog.exclusion(site_id, service_id, reason))

    def reply(candidates: list[bytes]) -> bytes:
        stamp = ts(now).SerializeToString()
        return b"".join((*candidates, *excluded, _field(_CANDIDATES_EVALUATED_AT, stamp)))

    # Live state of every service: freshness, health, site status, catalog version (one
    # query while nothing changed; the request's service filters apply here).
    state = catalog.live(session)
    flat = state.flat
    rows = state.rows
    nsvc = len(flat.services)
    selected = np.ones(len(rows), dtype=bool)
    types, only, never = set(req.service_types), set(req.site_ids), set(req.exclude_site_ids)
    if types or only or never:
        selected = np.array(
            [(not types or r.type in types) and (not only or r.site_id in only)
             and r.site_id not in never for r in rows],
            dtype=bool,
        )  # fmt: skip
    down = state.site_until < now_s
    stale = ~down & (state.until < now_s)
    unhealthy = ~down & ~stale & ~state.healthy
    if req.include_unhealthy:
        unhealthy[:] = False
    out_of_play = selected & (down | stale | unhealthy)
    if out_of_play.any():
        sites_down: set[str] = set()
        for k in np.flatnonzero(out_of_play).tolist():
            r = rows[k]
            if down[k]:
                if r.site_id not in sites_down:
                    sites_down.add(r.site_id)
                    exclude(r.site_id, "site down: no report since it expired at "
                            f"{to_utc(r.site_valid_until).isoformat()}")  # fmt: skip
            elif stale[k]:
                exclude(r.site_id, "stale: service record expired at "
                        f"{to_utc(r.valid_until).isoformat()}", r.id)  # fmt: skip
            else:
                exclude(r.site_id, "unhealthy: its collector failed at the last report", r.id)
    ids = np.flatnonzero(selected & ~down & ~stale & ~unhealthy)  # live rows, service id order
    if not len(ids):
        return reply([])
    alive_flat = np.zeros(nsvc, dtype=bool)
    alive_flat[state.flat_of_live[ids][state.flat_of_live[ids] >= 0]] = True
    # The flat row of each live row, nsvc for none (an always-empty slot of the selections).
    at_of_live = np.where(state.flat_of_live >= 0, state.flat_of_live, nsvc)

    def keep_where(ok: np.ndarray, reason: str) -> np.ndarray:
        for k in ids[~ok].tolist():
            exclude(rows[k].site_id, reason, rows[k].id)
        return ids[ok]

    # Flavors: smallest matching first (the one a placement picks), up to k per service.
    f = flat.f
    f_idx = _EMPTY
    if len(f.get("svc", ())):
        fsvc = f["svc"]
        mask = alive_flat[fsvc] & (state.f_until > now_s)
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
            mask &= catalog.gpu_model_hits(req.gpu.model.lower())[f["model"]]
        if req.infiniband:
            mask &= f["infiniband"]
        f_idx = _first_k(fsvc, np.flatnonzero(mask), req.max_flavors_per_candidate)
    flavors = _Selection(f.get("svc", _EMPTY), f_idx, flat.f_fields, nsvc)
    if _needs_flavor(req):
        ids = keep_where(flavors.has(at_of_live[ids]), _describe_flavor_req(req))

    # Images.
    i = flat.i
    i_idx = _EMPTY
    if len(ids) and len(i.get("svc", ())):
        isvc = i["svc"]
        wanted = np.zeros(nsvc + 1, dtype=bool)
        wanted[at_of_live[ids]] = True
        wanted[nsvc] = False
        img = req.image
        codes = catalog.strings.codes
        if img.name:
            found = flat.i_by_name.get(img.name, ())
            mask = np.zeros(len(isvc), dtype=bool)
            mask[np.array([found] if isinstance(found, int) else found, dtype=np.int64)] = True
            mask &= wanted[isvc]
        else:
            mask = wanted[isvc]
        mask &= state.i_until > now_s
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
        i_idx = _first_k(isvc, np.flatnonzero(mask), req.max_images_per_candidate)
    images = _Selection(i.get("svc", _EMPTY), i_idx, flat.i_fields, nsvc)
    if _has_image_req(req):
        ids = keep_where(images.has(at_of_live[ids]), _describe_image_req(req.image))

    # Quota of the requested tenant (live: usage changes with every report).
    tail: list[bytes] = []  # per candidate: its quota and free_instances fields
    if len(ids) and req.tenant:
        wanted_n = max(1, req.instances)
        quotas = catalog.tenant_quotas(session, req.tenant)
        smallest_of = np.where(flavors.count > 0, flavors.first, -1)
        keep = []
        for k, first in zip(ids.tolist(), smallest_of[at_of_live[ids]].tolist(), strict=True):
            r = rows[k]
            entry = quotas.get(r.id)
            if entry is None or entry[0] <= now_s:
                exclude(r.site_id, f"tenant {req.tenant!r} has no current quota at this service", r.id)  # fmt: skip
                continue
            quota = entry[1]
            smallest = flavors.rows[first] if first >= 0 else -1
            key = (r.id, req.tenant, quota.digest, smallest, catalog.generation)
            n = catalog.free.get(key)
            if n is None:
                if len(catalog.free) > 100_000:
                    catalog.free.clear()
                n = catalog.free[key] = _free_instances(
                    quota, _Smallest(f, smallest) if smallest >= 0 else None
                )
            if 0 <= n < wanted_n:
                what = ""
                if smallest >= 0:
                    fl = pb.Flavor.FromString(_unfield(flat.f_fields[smallest]))
                    what = f" of flavor {fl.name or fl.id}"
                exclude(r.site_id, f"quota: tenant {req.tenant!r} has room for {n} instance(s)"
                        f"{what}, {wanted_n} needed", r.id)  # fmt: skip
                continue
            tail.append(entry[2] + (bytes((_CANDIDATE_FREE,)) + _varint(n) if n else b""))
            keep.append(k)
        ids = np.array(keep, dtype=np.int64)
    elif len(ids):
        tail = [_FREE_UNLIMITED] * len(ids)

    # The reply: each candidate joined from pieces serialised beforehand.
    id_list = ids.tolist()
    statics = catalog.statics(session, state, id_list)
    at = at_of_live[ids]
    f_from, f_to = flavors.slices(at)
    i_from, i_to = images.slices(at)
    fb, ib = flavors.blob, images.blob
    tag = bytes((_CANDIDATES_CANDIDATE,))
    candidates = [
        _wrap(tag, b"".join((static, fb[fa:fz], ib[ia:iz], end)))
        for static, fa, fz, ia, iz, end in zip(
            statics, f_from, f_to, i_from, i_to, tail, strict=True
        )
    ]
    return reply(candidates)


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
