"""Compiled price of one instance-hour per candidate, with the checks of the prices used."""

from __future__ import annotations

import numpy as np
from numba import njit

from hdc_ranker import decode as d

BAD_FLAT, BAD_BREAKDOWN, BAD_FLAVOR = 1, 2, 3


@njit(cache=True)
def _price_ok(x):
    return np.isfinite(x) and x >= 0


@njit(cache=True)
def instance_cost(cf, ff, chosen, idx, cpus, ram_mb, gpus):
    """Per candidate of `idx`: the chosen flavor's price; else the candidate's per-CPU,
    per-GPU and per-GB-RAM prices applied to one instance (cpus, ram_mb, gpus, per
    candidate); else its flat price; NaN = none published.

    Returns (prices, problem, candidate): problem is 0, or BAD_* for the first candidate
    (in this order of checks) whose flat, breakdown or flavor price is not a finite
    number >= 0.
    """
    out = np.empty(idx.size)
    bad = np.full(4, -1, np.int64)  # first bad candidate per problem
    for r in range(idx.size):
        c = idx[r]
        flat = cf[c, d.C_COST_FLAT]
        if cf[c, d.C_COST_FLAT_SET] > 0 and not _price_ok(flat) and bad[BAD_FLAT] < 0:
            bad[BAD_FLAT] = c
        per_cpu = cf[c, d.C_COST_CPU]
        per_gpu = cf[c, d.C_COST_GPU]
        per_gb = cf[c, d.C_COST_GB_RAM]
        if np.isnan(per_cpu):
            price = flat
        else:
            ok = _price_ok(per_cpu) and _price_ok(per_gpu) and _price_ok(per_gb)
            if not ok and bad[BAD_BREAKDOWN] < 0:
                bad[BAD_BREAKDOWN] = c
            price = per_cpu * cpus[c] + per_gpu * gpus[c] + per_gb * ram_mb[c] / 1024
        f = chosen[c]
        if f >= 0 and ff[f, d.F_COST_SET] > 0:
            price = ff[f, d.F_COST]
            if not _price_ok(price) and bad[BAD_FLAVOR] < 0:
                bad[BAD_FLAVOR] = f
        out[r] = price
    for problem in (BAD_FLAT, BAD_BREAKDOWN, BAD_FLAVOR):
        if bad[problem] >= 0:
            return out, problem, bad[problem]
    return out, 0, -1
