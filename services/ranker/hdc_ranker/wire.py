"""Compiled decoding of RankRequest candidates and encoding of RankResponse results.

Reading 10,000 candidates field by field through the Python protobuf API costs about a
quarter of a second (every attribute read makes a Python object). These functions read the
protobuf wire format of the candidates directly into numpy columns, and write the answer's
per-candidate records the same way, with numba. Field numbers are those of
proto/hdc/ranker/v1/ranker.proto (the test suite checks the columns against the Python
protobuf API, so a change of the .proto that these functions miss fails loudly).

Every read is bounds-checked: a malformed message returns an error code, never reads past
the buffer. Strings stay byte spans into the request; they are hashed (64-bit FNV-1a) for
the look-ups, and copied as bytes into the answer.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)

OK = 0
ERR_TRUNCATED = 1
ERR_WIRE_TYPE = 2

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5


# ---------------------------------------------------------------- primitives


@njit(cache=True)
def _varint(buf, pos, end):
    """(value, new position); position -1 if truncated or longer than 10 bytes."""
    result = np.uint64(0)
    shift = np.uint64(0)
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += np.uint64(7)
        if shift >= np.uint64(70):
            return result, -1
    return result, -1


@njit(cache=True)
def _skip(buf, pos, end, wt):
    """Position after a field's value of wire type `wt`; -1 if malformed."""
    if wt == WT_VARINT:
        _, pos = _varint(buf, pos, end)
        return pos
    if wt == WT_I64:
        return pos + 8 if pos + 8 <= end else -1
    if wt == WT_I32:
        return pos + 4 if pos + 4 <= end else -1
    if wt == WT_LEN:
        n, pos = _varint(buf, pos, end)
        if pos < 0 or n > np.uint64(end - pos):
            return -1
        return pos + np.int64(n)
    return -1


@njit(cache=True)
def _double(buf, pos):
    return buf[pos : pos + 8].view(np.float64)[0]


@njit(cache=True)
def _next_field(buf, pos, end):
    """One field at `pos`: (number, wire type, value, value start, next position).

    value is the varint itself (wire type 0) or the payload length (2); the next position
    is -1 when the field is malformed or runs past `end`.
    """
    tag, p = _varint(buf, pos, end)
    if p < 0:
        return 0, 0, np.uint64(0), 0, -1
    f = np.int64(tag >> np.uint64(3))
    wt = np.int64(tag & np.uint64(7))
    if wt == WT_VARINT:
        v, q = _varint(buf, p, end)
        return f, wt, v, p, q
    if wt == WT_LEN:
        n, s = _varint(buf, p, end)
        if s < 0 or n > np.uint64(end - s):
            return f, wt, n, s, -1
        return f, wt, n, s, s + np.int64(n)
    if wt == WT_I64:
        return f, wt, np.uint64(0), p, (p + 8 if p + 8 <= end else -1)
    if wt == WT_I32:
        return f, wt, np.uint64(0), p, (p + 4 if p + 4 <= end else -1)
    return f, wt, np.uint64(0), p, -1


@njit(cache=True)
def _signed(v):
    """int64 from the two's-complement uint64 of a varint."""
    if v >= np.uint64(0x8000000000000000):
        return -np.int64(~v) - 1
    return np.int64(v)


@njit(cache=True)
def fnv1a(buf, off, n, lower, strip_slash):
    """64-bit FNV-1a of buf[off:off+n]; ASCII-lowercased and/or without trailing '/'."""
    if strip_slash:
        while n > 0 and buf[off + n - 1] == 47:
            n -= 1
    h = FNV_OFFSET
    for k in range(off, off + n):
        b = buf[k]
        if lower and 65 <= b <= 90:
            b += 32
        h ^= np.uint64(b)
        h *= FNV_PRIME
    return h


