"""Built-in filters: the hard requirements a candidate must meet to be ranked at all.

The order of BUILTIN is the order of rejection priority: a candidate that fails several
filters lists every reason, and the summary counts it under the first one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker import wire
from hdc_ranker.context import RankContext
from hdc_ranker.plugins import Filter, Rejected
from hdc_ranker.table import QUOTA_RESOURCES, text_hash


def _fmt(x: float) -> str:
    return f"{x:g}"


def _max_per_candidate(
    values: np.ndarray, first: np.ndarray, count: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """Largest of the flavor values of each candidate in `idx` (0 without flavors)."""
    out = np.zeros(idx.size)
    with_flavors = np.flatnonzero(count > 0)
    if with_flavors.size:
        # Runs of candidates with flavors start at strictly increasing offsets.
        runs = np.maximum.reduceat(values, first[with_flavors])
        pos = np.searchsorted(with_flavors, idx)
        pos[pos == with_flavors.size] = 0
        found = with_flavors[pos] == idx
        out[found] = runs[pos[found]]
    return out


class SiteFilter(Filter):
    """Requirements.site_ids / exclude_site_ids (placement constraints, fail-over)."""

    name = "site"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        allowed, excluded = list(ctx.req.site_ids), list(ctx.req.exclude_site_ids)
        if not allowed and not excluded:
            return []
        sites = ctx.table.site_hash
        mask = np.isin(sites, _hashes(excluded))
        if allowed:
            mask |= ~np.isin(sites, _hashes(allowed))

        def explain(i: int) -> str:
            site = ctx.table.site(i)
            if site in excluded:
                return f"site {site} is excluded by the request"
            return f"site {site} is not among the allowed sites {sorted(allowed)}"

        return [Rejected(mask, "SITE_EXCLUDED", "site excluded", explain)]


def _hashes(texts: Iterable[str]) -> np.ndarray:
    return np.array([text_hash(t) for t in texts], dtype=np.uint64)


class ServiceTypeFilter(Filter):
    name = "service_type"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        wanted = list(ctx.req.service_types)
        if not wanted:
            return []
        mask = ~np.isin(ctx.table.type_hash, _hashes(wanted))
        return [
            Rejected(
                mask,
                "WRONG_SERVICE_TYPE",
                "wrong service type",
                lambda i: (
                    f"service type {ctx.table.service_type_of(i) or '(none)'} is not one of "
                    f"{sorted(wanted)}"
                ),
            )
        ]


class HealthFilter(Filter):
    name = "health"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        rows = ctx.table.rows
        mask = ctx.table.status == pb.STATUS_DOWN

        def explain(i: int) -> str:
            why = [
                h.component + (f": {h.message}" if h.message else "")
                for h in rows[i].health
                if not h.healthy
            ]
            return "site reports it is down" + (f" ({'; '.join(why)})" if why else "")

        return [Rejected(mask, "SITE_DOWN", "site down", explain)]


class FreshnessFilter(Filter):
    """Site data past its validity, flagged stale, or older than max_age_s (no validity)."""

    name = "freshness"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        created, valid, stale = ctx.table.freshness
        now, max_age = ctx.now, ctx.knobs.max_age_s
        with np.errstate(invalid="ignore"):
            expired = valid < now
            too_old = np.isnan(valid) & (now - created > max_age)
        mask = stale | expired | too_old

        def explain(i: int) -> str:
            if not math.isnan(valid[i]) and valid[i] < now:
                return f"site data expired {_fmt(round(now - valid[i]))} s ago"
            if not math.isnan(created[i]) and now - created[i] > max_age:
                return f"site data is {_fmt(round(now - created[i]))} s old (max {_fmt(max_age)} s)"
            return "site data is flagged stale by the info provider"

        return [Rejected(mask, "STALE_DATA", "stale data", explain)]


class IdentityProviderFilter(Filter):
    """The service must accept the user's identity provider (none published = any)."""

    name = "identity_provider"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        want = ctx.req.identity_provider
        if not want:
            return []
        table = ctx.table
        issuer = np.uint64(text_hash(want, strip_slash=True))
        name = np.uint64(text_hash(want))
        hit = (table.idp_hash[:, 0] == issuer) | (table.idp_hash[:, 1] == name)
        listed = np.bincount(table.idp_owner, minlength=ctx.n) > 0
        accepted = np.bincount(table.idp_owner[hit], minlength=ctx.n) > 0
        mask = listed & ~accepted
        return [
            Rejected(
                mask,
                "IDP_NOT_SUPPORTED",
                "identity provider not accepted",
                lambda i: f"service accepts {table.identity_issuers(i)}, not {want.rstrip('/')}",
            )
        ]


