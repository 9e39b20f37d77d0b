"""The ranking core: run the filters, score the survivors, normalise, weight, order.

Everything per-candidate is a numpy array; Python loops happen only inside plug-ins that
must look at strings, and when explanations are rendered.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb
from numba import njit

from hdc_ranker.context import HistorySource, Knobs, NoHistory, RankContext
from hdc_ranker.errors import RankInputError
from hdc_ranker.plugins import Filter, Registry, Rejected, Scorer
from hdc_ranker.table import CandidateTable, ts_seconds
from hdc_ranker.user_context import UserContext
from hdc_ranker.validate import validate_site_ids


@dataclass
class Defaults:
    """Configured values a request may override."""

    weights: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    tie_epsilon: float = 1e-6
    max_age_s: float = 3600.0
    monitoring_half_life_s: float = 6 * 3600.0


@dataclass
class Outcome:
    n: int
    order: np.ndarray  # ranked candidate indices, best first
    rank: np.ndarray  # per candidate: 1.. or -1
    total: np.ndarray  # per candidate: weighted mean of normalised scores (0 if rejected)
    scores: np.ndarray  # (n, len(criteria)) normalised scores; NaN rows for rejected
    criteria: list[str]
    weights: list[float]
    rejections: list[tuple[Filter, Rejected]]  # every (filter, reason) with its mask
    first_code: np.ndarray  # per candidate: index into `rejections` of its first reason, -1
    chosen_flavor: np.ndarray  # per candidate: flavor index in the flat table, -1
    chosen_image: np.ndarray  # per candidate: image index in the flat table, -1
    seed: int
    ctx: RankContext
    layout: int = pb.RESULT_LAYOUT_PER_CANDIDATE  # how the answer lists the candidates

    @property
    def ranked_count(self) -> int:
        return int(self.order.size)

    @cached_property
    def _rejections_by_candidate(self) -> dict[int, list[int]]:
        by: dict[int, list[int]] = {}
        for k, (_f, r) in enumerate(self.rejections):
            for i in np.flatnonzero(r.mask).tolist():
                by.setdefault(i, []).append(k)
        return by

    def rejections_of(self, i: int) -> list[tuple[Filter, Rejected]]:
        """The (filter, reason) pairs that rejected candidate i, in filter order."""
        return [self.rejections[k] for k in self._rejections_by_candidate.get(int(i), [])]

    def reasons(self, i: int) -> list[tuple[str, str, str]]:
        """(code, filter, message) of every filter that rejected candidate i."""
        return [(r.code, f.name, r.explain(i)) for f, r in self.rejections_of(i)]

    def rejection_counts(self) -> dict[str, int]:
        counts = np.bincount(self.first_code[self.first_code >= 0], minlength=len(self.rejections))
        out: dict[str, int] = {}
        for k, (_f, r) in enumerate(self.rejections):
            if counts[k]:
                out[r.code] = out.get(r.code, 0) + int(counts[k])
        return out

    def summary(self) -> str:
        """e.g. "0/12 providers: 7 no GPU, 3 quota exceeded, 2 stale data"."""
        if self.n == 0:
            return "0/0 providers: no candidates given"
        counts = np.bincount(self.first_code[self.first_code >= 0], minlength=len(self.rejections))
        by_label: dict[str, int] = {}
        for k, (_f, r) in enumerate(self.rejections):
            if counts[k]:
                by_label[r.label] = by_label.get(r.label, 0) + int(counts[k])
        head = f"{self.ranked_count}/{self.n} providers"
        if not by_label:
            return head + " ranked"
        # Most frequent reason first; equal counts keep filter order (dicts are ordered).
        parts = sorted(by_label.items(), key=lambda kv: -kv[1])
        return head + ": " + ", ".join(f"{c} {label}" for label, c in parts)


class Ranker:
    def __init__(
        self,
        registry: Registry,
        defaults: Defaults | None = None,
        history: HistorySource | None = None,
    ) -> None:
        self.registry = registry
        self.defaults = defaults or Defaults()
        self.history = history or NoHistory()

    # ------------------------------------------------------------------ selection

    def _select(self, opts: pb.RankOptions) -> tuple[list[Filter], list[Scorer], list[float]]:
        reg = self.registry
        for what, names, known in (
            ("filters", opts.filters, reg.filters),
            ("skip_filters", opts.skip_filters, reg.filters),
            ("scorers", opts.scorers, reg.scorers),
        ):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise RankInputError(f"options.{what}: unknown {unknown} (known: {sorted(known)})")
        unknown = [n for n in opts.weights if n not in reg.scorers]
        if unknown:
            raise RankInputError(
                f"options.weights: unknown criteria {sorted(unknown)} "
                f"(known: {sorted(reg.scorers)})"
            )
        for name, w in opts.weights.items():
            if not (w >= 0 and math.isfinite(w)):
                raise RankInputError(
                    f"options.weights[{name!r}] must be a finite number >= 0, got {w}"
                )
        skip = set(opts.skip_filters)
        wanted_f = set(opts.filters) or set(reg.filters)
        filters = [f for name, f in reg.filters.items() if name in wanted_f and name not in skip]
        wanted_s = set(opts.scorers) or set(reg.scorers)
        scorers, weights = [], []
        for name, s in reg.scorers.items():
            if name not in wanted_s:
                continue
            w = opts.weights.get(name, self.defaults.weights.get(name, s.default_weight))
            if w > 0:
                scorers.append(s)
                weights.append(float(w))
        return filters, scorers, weights

    def _knobs(self, opts: pb.RankOptions) -> Knobs:
        d = self.defaults
        if opts.result_layout not in pb.ResultLayout.values():
            raise RankInputError(
                f"options.result_layout: unknown value {opts.result_layout} "
                f"(known: {pb.ResultLayout.keys()})"
            )
        for name in ("max_age_s", "tie_epsilon"):
            v = getattr(opts, name)
            if not (v >= 0 and math.isfinite(v)):
                raise RankInputError(f"options.{name} must be a finite number >= 0, got {v}")
        return Knobs(
            max_age_s=opts.max_age_s or d.max_age_s,
            tie_epsilon=opts.tie_epsilon or d.tie_epsilon,
            seed=opts.seed if opts.HasField("seed") else d.seed,
            monitoring_half_life_s=d.monitoring_half_life_s,
        )

    # ------------------------------------------------------------------ ranking

    def decode(self, raw: bytes) -> tuple[pb.RankRequest, CandidateTable]:
        """The request without its candidates (parsed), and the candidates (columns)."""
        table = CandidateTable(raw)
        return table.head, table

    def rank(self, request: pb.RankRequest | bytes, now: float | None = None) -> Outcome:
        """Rank a request (a message, or its serialized bytes as gRPC delivers them)."""
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        request, table = self.decode(raw)
        user = UserContext(table)  # reads and checks SLAs, preferences, monitoring
        validate_site_ids(table)
        opts = request.options
        filters, scorers, weights = self._select(opts)
        knobs = self._knobs(opts)
        t_now = ts_seconds(opts.now)
        if math.isnan(t_now):
            t_now = time.time() if now is None else now
        ctx = RankContext(request, table, t_now, knobs, self.history, user)
        ctx.probes  # noqa: B018 - reads and checks the probes: bad input fails before ranking
        n = ctx.n

        rejections: list[tuple[Filter, Rejected]] = []
        first_code = np.full(n, -1, dtype=np.int64)
        rejected = np.zeros(n, dtype=bool)
        if n:
            for f in filters:
                for r in f.reject(ctx):
                    mask = np.asarray(r.mask, dtype=bool)
                    if mask.shape != (n,):
                        raise TypeError(f"filter {f.name!r} returned a mask of shape {mask.shape}")
                    r.mask = mask
                    newly = mask & ~rejected
                    first_code[newly] = len(rejections)
                    rejected |= mask
                    rejections.append((f, r))

        alive = np.flatnonzero(~rejected)
        k = len(scorers)
        scores = np.full((n, k), np.nan)
        total = np.zeros(n)
        w = np.asarray(weights, dtype=np.float64)
        if alive.size and k:
            norm = np.empty((alive.size, k))
            for j, s in enumerate(scorers):
                raw = np.asarray(s.raw(ctx, alive), dtype=np.float64)
                if raw.shape != (alive.size,):
                    raise TypeError(f"scorer {s.name!r} returned shape {raw.shape}")
                norm[:, j] = normalise(raw, s.higher_is_better, s.missing)
            scores[alive] = norm
            total[alive] = norm @ w / w.sum()

        order = tie_break_order(alive, total[alive], knobs.tie_epsilon, knobs.seed)
        rank = np.full(n, -1, dtype=np.int64)
        rank[order] = np.arange(1, order.size + 1)
        return Outcome(
            n=n,
            order=order,
            rank=rank,
            total=total,
            scores=scores,
            criteria=[s.name for s in scorers],
            weights=weights,
            rejections=rejections,
            first_code=first_code,
            chosen_flavor=ctx.flavor_match.chosen
            if n and _uses_flavors(filters)
            else np.full(n, -1),
            chosen_image=np.asarray(ctx.shared.get("image", np.full(n, -1)), dtype=np.int64),
            seed=knobs.seed,
            ctx=ctx,
            layout=opts.result_layout,
        )


def _uses_flavors(filters: Sequence[Filter]) -> bool:
    return any(f.name == "flavor" for f in filters)


def normalise(raw: np.ndarray, higher_is_better: bool, missing: float) -> np.ndarray:
    """Min-max to [0,1] across candidates (1 = best); NaN -> `missing`; all equal -> 1."""
    known = ~np.isnan(raw)
    out = np.full(raw.shape, float(missing))
    if not known.any():
        return out
    vals = raw[known]
    lo, hi = vals.min(), vals.max()
    if hi - lo <= 0 or not math.isfinite(hi - lo):
        out[known] = 1.0
        return out
    scaled = (vals - lo) / (hi - lo)
    out[known] = scaled if higher_is_better else 1.0 - scaled
    return out


def tie_break_order(idx: np.ndarray, totals: np.ndarray, epsilon: float, seed: int) -> np.ndarray:
    """`idx` ordered by total, best first. Totals within `epsilon` of the best of their
    group are near ties, ordered by a shuffle drawn from `seed`: reproducible, yet no site
    wins every tie because of its position in the list. A group never spans more than
    `epsilon`, however densely the totals are packed."""
    if idx.size == 0:
        return idx
    # Any sort will do: equal totals always fall in one group, ordered by their keys.
    by_total = np.argsort(-totals)
    group = _tie_groups(totals[by_total], epsilon)
    shuffle = np.random.default_rng(seed).random(idx.size)
    # Within each group, the seeded random key decides.
    return idx[shuffle_ties(by_total, group, shuffle[by_total])]


@njit(cache=True)
def _tie_groups(sorted_totals: np.ndarray, epsilon: float) -> np.ndarray:
    """Group of each total (sorted, best first): a group starts at a total and takes the
    following ones while they are within `epsilon` of that first one."""
    group = np.empty(sorted_totals.size, np.int64)
    anchor = 0
    for j in range(sorted_totals.size):
        if sorted_totals[anchor] - sorted_totals[j] > epsilon:
            anchor = j
        group[j] = anchor
    return group


@njit(cache=True)
def shuffle_ties(order, group, shuffle):
    """`order` (by total, best first) with each group of near ties reordered by its
    `shuffle` keys, ascending (groups are contiguous runs; most have one member)."""
    out = order.copy()
    start = 0
    n = order.size
    while start < n:
        end = start + 1
        while end < n and group[end] == group[start]:
            end += 1
        if end - start > 1:
            keys = shuffle[start:end]
            within = np.argsort(keys, kind="mergesort")
            for k in range(end - start):
                out[start + k] = order[start + within[k]]
        start = end
    return out
