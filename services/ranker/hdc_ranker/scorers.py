"""Built-in scorers: soft criteria, each one raw number per candidate.

The engine normalises every criterion to [0,1] across the candidates of the request, so a
scorer need not care about units; that is what keeps 100 public IPs in an SLA from
outweighing everything else (CloudProviderRanker summed raw numbers).
"""

from __future__ import annotations

import math

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb
from numba import njit

from hdc_ranker import cost, quota
from hdc_ranker import decode as d
from hdc_ranker.context import RankContext
from hdc_ranker.errors import RankInputError
from hdc_ranker.plugins import Scorer
from hdc_ranker.table import EMPTY_HASH, pair_keys
from hdc_ranker.user_context import KeyIndex

NAN = math.nan
_EMPTY = np.uint64(EMPTY_HASH)


class SlaScorer(Scorer):
    """How much an SLA in force guarantees: each target type is scaled by its largest value
    across the candidates, then averaged over the target types. No SLA = 0; no SLAs in the
    request at all = no data."""

    name = "sla"

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        in_force = np.flatnonzero(ctx.sla_in_force)
        if not in_force.size:
            return np.full(idx.size, NAN)
        # One row of best target values per distinct (site, service) key.
        values, kinds, index = ctx.user.sla_targets(in_force)
        own, whole_site = index.find(ctx.table, idx)
        return _sla_raw(values, own, whole_site)


@njit(cache=True)
def _sla_raw(values, own, whole_site):
    """Per candidate: its SLA targets (the larger of its service's and its site's row of
    `values`, none = 0), each divided by the largest of that target across the candidates,
    averaged over the targets that are not 0 everywhere; when all are, 1 if covered by an
    SLA, else 0."""
    n, k = own.size, values.shape[1]
    mine = np.zeros((n, k))
    largest = np.zeros(k)
    for i in range(n):
        for j in range(k):
            a = values[own[i], j] if own[i] >= 0 else 0.0
            b = values[whole_site[i], j] if whole_site[i] >= 0 else 0.0
            mine[i, j] = max(a, b)
            largest[j] = max(largest[j], mine[i, j])
    useful = 0
    for j in range(k):
        useful += largest[j] > 0
    out = np.empty(n)
    for i in range(n):
        if useful == 0:
            out[i] = 1.0 if own[i] >= 0 or whole_site[i] >= 0 else 0.0
            continue
        total = 0.0
        for j in range(k):
            if largest[j] > 0:
                total += mine[i, j] / largest[j]
        out[i] = total / useful
    return out


class PreferenceScorer(Scorer):
    """The user's preference weight for the service (or its site); none = 0."""

    name = "preference"
    default_weight = 2.0

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        if not len(ctx.request.preferences):
            return np.full(idx.size, NAN)
        hashes, weights = ctx.user.preferences()
        typ, site, service = hashes.T
        with_type, with_service = typ != _EMPTY, service != _EMPTY
        t = ctx.table
        out = np.full(idx.size, -1, dtype=np.int64)
        # Most specific first: (type, site, service), (any, site, service), (type, site),
        # (any, site); each shape is looked up only if some preference has it.
        for want_type, want_service in ((True, True), (False, True), (True, False)):
            mine = np.flatnonzero((with_type == want_type) & (with_service == want_service))
            if mine.size:
                index = KeyIndex(pair_keys(pair_keys(typ[mine], site[mine]), service[mine]), mine)
                c_type = t.type_hash[idx] if want_type else _EMPTY
                c_service = t.service_hash[idx] if want_service else _EMPTY
                keys = pair_keys(
                    pair_keys(_as_array(c_type, idx.size), t.site_hash[idx]), c_service
                )
                out = np.where(out < 0, index.find(keys), out)
        mine = np.flatnonzero(~with_type & ~with_service)
        if mine.size:
            site_of, first = t.sites
            per_site = KeyIndex(site[mine], mine).find(t.site_hash[first])
            out = np.where(out < 0, per_site[site_of[idx]], out)
        return np.where(out >= 0, weights[np.maximum(out, 0)], 0.0)


def _as_array(h: np.ndarray | np.uint64, n: int) -> np.ndarray:
    return h if isinstance(h, np.ndarray) else np.full(n, h, dtype=np.uint64)


class MonitoringScorer(Scorer):
    """Recent probes: success rate times a speed factor 1/(1 + response_time/1 s),
    averaged with weights halving every monitoring half-life. A degraded site counts half.
    No probes = no data."""

    name = "monitoring"

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        out = np.full(idx.size, NAN)
        entries, values = ctx.user.monitoring_values(ctx.now, ctx.knobs.monitoring_half_life_s)
        if entries.size:
            own, whole_site = ctx.user.monitoring_index(entries).find(ctx.table, idx)
            pick = np.where(own >= 0, own, whole_site)
            out = np.where(pick >= 0, values[np.maximum(pick, 0)], NAN)
        degraded = ctx.table.status[idx] == pb.STATUS_DEGRADED
        out[degraded] *= 0.5
        return out


class HeadroomScorer(Scorer):
    """Free capacity left after placing the deployment: the tightest resource's free
    fraction of its limit (unlimited = 1). No quota published = no data."""

    name = "headroom"
    default_weight = 0.5

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        limits, usage = ctx.table.quota
        return quota.headroom(limits, usage, ctx.quota_need, idx)


class HistoryScorer(Scorer):
    """This platform's own past deployments on the site: a smoothed, decayed success rate
    (fed by orchestrator events; see history.py)."""

    name = "history"

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        t = ctx.table
        site_of, first = t.sites
        by_hash = getattr(ctx.history, "success_by_hash", None)
        if by_hash is not None:  # the sites' hashes, no need to decode their ids
            return by_hash(t.site_hash[first], ctx.now)[site_of[idx]]
        names, position = t.site_names(idx)
        return ctx.history.success_estimates(names, ctx.now)[position]


class CostScorer(Scorer):
    """Price of one instance-hour: the chosen flavor's price, else the site's per-CPU/GPU/GB
    prices applied to it, else the service's flat price; lower is better. None = no data."""

    name = "cost"
    default_weight = 0.5
    higher_is_better = False

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        t = ctx.table
        cpus, ram, gpus = ctx.per_instance_need
        prices, problem, at = cost.instance_cost(
            t.nums, t.flavors.nums, ctx.flavor_match.chosen, idx, cpus, ram, gpus
        )
        if problem == cost.BAD_FLAT:
            raise RankInputError(
                f"candidates[{at}].cost_per_hour must be a finite number >= 0, "
                f"got {t.nums[at, d.C_COST_FLAT]}"
            )
        if problem == cost.BAD_BREAKDOWN:
            raise RankInputError(f"candidates[{at}].cost: prices must be finite numbers >= 0")
        if problem == cost.BAD_FLAVOR:
            raise RankInputError(
                f"candidates[{t.flavors.owner[at]}].flavors[{t.flavors.message(at).id}]"
                f".cost_per_hour must be a finite number >= 0, got {t.flavors.nums[at, d.F_COST]}"
            )
        return prices


BUILTIN: list[type[Scorer]] = [
    SlaScorer,
    PreferenceScorer,
    MonitoringScorer,
    HeadroomScorer,
    HistoryScorer,
    CostScorer,
]