class SlaFilter(Filter):
    """Placement policies: with Requirements.sla_ids, only services those SLAs cover."""

    name = "sla"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        wanted = set(ctx.req.sla_ids)
        if not wanted:
            return []
        covering = ctx.sla_keys([s for s in ctx.slas_in_force if s.id in wanted])
        own, whole_site = ctx.match_keys(np.arange(ctx.n), covering)
        mask = (own < 0) & (whole_site < 0)
        return [
            Rejected(
                mask,
                "NO_SLA",
                "no SLA",
                lambda i: f"no SLA in force among {sorted(wanted)} covers this service",
            )
        ]


class FlavorFilter(Filter):
    """CPUs, RAM, disk, GPUs (count, vendor, model) and Infiniband of one flavor."""

    name = "flavor"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        req = ctx.req
        fm = ctx.flavor_match
        ft = ctx.table.flavors
        needs_gpu = req.gpu.count > 0
        out: list[Rejected] = []
        # A service that publishes no flavors (e.g. a container platform) cannot be checked
        # for size, but it cannot be trusted with a GPU or Infiniband either.
        flagged = np.zeros(ctx.n, dtype=bool)
        if needs_gpu:
            no_gpu = ~fm.any_gpu
            flagged |= no_gpu
            gpu_text = " ".join(x for x in (req.gpu.vendor, req.gpu.model) if x)

            def explain_gpu(i: int) -> str:
                have = ft.gpus[ft.of(i)]
                most = int(have.max()) if have.size else 0
                return (
                    f"needs {req.gpu.count} {gpu_text + ' ' if gpu_text else ''}GPU(s) per "
                    f"instance; no flavor offers them (most GPUs in a flavor: {most})"
                )

            def explain_gpus(idx: np.ndarray) -> list[str]:
                most = _max_per_candidate(ft.gpus, ft.first, ft.count, idx).tolist()
                head = (
                    f"needs {req.gpu.count} {gpu_text + ' ' if gpu_text else ''}GPU(s) per instance"
                )
                return [
                    f"{head}; no flavor offers them (most GPUs in a flavor: {m:g})" for m in most
                ]

            out.append(Rejected(no_gpu, "NO_GPU", "no GPU", explain_gpu, explain_gpus))
        if req.infiniband:
            no_ib = ~fm.any_ib & ~flagged
            flagged |= no_ib
            out.append(
                Rejected(
                    no_ib, "NO_INFINIBAND", "no Infiniband", lambda i: "no flavor offers Infiniband"
                )
            )
        too_small = fm.has_flavors & ~fm.any_size & ~flagged
        flagged |= too_small

        def explain_size(i: int) -> str:
            sel = ft.of(i)
            return (
                f"needs {req.cpus} CPUs, {req.ram_mb} MB RAM, {req.disk_gb} GB disk; largest "
                f"flavor offers {_fmt(ft.cpus[sel].max())} CPUs, {_fmt(ft.ram_mb[sel].max())} "
                f"MB, {_fmt(ft.disk_gb[sel].max())} GB"
            )

        out.append(Rejected(too_small, "FLAVOR_TOO_SMALL", "flavor too small", explain_size))
        no_combo = fm.has_flavors & (fm.chosen < 0) & ~flagged
        out.append(
            Rejected(
                no_combo,
                "NO_MATCHING_FLAVOR",
                "no matching flavor",
                lambda i: "each requirement is met by some flavor, but no flavor meets all",
            )
        )
        return out


