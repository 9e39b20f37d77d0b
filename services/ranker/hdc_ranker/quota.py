"""Compiled quota arithmetic: the tenant's quota columns, what does not fit, headroom.

Per candidate and resource (decode.QUOTA columns: instances, cores, ram_mb, gpus,
floating_ips); loops over five resources are cheaper compiled than as numpy reductions
along a five-wide axis.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hdc_ranker import decode as d


@njit(cache=True)
def quota_columns(cf):
    """(limits, usage) of every candidate, shape (n, 5) each (NaN limit = unknown, -1 =
    unlimited), and the first invalid (candidate, resource) or (-1, -1): a limit below -1
    or between -1 and 0, or a negative usage."""
    n = cf.shape[0]
    limits = np.empty((n, 5))
    usage = np.empty((n, 5))
    bad_i = bad_j = -1
    for i in range(n):
        for j in range(5):
            lim = cf[i, d.C_LIMITS + j]
            use = cf[i, d.C_USAGE + j]
            limits[i, j] = lim
            usage[i, j] = use
            if bad_i < 0 and ((lim < 0 and lim != -1) or use < 0):
                bad_i, bad_j = i, j
    return limits, usage, bad_i, bad_j


@njit(cache=True)
def quota_short(limits, usage, need):
    """Per candidate and resource: does the deployment not fit (limit - usage - need < 0;
    unknown and unlimited limits always fit); and per candidate: does any not fit."""
    n = limits.shape[0]
    short = np.zeros((n, 5), np.bool_)
    any_short = np.zeros(n, np.bool_)
    for i in range(n):
        for j in range(5):
            lim = limits[i, j]
            if lim >= 0 and lim - usage[i, j] - need[i, j] < 0:
                short[i, j] = True
                any_short[i] = True
    return short, any_short


@njit(cache=True)
def headroom(limits, usage, need, idx):
    """Per candidate of `idx`: the smallest free fraction of a limit left after placing the
    deployment, clipped to [0, 1] (unlimited = 1; a zero or unknown limit is no data);
    NaN when no resource has data."""
    out = np.full(idx.size, np.nan)
    for r in range(idx.size):
        i = idx[r]
        best = np.inf
        for j in range(5):
            lim = limits[i, j]
            if lim == -1:
                frac = 1.0
            elif lim > 0:
                frac = min(1.0, max(0.0, (lim - usage[i, j] - need[i, j]) / lim))
            else:
                continue
            best = min(best, frac)
        if best != np.inf:
            out[r] = best
    return out
