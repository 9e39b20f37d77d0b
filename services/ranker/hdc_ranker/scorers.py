"""Built-in scorers: soft criteria, each one raw number per candidate.

The engine normalises every criterion to [0,1] across the candidates of the request, so a
scorer need not care about units; that is what keeps 100 public IPs in an SLA from
outweighing everything else (CloudProviderRanker summed raw numbers).
"""

from __future__ import annotations

import math

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb

from hdc_ranker.context import RankContext
from hdc_ranker.plugins import Scorer
from hdc_ranker.table import EMPTY_HASH, lookup, pair_key, pair_keys, text_hash

NAN = math.nan


class SlaScorer(Scorer):
    """How much an SLA in force guarantees: each target type is scaled by its largest value
    across the candidates, then averaged over the target types. No SLA = 0; no SLAs in the
    request at all = no data."""

    name = "sla"

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        slas = ctx.slas_in_force
        if not slas:
            return np.full(idx.size, NAN)
        # One row of best target values per distinct (site, service) key.
        keys: dict[int, int] = {}
        merged: list[dict[str, float]] = []
        for sla in slas:
            key = pair_key(text_hash(sla.site_id), text_hash(sla.service_id))
            if key not in keys:
                keys[key] = len(merged)
                merged.append({})
            row = merged[keys[key]]
            for name, value in sla.targets.items():
                row[name] = max(row.get(name, 0.0), value)
        kinds = sorted({name for row in merged for name in row})
        values = np.array([[row.get(k, 0.0) for k in kinds] for row in merged]).reshape(
            len(merged), len(kinds)
        )
        own, whole_site = ctx.match_keys(idx, keys)
        covered = (own >= 0) | (whole_site >= 0)
        pad = np.vstack([values, np.zeros((1, len(kinds)))])  # row -1: no SLA
        per_candidate = np.maximum(pad[own], pad[whole_site])
        largest = per_candidate.max(axis=0) if idx.size else np.zeros(len(kinds))
        useful = largest > 0
        if not useful.any():
            # SLAs without numeric targets: being covered is what counts.
            return covered.astype(np.float64)
        return (per_candidate[:, useful] / largest[useful]).mean(axis=1)


class PreferenceScorer(Scorer):
    """The user's preference weight for the service (or its site); none = 0."""

    name = "preference"
    default_weight = 2.0

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        prefs = ctx.request.preferences
        if not prefs:
            return np.full(idx.size, NAN)
        # Most specific first: (type, site, service), (any, site, service), (type, site),
        # (any, site). Keys combine the hashes of type, site and service.
        best: dict[int, float] = {}
        for p in prefs:
            key = pair_key(
                pair_key(text_hash(p.service_type), text_hash(p.site_id)), text_hash(p.service_id)
            )
            best[key] = max(best.get(key, 0.0), p.weight)
        weights = np.fromiter(best.values(), np.float64, len(best))
        table = {k: j for j, k in enumerate(best)}
        t = ctx.table
        site, service, typ = t.site_hash[idx], t.service_hash[idx], t.type_hash[idx]
        out = np.full(idx.size, -1, dtype=np.int64)
        for type_h, service_h in (
            (typ, service),
            (EMPTY_HASH, service),
            (typ, EMPTY_HASH),
            (EMPTY_HASH, EMPTY_HASH),
        ):
            keys = pair_keys(
                pair_keys(_as_array(type_h, idx.size), site), _as_array(service_h, idx.size)
            )
            found = lookup(keys, table)
            out = np.where(out < 0, found, out)
        return np.where(out >= 0, weights[np.maximum(out, 0)], 0.0)


def _as_array(h: np.ndarray | int, n: int) -> np.ndarray:
    return h if isinstance(h, np.ndarray) else np.full(n, h, dtype=np.uint64)


class MonitoringScorer(Scorer):
    """Recent probes: success rate times a speed factor 1/(1 + response_time/1 s),
    averaged with weights halving every monitoring half-life. A degraded site counts half.
    No probes = no data."""

    name = "monitoring"

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        half_life = ctx.knobs.monitoring_half_life_s
        entry, rate, rt, when = ctx.probes
        monitoring = ctx.request.monitoring
        out = np.full(idx.size, NAN)
        if entry.size:
            age = np.where(np.isnan(when), 0.0, np.maximum(0.0, ctx.now - when))
            w = 0.5 ** (age / half_life)
            num = np.bincount(
                entry, weights=w * rate / (1.0 + rt / 1000.0), minlength=len(monitoring)
            )
            den = np.bincount(entry, weights=w, minlength=len(monitoring))
            keys: dict[int, int] = {}
            for k in np.flatnonzero(den > 0).tolist():
                m = monitoring[k]
                keys[pair_key(text_hash(m.site_id), text_hash(m.service_id))] = k
            if keys:
                values = num / np.where(den > 0, den, 1.0)
                own, whole_site = ctx.match_keys(idx, keys)
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
        lim, use, need = limits[idx], usage[idx], ctx.quota_need[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(lim > 0, (lim - use - need) / lim, np.nan)
            frac = np.where(lim < 0, 1.0, frac)  # -1: unlimited
            frac = np.clip(frac, 0.0, 1.0)
        known = ~np.isnan(frac)
        out = np.where(known, frac, np.inf).min(axis=1)
        out[~known.any(axis=1)] = NAN
        return out


class HistoryScorer(Scorer):
    """This platform's own past deployments on the site: a smoothed, decayed success rate
    (fed by orchestrator events; see history.py)."""

    name = "history"

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        names, position = ctx.table.site_names(idx)
        return ctx.history.success_estimates(names, ctx.now)[position]


class CostScorer(Scorer):
    """Price of one instance-hour: the chosen flavor's price, else the site's per-CPU/GPU/GB
    prices applied to it, else the service's flat price; lower is better. None = no data."""

    name = "cost"
    default_weight = 0.5
    higher_is_better = False

    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray:
        prices = ctx.table.cost(idx)
        per_cpu, per_gpu, per_gb, flat = prices.T
        cpus, ram, gpus = (x[idx] for x in ctx.per_instance_need)
        out = np.where(
            np.isnan(per_cpu), flat, per_cpu * cpus + per_gpu * gpus + per_gb * ram / 1024
        )
        if len(ctx.table.flavors):
            flavor_cost = ctx.table.flavors.cost_per_hour(ctx.flavor_match.chosen[idx])
            out = np.where(np.isnan(flavor_cost), out, flavor_cost)
        return out


BUILTIN: list[type[Scorer]] = [
    SlaScorer,
    PreferenceScorer,
    MonitoringScorer,
    HeadroomScorer,
    HistoryScorer,
    CostScorer,
]
