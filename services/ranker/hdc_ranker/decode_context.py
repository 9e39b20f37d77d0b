"""Compiled decoding of a RankRequest's user context: SLAs, preferences, monitoring.

A 10,000-candidate request typically carries hundreds of SLAs and monitoring entries;
reading them through the Python protobuf API (a map per SLA, a message per probe) costs
milliseconds. These functions read them from the wire bytes into arrays (strings as
hashes, plus the byte span of each SLA target's name), like decode.py does for the
candidates. The protobuf message of the request stays available to plug-ins.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hdc_ranker.decode import next_field, read_timestamp
from hdc_ranker.wire import EMPTY_HASH, ERR_MALFORMED, OK, double_at, hash_span

# Request fields.
T_SLA, T_PREFERENCE, T_MONITORING = 0x12, 0x1A, 0x22

# SLAs: hashes ("sh": id, site id, service id), times ("st": start, end; NaN unset), length
# of the site id ("sl", 0 = missing).
S_ID, S_SITE, S_SERVICE = 0, 1, 2
S_START, S_END = 0, 1
# SLA targets (map entries, in order): owner SLA, name hash, name span, value.
# Preferences: hashes ("ph": service type, site, service, SLA id), weight, site id length.
P_TYPE, P_SITE, P_SERVICE, P_SLA = 0, 1, 2, 3
# Monitoring: hashes ("mh": site, service), site id length; probes: owner entry, (success
# rate, response time ms, time; NaN unset).
M_SITE, M_SERVICE = 0, 1
R_RATE, R_RESPONSE_MS, R_TIME = 0, 1, 2


@njit(cache=True)
def _hash(at, off, n):
    return hash_span(at, off, n)


@njit(cache=True)
def _count(at, head):
    """(SLAs, targets, preferences, monitoring entries, probes) in the head spans."""
    n_s = n_t = n_p = n_m = n_r = 0
    for j in range(head.shape[0]):
        tag, _, vs, q = next_field(at, head[j, 0], head[j, 1])
        if q < 0:
            continue
        if tag == T_SLA:
            n_s += 1
        elif tag == T_PREFERENCE:
            n_p += 1
        elif tag == T_MONITORING:
            n_m += 1
        else:
            continue
        pos = vs
        while pos < q:
            stag, _, _, sq = next_field(at, pos, q)
            if sq < 0:
                break
            if tag == T_SLA and stag == 0x22:
                n_t += 1
            elif tag == T_MONITORING and stag == 0x1A:
                n_r += 1
            pos = sq
    return n_s, n_t, n_p, n_m, n_r


@njit(cache=True)
def decode_context(buf, head):
    """SLAs, preferences and monitoring of the request `buf`, whose top-level fields other
    than the candidates are the spans `head` (decode.decode_request).

    Returns (status, (sh, st, sl), (t_owner, t_hash, t_span, t_value), (ph, p_weight, pl),
    (mh, ml), (r_owner, r_num)).
    """
    at = buf.ctypes.data
    n_s, n_t, n_p, n_m, n_r = _count(at, head)
    sh = np.zeros((n_s, 3), np.uint64)
    st = np.full((n_s, 2), np.nan)
    sl = np.zeros(n_s, np.int64)
    t_owner = np.zeros(n_t, np.int64)
    t_hash = np.zeros(n_t, np.uint64)
    t_span = np.zeros((n_t, 2), np.int64)
    t_value = np.zeros(n_t)
    ph = np.zeros((n_p, 4), np.uint64)
    p_weight = np.zeros(n_p)
    pl = np.zeros(n_p, np.int64)
    mh = np.zeros((n_m, 2), np.uint64)
    ml = np.zeros(n_m, np.int64)
    r_owner = np.zeros(n_r, np.int64)
    r_num = np.full((n_r, 3), np.nan)
    status = OK
    i_s = i_t = i_p = i_m = i_r = 0
    for j in range(head.shape[0]):
        tag, _, vs, q = next_field(at, head[j, 0], head[j, 1])
        if q < 0 or (tag != T_SLA and tag != T_PREFERENCE and tag != T_MONITORING):
            continue
        for k in range(3):
            if tag == T_SLA:
                sh[i_s, k] = EMPTY_HASH
            elif tag == T_MONITORING and k < 2:
                mh[i_m, k] = EMPTY_HASH
        if tag == T_PREFERENCE:
            for k in range(4):
                ph[i_p, k] = EMPTY_HASH
        pos = vs
        while pos < q:
            stag, v, svs, sq = next_field(at, pos, q)
            if sq < 0:
                status = ERR_MALFORMED
                break
            if tag == T_SLA:
                if stag == 0x0A:
                    sh[i_s, S_ID] = _hash(at, svs, v)
                elif stag == 0x12:
                    sh[i_s, S_SITE] = _hash(at, svs, v)
                    sl[i_s] = v
                elif stag == 0x1A:
                    sh[i_s, S_SERVICE] = _hash(at, svs, v)
                elif stag == 0x22:  # targets map entry: key = 1, value = 2
                    t_owner[i_t] = i_s
                    t_hash[i_t] = EMPTY_HASH
                    t_span[i_t, 0] = svs
                    t_span[i_t, 1] = 0
                    ep = svs
                    while ep < sq:
                        etag, ev, evs, eq = next_field(at, ep, sq)
                        if eq < 0:
                            status = ERR_MALFORMED
                            break
                        if etag == 0x0A:
                            t_hash[i_t] = _hash(at, evs, ev)
                            t_span[i_t, 0] = evs
                            t_span[i_t, 1] = ev
                        elif etag == 0x11:
                            t_value[i_t] = double_at(at, evs)
                        ep = eq
                    i_t += 1
                elif stag == 0x2A or stag == 0x32:
                    good, t = read_timestamp(at, svs, sq)
                    if not good:
                        status = ERR_MALFORMED
                    st[i_s, S_START if stag == 0x2A else S_END] = t
            elif tag == T_PREFERENCE:
                if stag == 0x0A:
                    ph[i_p, P_TYPE] = _hash(at, svs, v)
                elif stag == 0x12:
                    ph[i_p, P_SITE] = _hash(at, svs, v)
                    pl[i_p] = v
                elif stag == 0x1A:
                    ph[i_p, P_SERVICE] = _hash(at, svs, v)
                elif stag == 0x21:
                    p_weight[i_p] = double_at(at, svs)
                elif stag == 0x2A:
                    ph[i_p, P_SLA] = _hash(at, svs, v)
            else:
                if stag == 0x0A:
                    mh[i_m, M_SITE] = _hash(at, svs, v)
                    ml[i_m] = v
                elif stag == 0x12:
                    mh[i_m, M_SERVICE] = _hash(at, svs, v)
                elif stag == 0x1A:  # a Probe
                    r_owner[i_r] = i_m
                    r_num[i_r, R_RATE] = 0.0
                    r_num[i_r, R_RESPONSE_MS] = 0.0
                    ep = svs
                    while ep < sq:
                        etag, ev, evs, eq = next_field(at, ep, sq)
                        if eq < 0:
                            status = ERR_MALFORMED
                            break
                        if etag == 0x11:
                            r_num[i_r, R_RATE] = double_at(at, evs)
                        elif etag == 0x19:
                            r_num[i_r, R_RESPONSE_MS] = double_at(at, evs)
                        elif etag == 0x22:
                            good, t = read_timestamp(at, evs, eq)
                            if not good:
                                status = ERR_MALFORMED
                            r_num[i_r, R_TIME] = t
                        ep = eq
                    i_r += 1
            if status != OK:
                break
            pos = sq
        if status != OK:
            break
        if tag == T_SLA:
            i_s += 1
        elif tag == T_PREFERENCE:
            i_p += 1
        else:
            i_m += 1
    return (
        status,
        (sh, st, sl),
        (t_owner, t_hash, t_span, t_value),
        (ph, p_weight, pl),
        (mh, ml),
        (r_owner, r_num),
    )