def fnv1a_text(text: str, lower: bool = False, strip_slash: bool = False) -> int:
    """The same hash of a Python string (for the keys the spans are looked up against)."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    return int(fnv1a(data, 0, data.size, lower, strip_slash))


# ---------------------------------------------------------------- request


@njit(cache=True)
def _scan_error():
    z = np.empty(0, np.int64)
    return ERR_TRUNCATED, z, z, z, z, np.zeros((0, 4), np.int64)


@njit(cache=True)
def scan_request(buf):
    """Top level of a RankRequest: spans of the candidates and of every other field.

    Returns (status, cand_start, cand_end, head_start, head_end, counts) where counts has,
    per candidate, (#identity providers, #flavors, #images, #quotas).
    """
    end = buf.size
    n_c = 0
    n_h = 0
    pos = 0
    # pass 1: count
    while pos < end:
        tag, p = _varint(buf, pos, end)
        if p < 0:
            return _scan_error()
        field = tag >> np.uint64(3)
        wt = np.int64(tag & np.uint64(7))
        q = _skip(buf, p, end, wt)
        if q < 0:
            return _scan_error()
        if field == 5 and wt == WT_LEN:
            n_c += 1
        else:
            n_h += 1
        pos = q
    cand_start = np.empty(n_c, np.int64)
    cand_end = np.empty(n_c, np.int64)
    head_start = np.empty(n_h, np.int64)
    head_end = np.empty(n_h, np.int64)
    counts = np.zeros((n_c, 4), np.int64)
    i = 0
    j = 0
    pos = 0
    while pos < end:
        tag, p = _varint(buf, pos, end)
        field = tag >> np.uint64(3)
        wt = np.int64(tag & np.uint64(7))
        q = _skip(buf, p, end, wt)
        if field == 5 and wt == WT_LEN:
            n, s = _varint(buf, p, end)
            cand_start[i] = s
            cand_end[i] = q
            # count the repeated sub-messages of this candidate
            cp = s
            while cp < q:
                ctag, cq = _varint(buf, cp, q)
                if cq < 0:
                    return _scan_error()
                cf = ctag >> np.uint64(3)
                cwt = np.int64(ctag & np.uint64(7))
                nxt = _skip(buf, cq, q, cwt)
                if nxt < 0:
                    return _scan_error()
                if cwt == WT_LEN:
                    if cf == 7:
                        counts[i, 0] += 1
                    elif cf == 8:
                        counts[i, 1] += 1
                    elif cf == 9:
                        counts[i, 2] += 1
                    elif cf == 10:
                        counts[i, 3] += 1
                cp = nxt
            i += 1
        else:
            head_start[j] = pos
            head_end[j] = q
            j += 1
        pos = q
    return OK, cand_start, cand_end, head_start, head_end, counts


@njit(cache=True)
def _timestamp(buf, s, e):
    """Seconds of a google.protobuf.Timestamp (NaN when unset or zero)."""
    secs = np.int64(0)
    nanos = np.int64(0)
    pos = s
    while pos < e:
        tag, p = _varint(buf, pos, e)
        if p < 0:
            return np.nan, False
        f = tag >> np.uint64(3)
        wt = np.int64(tag & np.uint64(7))
        if wt == WT_VARINT:
            v, q = _varint(buf, p, e)
            if q < 0:
                return np.nan, False
            if f == 1:
                secs = _signed(v)
            elif f == 2:
                nanos = _signed(v)
        else:
            q = _skip(buf, p, e, wt)
            if q < 0:
                return np.nan, False
        pos = q
    if secs == 0 and nanos == 0:
        return np.nan, True
    return secs + nanos * 1e-9, True


@njit(cache=True)
def _quota_values(buf, s, e, out, set_mask):
    """QuotaValues fields 1..5 (instances, cores, ram_mb, gpus, floating_ips) into out."""
    pos = s
    while pos < e:
        tag, p = _varint(buf, pos, e)
        if p < 0:
            return False
        f = np.int64(tag >> np.uint64(3))
        wt = np.int64(tag & np.uint64(7))
        if wt == WT_VARINT:
            v, q = _varint(buf, p, e)
            if q < 0:
                return False
            if 1 <= f <= 5:
                out[f - 1] = _signed(v)
                set_mask[f - 1] = True
        else:
            q = _skip(buf, p, e, wt)
            if q < 0:
                return False
        pos = q
    return True


@njit(cache=True)
def _bytes_equal(buf, off, n, needle):
    if n != needle.size:
        return False
    for k in range(n):  # noqa: SIM110 - compiled by numba: a plain loop
        if buf[off + k] != needle[k]:
            return False
    return True


@njit(cache=True)
def _decode_all(
    buf,
    cand_start,
    cand_end,
    tenant,
    strs,
    hashes,
    status,
    fresh,
    stale,
    cost,
    public_cloud,
    q_limits,
    q_usage,
    f_owner,
    f_span,
    f_num,
    f_strs,
    f_vendor,
    i_owner,
    i_strs,
    i_cuda,
    p_owner,
    p_hash,
    empty_hash,
):
    lim = np.zeros(5, np.int64)
    use = np.zeros(5, np.int64)
    lim_set = np.zeros(5, np.bool_)
    use_set = np.zeros(5, np.bool_)
    fi = 0
    ii = 0
    pi = 0
    for c in range(cand_start.size):
        s = cand_start[c]
        e = cand_end[c]
        quota_matched = False
        quota_seen = False
        pos = s
        while pos < e:
            f, wt, v0, p, q = _next_field(buf, pos, e)
            if q < 0:
                return ERR_TRUNCATED, c
            if wt == WT_LEN:
                vs, vn = p, np.int64(v0)
                if f == 1:
                    strs[c, 0] = vs
                    strs[c, 1] = vn
                elif f == 3:
                    strs[c, 2] = vs
                    strs[c, 3] = vn
                elif f == 4:
                    strs[c, 4] = vs
                    strs[c, 5] = vn
                elif f == 7:  # IdentityProvider
                    p_owner[pi] = c
                    p_hash[pi, 0] = empty_hash
                    p_hash[pi, 1] = empty_hash
                    sp = vs
                    while sp < q:
                        f2, w2, v, p2, q2 = _next_field(buf, sp, q)
                        if q2 < 0:
                            return ERR_TRUNCATED, c
                        if w2 == WT_LEN and (f2 == 1 or f2 == 3):
                            ss, sn = p2, np.int64(v)
                            p_hash[pi, 0 if f2 == 1 else 1] = fnv1a(buf, ss, sn, False, f2 == 1)
                        sp = q2
                    pi += 1
                elif f == 8:  # Flavor
                    f_owner[fi] = c
                    f_span[fi, 0] = vs
                    f_span[fi, 1] = q
                    f_num[fi, 5] = np.nan
                    f_vendor[fi] = empty_hash
                    sp = vs
                    while sp < q:
                        f2, w2, v, p2, q2 = _next_field(buf, sp, q)
                        if q2 < 0:
                            return ERR_TRUNCATED, c
                        if w2 == WT_VARINT:
                            if f2 == 3:
                                f_num[fi, 0] = v
                            elif f2 == 4:
                                f_num[fi, 1] = v
                            elif f2 == 5:
                                f_num[fi, 2] = v
                            elif f2 == 6:
                                f_num[fi, 3] = v
                            elif f2 == 9:
                                f_num[fi, 4] = 1.0 if v != 0 else 0.0
                        elif w2 == WT_LEN:
                            ss, sn = p2, np.int64(v)
                            if f2 == 1:
                                f_strs[fi, 0] = ss
                                f_strs[fi, 1] = sn
                            elif f2 == 2:
                                f_strs[fi, 2] = ss
                                f_strs[fi, 3] = sn
                            elif f2 == 7:
                                f_vendor[fi] = fnv1a(buf, ss, sn, True, False)
                            elif f2 == 8:
                                f_strs[fi, 4] = ss
                                f_strs[fi, 5] = sn
                        elif w2 == WT_I64 and f2 == 100:
                            f_num[fi, 5] = _double(buf, p2)
                            f_num[fi, 6] = 1.0
                        sp = q2
                    fi += 1
                elif f == 9:  # Image
                    i_owner[ii] = c
                    sp = vs
                    while sp < q:
                        f2, w2, v, p2, q2 = _next_field(buf, sp, q)
                        if q2 < 0:
                            return ERR_TRUNCATED, c
                        if w2 == WT_LEN and (1 <= f2 <= 6 or f2 == 8):
                            ss, sn = p2, np.int64(v)
                            k = (f2 - 1) if f2 <= 6 else 6
                            i_strs[ii, 2 * k] = ss
                            i_strs[ii, 2 * k + 1] = sn
                        elif w2 == WT_VARINT and f2 == 7:
                            i_cuda[ii] = v != 0
                        sp = q2
                    ii += 1
                elif f == 10:  # Quota
                    tenant_ok = tenant.size == 0
                    lim[:] = 0
                    use[:] = 0
                    lim_set[:] = False
                    use_set[:] = False
                    sp = vs
                    while sp < q:
                        f2, w2, v, p2, q2 = _next_field(buf, sp, q)
                        if q2 < 0:
                            return ERR_TRUNCATED, c
                        if w2 == WT_LEN:
                            ss, sn = p2, np.int64(v)
                            if f2 == 1 and tenant.size > 0:
                                tenant_ok = _bytes_equal(buf, ss, sn, tenant)
                            elif f2 == 3:
                                if not _quota_values(buf, ss, ss + sn, lim, lim_set):
                                    return ERR_TRUNCATED, c
                            elif f2 == 4 and not _quota_values(buf, ss, ss + sn, use, use_set):
                                return ERR_TRUNCATED, c
                        sp = q2
                    # The tenant's quota wins; else the first one published.
                    if (tenant_ok and not quota_matched) or not quota_seen:
                        for k in range(5):
                            q_limits[c, k] = lim[k] if lim_set[k] else np.nan
                            q_usage[c, k] = use[k]
                        quota_matched = quota_matched or tenant_ok
                    quota_seen = True
                elif f == 13:  # Freshness
                    sp = vs
                    while sp < q:
                        f2, w2, v, p2, q2 = _next_field(buf, sp, q)
                        if q2 < 0:
                            return ERR_TRUNCATED, c
                        if w2 == WT_LEN and (f2 == 1 or f2 == 2):
                            ss, sn = p2, np.int64(v)
                            t, ok = _timestamp(buf, ss, ss + sn)
                            if not ok:
                                return ERR_TRUNCATED, c
                            fresh[c, f2 - 1] = t
                        elif w2 == WT_VARINT and f2 == 3:
                            fresh[c, 2] = v if v != 0 else np.nan
                        elif w2 == WT_VARINT and f2 == 4:
                            stale[c] = v != 0
                        sp = q2
                elif f == 14:  # Cost
                    cost[c, 0] = 0.0
                    cost[c, 1] = 0.0
                    cost[c, 2] = 0.0
                    sp = vs
                    while sp < q:
                        f2, w2, v, p2, q2 = _next_field(buf, sp, q)
                        if q2 < 0:
                            return ERR_TRUNCATED, c
                        if w2 == WT_I64 and 1 <= f2 <= 3:
                            cost[c, f2 - 1] = _double(buf, p2)
                        sp = q2
            elif wt == WT_VARINT:
                v = v0
                if f == 11:
                    status[c] = _signed(v)
                elif f == 101:
                    public_cloud[c] = v != 0
            elif wt == WT_I64 and f == 100:
                cost[c, 3] = _double(buf, p)
                cost[c, 4] = 1.0
            pos = q
        hashes[c, 0] = fnv1a(buf, strs[c, 0], strs[c, 1], False, False)
        hashes[c, 1] = fnv1a(buf, strs[c, 2], strs[c, 3], False, False)
        hashes[c, 2] = fnv1a(buf, strs[c, 4], strs[c, 5], False, False)
    return OK, -1


@njit(cache=True)
def decode_candidates(buf, cand_start, cand_end, counts, tenant):
    """Every column the built-in filters and scorers use. Returns (status, columns...)."""
    n = cand_start.size
    # per candidate
    strs = np.zeros((n, 6), np.int64)  # site off/len, service off/len, type off/len
    hashes = np.empty((n, 3), np.uint64)  # site, service, service type
    status = np.zeros(n, np.int64)
    fresh = np.full((n, 3), np.nan)  # created, valid_until, validity_s
    stale = np.zeros(n, np.bool_)
    cost = np.full((n, 5), np.nan)  # per cpu, per gpu, per gb ram, flat, flat set
    public_cloud = np.zeros(n, np.bool_)
    q_limits = np.full((n, 5), np.nan)
    q_usage = np.zeros((n, 5))
    # flattened children
    m_f = counts[:, 1].sum()
    m_i = counts[:, 2].sum()
    m_p = counts[:, 0].sum()
    f_owner = np.empty(m_f, np.int64)
    f_span = np.empty((m_f, 2), np.int64)  # whole message
    f_num = np.zeros((m_f, 7))  # cpus, ram, disk, gpus, infiniband, cost, cost set
    f_strs = np.zeros((m_f, 6), np.int64)  # id off/len, name off/len, model off/len
    f_vendor = np.empty(m_f, np.uint64)  # lower-cased hash
    i_owner = np.empty(m_i, np.int64)
    i_strs = np.zeros((m_i, 14), np.int64)  # id, name, os_type, distro, version, arch, cuda_v
    i_cuda = np.zeros(m_i, np.bool_)
    p_owner = np.empty(m_p, np.int64)
    p_hash = np.empty((m_p, 2), np.uint64)  # issuer (no trailing '/'), name
    empty_hash = fnv1a(buf, 0, 0, False, False)
    err, err_at = _decode_all(
        buf,
        cand_start,
        cand_end,
        tenant,
        strs,
        hashes,
        status,
        fresh,
        stale,
        cost,
        public_cloud,
        q_limits,
        q_usage,
        f_owner,
        f_span,
        f_num,
        f_strs,
        f_vendor,
        i_owner,
        i_strs,
        i_cuda,
        p_owner,
        p_hash,
        empty_hash,
    )
    return (
        err,
        err_at,
        strs,
        hashes,
        status,
        fresh,
        stale,
        cost,
        public_cloud,
        q_limits,
        q_usage,
        f_owner,
        f_span,
        f_num,
        f_strs,
        f_vendor,
        i_owner,
        i_strs,
        i_cuda,
        p_owner,
        p_hash,
    )


@njit(cache=True)
def contains_lower(buf, offs, lens, needle):
    """Per span: does it contain `needle` (already lower-case), ASCII case-insensitively?"""
    out = np.zeros(offs.size, np.bool_)
    m = needle.size
    for r in range(offs.size):
        off = offs[r]
        n = lens[r]
        for start in range(0, n - m + 1):
            hit = True
            for k in range(m):
                b = buf[off + start + k]
                if 65 <= b <= 90:
                    b += 32
                if b != needle[k]:
                    hit = False
                    break
            if hit:
                out[r] = True
                break
    return out


@njit(cache=True)
def _eq(buf, off, n, needle, ci):
    if n != needle.size:
        return False
    for k in range(n):
        b = buf[off + k]
        w = needle[k]
        if ci:
            if 65 <= b <= 90:
                b += 32
            if 65 <= w <= 90:
                w += 32
        if b != w:
            return False
    return True


@njit(cache=True)
def _version(buf, off, n, out):
    """Dotted version into out[0:4] (digits of each part; missing parts 0)."""
    out[:] = 0
    part = 0
    for k in range(off, off + n):
        b = buf[k]
        if b == 46:
            part += 1
            if part >= 4:
                return
        elif 48 <= b <= 57:
            out[part] = out[part] * 10 + (b - 48)


@njit(cache=True)
def match_images(buf, i_strs, i_cuda, name, os_type, distro, version, arch, cuda, min_cuda):
    """Per image: does it meet the ImageRequirement (empty needles = any)?"""
    out = np.zeros(i_cuda.size, np.bool_)
    want_v = np.zeros(4, np.int64)
    have_v = np.zeros(4, np.int64)
    if min_cuda.size:
        _version(min_cuda, 0, min_cuda.size, want_v)
    for r in range(i_cuda.size):
        s = i_strs[r]
        if name.size and not (
            _eq(buf, s[0], s[1], name, False) or _eq(buf, s[2], s[3], name, False)
        ):
            continue
        if os_type.size and not _eq(buf, s[4], s[5], os_type, True):
            continue
        if distro.size and not _eq(buf, s[6], s[7], distro, True):
            continue
        if version.size and not _eq(buf, s[8], s[9], version, False):
            continue
        if arch.size and not _eq(buf, s[10], s[11], arch, False):
            continue
        has_cuda = i_cuda[r] or s[13] > 0
        if (cuda or min_cuda.size) and not has_cuda:
            continue
        if min_cuda.size:
            _version(buf, s[12], s[13], have_v)
            older = False
            for k in range(4):
                if have_v[k] != want_v[k]:
                    older = have_v[k] < want_v[k]
                    break
            if older:
                continue
        out[r] = True
    return out


# ---------------------------------------------------------------- response


@njit(cache=True)
def _varint_size(v):
    n = 1
    while v >= np.uint64(0x80):
        v >>= np.uint64(7)
        n += 1
    return n


@njit(cache=True)
def _put_varint(out, pos, v):
    while v >= np.uint64(0x80):
        out[pos] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        pos += 1
    out[pos] = np.uint8(v)
    return pos + 1


@njit(cache=True)
def _put_bytes(out, pos, tag, src, off, n):
    if n == 0:
        return pos
    out[pos] = tag
    pos = _put_varint(out, pos + 1, np.uint64(n))
    out[pos : pos + n] = src[off : off + n]
    return pos + n


@njit(cache=True)
def _str_size(n):
    return 0 if n == 0 else 1 + _varint_size(np.uint64(n)) + n


@njit(cache=True)
def _as_u64(x):
    return np.uint64(x) if x >= 0 else ~np.uint64(-x - 1)


@njit(cache=True)
def encode_results(
    buf,
    order,
    rank,
    total_bytes,
    score_bytes,
    k,
    strs,
    flavor_strs,
    chosen,
    image_spans,
    rej_blob,
    rej_off,
):
    """RankResponse field 1 records (RankedCandidate) for `order`, as protobuf bytes.

    `flavor_strs[f]` are the request spans of flavor f's id and name; `image_spans[c]` the
    span of candidate c's chosen image id; `rej_blob[rej_off[c]:rej_off[c+1]]` candidate
    c's serialized Rejection messages (field 7 records, tags included).
    """
    sizes = np.zeros(order.size, np.int64)
    total = 0
    for r in range(order.size):
        c = order[r]
        sz = 1 + _varint_size(np.uint64(c))  # index
        sz += _str_size(strs[c, 1]) + _str_size(strs[c, 3])
        sz += 1 + _varint_size(_as_u64(rank[c]))
        if rank[c] > 0:
            sz += 9  # total_score
            if k:
                sz += 1 + _varint_size(np.uint64(8 * k)) + 8 * k
            f = chosen[c]
            if f >= 0:
                sz += _str_size(flavor_strs[f, 1]) + _str_size(flavor_strs[f, 3])
            sz += _str_size(image_spans[c, 1])
        sz += rej_off[c + 1] - rej_off[c]
        sizes[r] = sz
        total += 1 + _varint_size(np.uint64(sz)) + sz
    out = np.empty(total, np.uint8)
    pos = 0
    for r in range(order.size):
        c = order[r]
        out[pos] = 0x0A
        pos = _put_varint(out, pos + 1, np.uint64(sizes[r]))
        out[pos] = 0x08
        pos = _put_varint(out, pos + 1, np.uint64(c))
        pos = _put_bytes(out, pos, 0x12, buf, strs[c, 0], strs[c, 1])
        pos = _put_bytes(out, pos, 0x1A, buf, strs[c, 2], strs[c, 3])
        out[pos] = 0x20
        pos = _put_varint(out, pos + 1, _as_u64(rank[c]))
        if rank[c] > 0:
            out[pos] = 0x29
            out[pos + 1 : pos + 9] = total_bytes[8 * c : 8 * c + 8]
            pos += 9
            if k:
                out[pos] = 0x32
                pos = _put_varint(out, pos + 1, np.uint64(8 * k))
                out[pos : pos + 8 * k] = score_bytes[8 * k * c : 8 * k * (c + 1)]
                pos += 8 * k
            f = chosen[c]
            if f >= 0:
                pos = _put_bytes(out, pos, 0x42, buf, flavor_strs[f, 0], flavor_strs[f, 1])
                pos = _put_bytes(out, pos, 0x4A, buf, flavor_strs[f, 2], flavor_strs[f, 3])
            pos = _put_bytes(out, pos, 0x52, buf, image_spans[c, 0], image_spans[c, 1])
        a = rej_off[c]
        b = rej_off[c + 1]
        out[pos : pos + (b - a)] = rej_blob[a:b]
        pos += b - a
    return out


@njit(cache=True)
def _utf8_ok(buf, off, n):
    """Is buf[off:off+n] well-formed UTF-8 (RFC 3629: no overlongs, surrogates, > U+10FFFF)?"""
    i = off
    end = off + n
    while i < end:
        b = buf[i]
        if b < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= b <= 0xDF:
            need = 1
        elif b == 0xE0:
            need, lo = 2, 0xA0
        elif 0xE1 <= b <= 0xEC or 0xEE <= b <= 0xEF:
            need = 2
        elif b == 0xED:
            need, hi = 2, 0x9F
        elif b == 0xF0:
            need, lo = 3, 0x90
        elif 0xF1 <= b <= 0xF3:
            need = 3
        elif b == 0xF4:
            need, hi = 3, 0x8F
        else:
            return False
        if i + need > end - 1:
            return False
        c = buf[i + 1]
        if c < lo or c > hi:
            return False
        for k in range(2, need + 1):
            c = buf[i + k]
            if c < 0x80 or c > 0xBF:
                return False
        i += need + 1
    return True


@njit(cache=True)
def first_bad_utf8(buf, spans, columns):
    """First row of `spans` whose (offset, length) pairs at `columns` are not UTF-8; -1."""
    for r in range(spans.shape[0]):
        for k in range(columns.size):
            col = columns[k]
            if not _utf8_ok(buf, spans[r, col], spans[r, col + 1]):
                return r
    return -1