def image_requirement_set(want: pb.ImageRequirement) -> bool:
    return bool(
        want.name
        or want.os_type
        or want.os_distribution
        or want.os_version
        or want.architecture
        or want.cuda
        or want.min_cuda_version
    )


def _needle(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


class ImageFilter(Filter):
    """An image with the requested name / OS / architecture / CUDA must exist. The first
    matching image of each candidate is reported in the answer."""

    name = "image"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        want = ctx.req.image
        if not image_requirement_set(want):
            return []
        t = ctx.table
        match = wire.match_images(
            t.buf,
            t.image_strs,
            t.image_cuda,
            _needle(want.name),
            _needle(want.os_type),
            _needle(want.os_distribution),
            _needle(want.os_version),
            _needle(want.architecture),
            want.cuda,
            _needle(want.min_cuda_version),
        )
        hits = np.flatnonzero(match)
        owners, first = np.unique(t.image_owner[hits], return_index=True)
        chosen = np.full(ctx.n, -1, dtype=np.int64)
        chosen[owners] = hits[first]
        # the chosen image's id (its name when it has no id), as a byte span
        spans = np.zeros((ctx.n, 2), dtype=np.int64)
        has = chosen >= 0
        strs = t.image_strs[chosen[has]]
        use_name = strs[:, 1] == 0
        spans[has, 0] = np.where(use_name, strs[:, 2], strs[:, 0])
        spans[has, 1] = np.where(use_name, strs[:, 3], strs[:, 1])
        ctx.shared["image_spans"] = spans
        mask = ~has
        parts = [
            want.name,
            want.os_type,
            want.os_distribution,
            want.os_version,
            want.architecture,
            f"CUDA >= {want.min_cuda_version}"
            if want.min_cuda_version
            else ("CUDA" if want.cuda else ""),
        ]
        text = " ".join(p for p in parts if p)
        counts = np.bincount(t.image_owner, minlength=ctx.n)
        return [
            Rejected(
                mask,
                "NO_IMAGE",
                "no matching image",
                lambda i: f"no image matches {text} ({counts[i]} published)",
            )
        ]


class QuotaFilter(Filter):
    """Free quota: limit - usage - request >= 0 for every resource the site publishes."""

    name = "quota"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        limits, usage = ctx.table.quota
        need = ctx.quota_need
        with np.errstate(invalid="ignore"):
            # NaN (unknown) and -1 (unlimited) never reject.
            short = (limits >= 0) & (limits - usage - need < 0)
        mask = short.any(axis=1)

        def explain(i: int) -> str:
            lim, use, nd = limits[i].tolist(), usage[i].tolist(), need[i].tolist()
            parts = [
                f"{QUOTA_RESOURCES[j]}: needs {nd[j]:g}, free {lim[j] - use[j]:g} of {lim[j]:g}"
                for j, s in enumerate(short[i].tolist())
                if s
            ]
            return "quota exceeded (" + "; ".join(parts) + ")"

        def explain_many(idx: np.ndarray) -> list[str]:
            lim, use, nd, sh = (a[idx].tolist() for a in (limits, usage, need, short))
            return [
                "quota exceeded ("
                + "; ".join(
                    f"{QUOTA_RESOURCES[j]}: needs {n_[j]:g}, free {l_[j] - u_[j]:g} of {l_[j]:g}"
                    for j in range(len(QUOTA_RESOURCES))
                    if s_[j]
                )
                + ")"
                for l_, u_, n_, s_ in zip(lim, use, nd, sh, strict=True)
            ]

        return [Rejected(mask, "QUOTA_EXCEEDED", "quota exceeded", explain, explain_many)]


BUILTIN: list[type[Filter]] = [
    SiteFilter,
    ServiceTypeFilter,
    HealthFilter,
    FreshnessFilter,
    IdentityProviderFilter,
    SlaFilter,
    FlavorFilter,
    ImageFilter,
    QuotaFilter,
]
