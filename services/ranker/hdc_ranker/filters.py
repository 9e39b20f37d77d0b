"""Built-in filters: the hard requirements a candidate must meet to be ranked at all.

The order of BUILTIN is the order of rejection priority: a candidate that fails several
filters lists every reason, and the summary counts it under the first one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker import decode as d
from hdc_ranker import decode_context as dc
from hdc_ranker import quota
from hdc_ranker.context import RankContext
from hdc_ranker.match import image_required
from hdc_ranker.plugins import Filter, Rejected
from hdc_ranker.table import QUOTA_RESOURCES, text_hash


def _fmt(x: float) -> str:
    return f"{x:g}"


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

        return [Rejected(mask, "SITE_EXCLUDED", "site excluded", explain, key=ctx.table.site_hash)]


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
                key=ctx.table.type_hash,
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

        # The sentence lists the unhealthy components: equal health reports, equal sentence.
        return [
            Rejected(
                mask,
                "SITE_DOWN",
                "site down",
                explain,
                key=lambda idx: ctx.table.record_hashes(idx, d.T_HEALTH),
            )
        ]


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

        def key(idx: np.ndarray) -> np.ndarray:
            # The sentence depends on which case applies and on the age, rounded to seconds.
            v, c = valid[idx], created[idx]
            with np.errstate(invalid="ignore"):
                case = np.where(v < now, 0, np.where(now - c > max_age, 1, 2))
            age = np.where(case == 0, np.round(now - v), np.round(now - c))
            return np.column_stack([case, np.where(case == 2, 0.0, age)])

        return [Rejected(mask, "STALE_DATA", "stale data", explain, key=key)]


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
                key=lambda idx: table.record_hashes(idx, d.T_IDENTITY_PROVIDERS),
            )
        ]


class SlaFilter(Filter):
    """Placement policies: with Requirements.sla_ids, only services those SLAs cover."""

    name = "sla"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        wanted = set(ctx.req.sla_ids)
        if not wanted:
            return []
        ids = ctx.user.sla_hash[:, dc.S_ID]
        covering = np.flatnonzero(ctx.sla_in_force & np.isin(ids, _hashes(wanted)))
        own, whole_site = ctx.user.sla_index(covering).find(ctx.table, np.arange(ctx.n))
        mask = (own < 0) & (whole_site < 0)
        return [
            Rejected(
                mask,
                "NO_SLA",
                "no SLA",
                lambda i: f"no SLA in force among {sorted(wanted)} covers this service",
                key=np.zeros(ctx.n),
            )
        ]


class FlavorFilter(Filter):
    """CPUs, RAM, disk, GPUs (count, vendor, model) and Infiniband of one flavor."""

    name = "flavor"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        req = ctx.req
        fm = ctx.flavor_match
        most = fm.most  # per candidate: most GPUs, CPUs, RAM, disk of a flavor
        needs_gpu = req.gpu.count > 0
        out: list[Rejected] = []
        constant = np.zeros(ctx.n)
        # A service that publishes no flavors (e.g. a container platform) cannot be checked
        # for size, but it cannot be trusted with a GPU or Infiniband either.
        flagged = np.zeros(ctx.n, dtype=bool)
        if needs_gpu:
            no_gpu = ~fm.any_gpu
            flagged |= no_gpu
            gpu_text = " ".join(x for x in (req.gpu.vendor, req.gpu.model) if x)
            head = f"needs {req.gpu.count} {gpu_text + ' ' if gpu_text else ''}GPU(s) per instance"

            def explain_gpu(i: int) -> str:
                return f"{head}; no flavor offers them (most GPUs in a flavor: {most[i, 0]:g})"

            out.append(Rejected(no_gpu, "NO_GPU", "no GPU", explain_gpu, key=most[:, 0]))
        if req.infiniband:
            no_ib = ~fm.any_ib & ~flagged
            flagged |= no_ib
            out.append(
                Rejected(
                    no_ib,
                    "NO_INFINIBAND",
                    "no Infiniband",
                    lambda i: "no flavor offers Infiniband",
                    key=constant,
                )
            )
        too_small = fm.has_flavors & ~fm.any_size & ~flagged
        flagged |= too_small

        def explain_size(i: int) -> str:
            return (
                f"needs {req.cpus} CPUs, {req.ram_mb} MB RAM, {req.disk_gb} GB disk; largest "
                f"flavor offers {_fmt(most[i, 1])} CPUs, {_fmt(most[i, 2])} MB, "
                f"{_fmt(most[i, 3])} GB"
            )

        out.append(
            Rejected(
                too_small, "FLAVOR_TOO_SMALL", "flavor too small", explain_size, key=most[:, 1:]
            )
        )
        no_combo = fm.has_flavors & (fm.chosen < 0) & ~flagged
        out.append(
            Rejected(
                no_combo,
                "NO_MATCHING_FLAVOR",
                "no matching flavor",
                lambda i: "each requirement is met by some flavor, but no flavor meets all",
                key=constant,
            )
        )
        return out


class ImageFilter(Filter):
    """An image with the requested name / OS / architecture / CUDA must exist. The first
    matching image of each candidate is reported in the answer."""

    name = "image"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        want = ctx.req.image
        if not image_required(want):
            return []
        t = ctx.table
        chosen = t.ints[:, d.C_IMAGE_CHOSEN]  # decided while decoding (match.py)
        has = chosen >= 0
        ctx.shared["image"] = chosen  # reported in the answer
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
        counts = t.image_count
        return [
            Rejected(
                ~has,
                "NO_IMAGE",
                "no matching image",
                lambda i: f"no image matches {text} ({counts[i]} published)",
                key=counts,
            )
        ]


class QuotaFilter(Filter):
    """Free quota: limit - usage - request >= 0 for every resource the site publishes."""

    name = "quota"

    def reject(self, ctx: RankContext) -> Iterable[Rejected]:
        limits, usage = ctx.table.quota
        need = ctx.quota_need
        # NaN (unknown) and -1 (unlimited) limits never reject.
        short, mask = quota.quota_short(limits, usage, need)

        def explain(i: int) -> str:
            lim, use, nd = limits[i].tolist(), usage[i].tolist(), need[i].tolist()
            parts = [
                f"{QUOTA_RESOURCES[j]}: needs {nd[j]:g}, free {lim[j] - use[j]:g} of {lim[j]:g}"
                for j, s in enumerate(short[i].tolist())
                if s
            ]
            return "quota exceeded (" + "; ".join(parts) + ")"

        def key(idx: np.ndarray) -> np.ndarray:
            # The sentence names the short resources with their need, limit and usage.
            sh = short[idx]
            return np.hstack([sh] + [np.where(sh, x[idx], 0.0) for x in (need, limits, usage)])

        return [Rejected(mask, "QUOTA_EXCEEDED", "quota exceeded", explain, key=key)]


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
