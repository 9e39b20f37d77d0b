"""Compiled decoding of a serialized RankRequest: its candidates straight into numpy columns.

Reading 10,000 candidates field by field through the Python protobuf API costs about a
quarter of a second (every attribute read makes a Python object). `scan_request` finds the
candidates and the other top-level fields; the protobuf library parses the latter (the
`head`: requirements, SLAs, preferences, monitoring, options; small); `decode_candidates`
then walks the candidates' bytes once, in numba, and fills a few 2-D arrays (a row per
candidate, flavor, image; columns named by the constants below). Strings stay byte spans
into the request; those that are looked up are hashed (wire.hash_span). Which flavor and
which image of each candidate meet the requirements is decided as they are read
(match.py): a second pass over 40,000 flavors would cost more than the matching.

The sub-message readers return scalars and only `decode_candidates` writes arrays: a
function that takes an array pays two atomic reference counts per call (see wire.py).
Every read is bounded by the end of the enclosing message; a malformed one is an error
code, never a read past the buffer.

Field numbers are those of proto/hdc/ranker/v1/ranker.proto; the test suite checks these
columns against the Python protobuf API, so a change of the .proto they miss fails loudly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hdc_ranker.match import flavor_fits, flavor_scalars, image_fits, image_scalars
from hdc_ranker.wire import (
    EMPTY_HASH,
    ERR_MALFORMED,
    OK,
    WT_LEN,
    WT_VARINT,
    as_int32,
    as_uint32,
    as_unsigned,
    byte_at,
    double_at,
    hash_span,
    hash_span_lower,
    hash_span_stripped,
    length_delimited,
    skip,
    utf8_ok,
    varint,
)

# Errors besides wire.ERR_MALFORMED: a string the answer copies is not UTF-8.
ERR_UTF8_CANDIDATE = 2  # site_id, service_id or service_type
ERR_UTF8_FLAVOR = 3  # a flavor's id or name
ERR_UTF8_IMAGE = 4  # an image's id or name
ERR_ROOM = 5  # not an error of the request: scan and decode again, counting

SAMPLE = 64  # candidates whose sub-messages are counted to estimate the room for all

# Per candidate, int64 ("ci"). *_OFF / *_LEN: byte span in the request.
(
    C_START,
    C_END,
    C_SITE_OFF,
    C_SITE_LEN,
    C_SERVICE_OFF,
    C_SERVICE_LEN,
    C_TYPE_OFF,
    C_TYPE_LEN,
    C_STATUS,
    C_STALE,
    C_PUBLIC_CLOUD,
    C_FLAVOR_FIRST,
    C_FLAVOR_COUNT,
    C_IMAGE_FIRST,
    C_IMAGE_COUNT,
    C_IDP_FIRST,
    C_IDP_COUNT,
    C_FLAVOR_CHOSEN,  # the smallest flavor that fits (index into the flavors), -1
    C_FITS,  # bits: FITS_SIZE, FITS_GPU, FITS_INFINIBAND: some flavor has it
    C_IMAGE_CHOSEN,  # the first image that meets the requirement (index), -1
) = range(20)
N_CI = 20
FITS_SIZE, FITS_GPU, FITS_INFINIBAND = 1, 2, 4
# Per candidate, float64 ("cf"); NaN = not published.
(
    C_CREATED,
    C_VALID_UNTIL,
    C_VALIDITY_S,
    C_COST_CPU,
    C_COST_GPU,
    C_COST_GB_RAM,
    C_COST_FLAT,
    C_COST_FLAT_SET,
) = range(8)
C_LIMITS = 8  # 5 columns: instances, cores, ram_mb, gpus, floating_ips (the tenant's quota)
C_USAGE = 13  # the same 5 for usage
C_MOST = 18  # 4 columns: the most GPUs, CPUs, RAM (MB), disk (GB) of a flavor
N_CF = 22
# Per candidate, uint64 hashes ("ch"): site id, service type.
H_SITE, H_TYPE = range(2)
N_CH = 2
# Candidate fields whose records `hash_records` hashes (for explanations).
T_IDENTITY_PROVIDERS, T_HEALTH = 0x3A, 0x62

# Per flavor, int64 ("fi"): owning candidate, message span, string spans.
(
    F_OWNER,
    F_START,
    F_END,
    F_ID_OFF,
    F_ID_LEN,
    F_NAME_OFF,
    F_NAME_LEN,
    F_MODEL_OFF,
    F_MODEL_LEN,
) = range(9)
N_FI = 9
# Per flavor, float64 ("ff").
F_CPUS, F_RAM_MB, F_DISK_GB, F_GPUS, F_INFINIBAND, F_COST, F_COST_SET = range(7)
N_FF = 7
# Per image, int64 ("ii"): owner, then (offset, length) of id, name, os_type,
# os_distribution, os_version, architecture, cuda_version; then the cuda flag.
I_OWNER = 0
I_ID, I_NAME, I_OS_TYPE, I_DISTRO, I_VERSION, I_ARCH, I_CUDA_VERSION = 1, 3, 5, 7, 9, 11, 13
I_CUDA = 15
N_II = 16
# Per identity provider: owner ("po") and hashes ("ph"): issuer without trailing '/', name.
P_ISSUER, P_NAME = 0, 1

_EMPTY_SPANS = np.zeros((0, 2), np.int64)
# (Message fields repeated on the wire are merged, as protobuf parsers do: scalars, last
# one wins; sub-messages, field by field.)


@njit(cache=True, inline="always")
def _next(at, pos, end):
    """Header and value of the field at `pos`: (tag, varint value or payload length,
    value start, next position); next position -1 if malformed."""
    tag, p = varint(at, pos, end)
    if p < 0:
        return tag, 0, 0, -1
    wt = tag & 7
    if wt == WT_LEN:
        s, q = length_delimited(at, p, end)
        return tag, q - s, s, q
    if wt == WT_VARINT:
        v, q = varint(at, p, end)
        return tag, v, p, q
    return tag, 0, p, skip(at, p, end, wt)


# The same reader as a call, for the code that is not hot (inlining takes compile time).
next_field = njit(cache=True)(_next.py_func)


@njit(cache=True, inline="always")
def _same_bytes(at, a, b, n):
    for k in range(n):  # noqa: SIM110 - compiled by numba: a plain loop
        if byte_at(at, a + k) != byte_at(at, b + k):
            return False
    return True


@njit(cache=True, inline="always")
def _timestamp(at, s, e):
    """(ok, seconds of a google.protobuf.Timestamp; NaN when unset or zero)."""
    secs = 0
    nanos = 0
    pos = s
    while pos < e:
        tag, v, _, q = _next(at, pos, e)
        if q < 0:
            return False, np.nan
        if tag == 0x08:
            secs = v
        elif tag == 0x10:
            nanos = as_int32(v)
        pos = q
    if secs == 0 and nanos == 0:
        return True, np.nan
    return True, secs + nanos * 1e-9


read_timestamp = njit(cache=True)(_timestamp.py_func)


@njit(cache=True, inline="always")
def _quota_values(at, s, e, old, old_set):
    """(ok, QuotaValues fields 1..5 (instances, cores, ram_mb, gpus, floating_ips) merged
    over `old`, bit k set = field k+1 present)."""
    v1, v2, v3, v4, v5 = old
    present = old_set
    pos = s
    while pos < e:
        tag, v, _, q = _next(at, pos, e)
        if q < 0:
            return False, old, old_set
        if tag == 0x08:
            v1 = v
        elif tag == 0x10:
            v2 = v
        elif tag == 0x18:
            v3 = v
        elif tag == 0x20:
            v4 = v
        elif tag == 0x28:
            v5 = v
        if (tag & 7) == WT_VARINT and 1 <= (tag >> 3) <= 5:
            present |= 1 << ((tag >> 3) - 1)
        pos = q
    return True, (v1, v2, v3, v4, v5), present


@njit(cache=True, inline="always")
def _quota(at, s, e, tenant_off, tenant_len):
    """(ok, is it the request's tenant's, limits, limits present bits, usage)."""
    lim = use = (0, 0, 0, 0, 0)
    lim_set = use_set = 0
    mine = tenant_len == 0
    pos = s
    while pos < e:
        tag, n, vs, q = _next(at, pos, e)
        if q < 0:
            return False, False, lim, 0, use
        good = True
        if tag == 0x0A and tenant_len > 0:
            mine = n == tenant_len and _same_bytes(at, vs, tenant_off, n)
        elif tag == 0x1A:
            good, lim, lim_set = _quota_values(at, vs, q, lim, lim_set)
        elif tag == 0x22:
            good, use, use_set = _quota_values(at, vs, q, use, use_set)
        if not good:
            return False, False, lim, 0, use
        pos = q
    return True, mine, lim, lim_set, use


@njit(cache=True, inline="always")
def _flavor(at, s, e):
    """(ok, id, name, GPU model spans, (cpus, ram_mb, disk_gb, gpus, infiniband, cost,
    cost set), lower-cased GPU vendor hash)."""
    id_off = id_len = name_off = name_len = model_off = model_len = 0
    cpus = ram = disk = gpus = ib = cost_set = 0.0
    cost = np.nan
    vendor = EMPTY_HASH
    pos = s
    while pos < e:
        tag, v, vs, q = _next(at, pos, e)
        if q < 0:
            return False, (0, 0, 0, 0, 0, 0), (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), vendor
        if tag == 0x0A:
            id_off, id_len = vs, v
        elif tag == 0x12:
            name_off, name_len = vs, v
        elif tag == 0x18:
            cpus = float(as_uint32(v))
        elif tag == 0x20:
            ram = as_unsigned(v)
        elif tag == 0x28:
            disk = as_unsigned(v)
        elif tag == 0x30:
            gpus = float(as_uint32(v))
        elif tag == 0x3A:
            vendor = hash_span_lower(at, vs, v)
        elif tag == 0x42:
            model_off, model_len = vs, v
        elif tag == 0x48:
            ib = 1.0 if v != 0 else 0.0
        elif tag == 801:  # cost_per_hour, field 100, double
            cost = double_at(at, vs)
            cost_set = 1.0
        pos = q
    return (
        True,
        (id_off, id_len, name_off, name_len, model_off, model_len),
        (cpus, ram, disk, gpus, ib, cost, cost_set),
        vendor,
    )


@njit(cache=True, inline="always")
def _image(at, s, e):
    """(ok, (offset, length) of id, name, os_type, os_distribution, os_version,
    architecture, cuda_version; cuda flag)."""
    a0 = a1 = b0 = b1 = c0 = c1 = d0 = d1 = e0 = e1 = f0 = f1 = g0 = g1 = 0
    cuda = 0
    pos = s
    while pos < e:
        tag, v, vs, q = _next(at, pos, e)
        if q < 0:
            return False, (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0
        if tag == 0x0A:
            a0, a1 = vs, v
        elif tag == 0x12:
            b0, b1 = vs, v
        elif tag == 0x1A:
            c0, c1 = vs, v
        elif tag == 0x22:
            d0, d1 = vs, v
        elif tag == 0x2A:
            e0, e1 = vs, v
        elif tag == 0x32:
            f0, f1 = vs, v
        elif tag == 0x42:
            g0, g1 = vs, v
        elif tag == 0x38:
            cuda = 1 if v != 0 else 0
        pos = q
    return True, (a0, a1, b0, b1, c0, c1, d0, d1, e0, e1, f0, f1, g0, g1), cuda


@njit(cache=True, inline="always")
def _identity_provider(at, s, e):
    """(ok, hash of the issuer without trailing '/', hash of the name)."""
    issuer = name = EMPTY_HASH
    pos = s
    while pos < e:
        tag, v, vs, q = _next(at, pos, e)
        if q < 0:
            return False, issuer, name
        if tag == 0x0A:
            issuer = hash_span_stripped(at, vs, v)
        elif tag == 0x1A:
            name = hash_span(at, vs, v)
        pos = q
    return True, issuer, name


@njit(cache=True, inline="always")
def _freshness(at, s, e, old):
    """(ok, (creation time, valid until, validity s, stale flag)) merged over `old`
    (NaN / -1 = not given)."""
    created, valid, validity, stale = old
    pos = s
    while pos < e:
        tag, v, vs, q = _next(at, pos, e)
        if q < 0:
            return False, old
        if tag == 0x0A or tag == 0x12:
            good, t = _timestamp(at, vs, q)
            if not good:
                return False, old
            if tag == 0x0A:
                created = t
            else:
                valid = t
        elif tag == 0x18:
            validity = float(as_uint32(v)) if as_uint32(v) != 0 else np.nan
        elif tag == 0x20:
            stale = 1 if v != 0 else 0
        pos = q
    return True, (created, valid, validity, stale)


@njit(cache=True, inline="always")
def _cost(at, s, e, old):
    """(ok, (per CPU-hour, per GPU-hour, per GB-RAM-hour)) merged over `old` (NaN = no
    Cost seen yet: a Cost message means a breakdown, missing prices are 0)."""
    cpu, gpu, ram = (0.0, 0.0, 0.0) if np.isnan(old[0]) else old
    pos = s
    while pos < e:
        tag, _, vs, q = _next(at, pos, e)
        if q < 0:
            return False, old
        if tag == 0x09:
            cpu = double_at(at, vs)
        elif tag == 0x11:
            gpu = double_at(at, vs)
        elif tag == 0x19:
            ram = double_at(at, vs)
        pos = q
    return True, (cpu, gpu, ram)


@njit(cache=True)
def _count_children(at, s, e):
    """(identity providers, flavors, images) of the candidate at [s, e); stops at the
    first malformed field (the decoder reports it)."""
    n_p = n_f = n_i = 0
    pos = s
    while pos < e:
        tag, _, _, q = next_field(at, pos, e)
        if q < 0:
            break
        if tag == 0x3A:
            n_p += 1
        elif tag == 0x42:
            n_f += 1
        elif tag == 0x4A:
            n_i += 1
        pos = q
    return n_p, n_f, n_i


@njit(cache=True)
def scan_request(buf, exact):
    """Top level: (ok, candidate spans (n, 2), other fields' spans (k, 2), tenant span,
    room for the identity providers, flavors, images of all candidates).

    The room is counted (`exact`), or estimated from the first SAMPLE candidates: counting
    means one more pass over every candidate, and candidates of one request are alike.
    """
    at = buf.ctypes.data
    end = buf.size
    n_c = 0
    n_h = 0
    pos = 0
    while pos < end:
        tag, _, _, q = next_field(at, pos, end)
        if q < 0:
            return False, _EMPTY_SPANS, _EMPTY_SPANS, 0, 0, (0, 0, 0)
        if tag == 0x2A:
            n_c += 1
        else:
            n_h += 1
        pos = q
    cands = np.empty((n_c, 2), np.int64)
    head = np.empty((n_h, 2), np.int64)
    tenant_off = tenant_len = 0
    n_p = n_f = n_i = 0
    i = j = 0
    pos = 0
    while pos < end:
        tag, _, vs, q = next_field(at, pos, end)
        if tag == 0x2A:
            cands[i, 0] = vs
            cands[i, 1] = q
            if exact or i < SAMPLE:
                a, b, c = _count_children(at, vs, q)
                n_p += a
                n_f += b
                n_i += c
            i += 1
        else:
            head[j, 0] = pos
            head[j, 1] = q
            j += 1
            if tag == 0x0A:  # requirements: their tenant (field 8) picks the quota
                rp = vs
                while rp < q:
                    rtag, rv, rvs, rq = next_field(at, rp, q)
                    if rq < 0:
                        break  # the protobuf library reports it when it parses the head
                    if rtag == 0x42:
                        tenant_off, tenant_len = rvs, rv
                    rp = rq
        pos = q
    if not exact and n_c > SAMPLE:
        # A quarter more than the sample suggests; decode_request says when it was short.
        n_p = (n_p * n_c * 5) // (SAMPLE * 4) + 16
        n_f = (n_f * n_c * 5) // (SAMPLE * 4) + 16
        n_i = (n_i * n_c * 5) // (SAMPLE * 4) + 16
    return True, cands, head, tenant_off, tenant_len, (n_p, n_f, n_i)


@njit(cache=True)
def decode_candidates(buf, cands, tenant, room, exact, flavor_need, image_need):
    """Every column the built-in filters and scorers use, and which flavor and image of
    each candidate meet the requirements (match.FlavorNeed, match.ImageNeed).

    `cands`, `room`: from scan_request; `tenant`: span of Requirements.tenant.
    Returns (status, candidate of the error, flavor/image of the error within it, ci, cf,
    ch, fi, ff, fh, ii, po, ph); status is wire.OK or an ERR_* code; ERR_ROOM when the
    estimated room was short: scan and decode again, `exact`.
    """
    at = buf.ctypes.data
    tenant_off, tenant_len = tenant
    n = cands.shape[0]
    m_p, m_f, m_i = room
    f_need = flavor_scalars(flavor_need)
    i_need = image_scalars(image_need)
    image_required = image_need[0]
    # Every column of a decoded candidate is written below: no need to clear them first.
    ci = np.empty((n, N_CI), np.int64)
    cf = np.empty((n, N_CF))
    ch = np.empty((n, N_CH), np.uint64)
    po = np.empty(m_p, np.int64)
    ph = np.empty((m_p, 2), np.uint64)
    fi = np.empty((m_f, N_FI), np.int64)
    ff = np.empty((m_f, N_FF))
    fh = np.empty(m_f, np.uint64)
    ii = np.empty((m_i, N_II), np.int64)
    status = OK
    err_at = err_sub = -1
    n_p = n_f = n_i = 0
    for c in range(n):
        s = cands[c, 0]
        e = cands[c, 1]
        ci[c, C_START] = s
        ci[c, C_END] = e
        ci[c, C_FLAVOR_FIRST] = n_f
        ci[c, C_IMAGE_FIRST] = n_i
        ci[c, C_IDP_FIRST] = n_p
        fresh = (np.nan, np.nan, np.nan, -1)
        cost = (np.nan, np.nan, np.nan)
        flat = np.nan
        flat_set = 0.0
        status_value = public = 0
        site_off = site_len = service_off = service_len = type_off = type_len = 0
        quota_seen = quota_mine = False
        lim = use = (0, 0, 0, 0, 0)
        lim_set = 0
        # flavor choice: the smallest that fits, by (GPUs, CPUs, RAM, disk); the first of
        # equals. And what the candidate offers at most (for explanations).
        best = -1
        best_key = (0.0, 0.0, 0.0, 0.0)
        fits = 0
        most_gpus = most_cpus = most_ram = most_disk = 0.0
        image = -1
        pos = s
        while pos < e:
            tag, v, vs, q = _next(at, pos, e)
            if q < 0:
                status = ERR_MALFORMED
                break
            good = True
            if tag == 0x0A:
                site_off, site_len = vs, v
            elif tag == 0x1A:
                service_off, service_len = vs, v
            elif tag == 0x22:
                type_off, type_len = vs, v
            elif tag == 0x3A:
                if n_p == m_p:  # more than there is room for (see scan_request)
                    status = ERR_MALFORMED if exact else ERR_ROOM
                    break
                good, issuer, name = _identity_provider(at, vs, q)
                po[n_p] = c
                ph[n_p, P_ISSUER] = issuer
                ph[n_p, P_NAME] = name
                n_p += 1
            elif tag == 0x42:
                if n_f == m_f:
                    status = ERR_MALFORMED if exact else ERR_ROOM
                    break
                good, spans, nums, vendor = _flavor(at, vs, q)
                fi[n_f, F_OWNER] = c
                fi[n_f, F_START] = vs
                fi[n_f, F_END] = q
                for k in range(6):
                    fi[n_f, F_ID_OFF + k] = spans[k]
                for k in range(N_FF):
                    ff[n_f, k] = nums[k]
                fh[n_f] = vendor
                if good and not (
                    utf8_ok(at, spans[0], spans[1]) and utf8_ok(at, spans[2], spans[3])
                ):
                    status = ERR_UTF8_FLAVOR
                    err_sub = n_f - ci[c, C_FLAVOR_FIRST]
                    break
                size, gpu, ib = flavor_fits(at, nums, spans[4], spans[5], vendor, f_need)
                fits |= (FITS_SIZE if size else 0) | (FITS_GPU if gpu else 0)
                fits |= FITS_INFINIBAND if ib else 0
                key = (nums[3], nums[0], nums[1], nums[2])
                if size and gpu and ib and (best < 0 or key < best_key):
                    best, best_key = n_f, key
                most_gpus = max(most_gpus, nums[3])
                most_cpus = max(most_cpus, nums[0])
                most_ram = max(most_ram, nums[1])
                most_disk = max(most_disk, nums[2])
                n_f += 1
            elif tag == 0x4A:
                if n_i == m_i:
                    status = ERR_MALFORMED if exact else ERR_ROOM
                    break
                good, spans14, cuda = _image(at, vs, q)
                ii[n_i, I_OWNER] = c
                for k in range(14):
                    ii[n_i, I_ID + k] = spans14[k]
                ii[n_i, I_CUDA] = cuda
                if good and not (
                    utf8_ok(at, spans14[0], spans14[1]) and utf8_ok(at, spans14[2], spans14[3])
                ):
                    status = ERR_UTF8_IMAGE
                    err_sub = n_i - ci[c, C_IMAGE_FIRST]
                    break
                if image_required and image < 0 and image_fits(at, spans14, cuda, i_need):
                    image = n_i
                n_i += 1
            elif tag == 0x52:
                good, mine, q_lim, q_set, q_use = _quota(at, vs, q, tenant_off, tenant_len)
                # The tenant's quota wins; else the first one published.
                if good and (not quota_seen or (mine and not quota_mine)):
                    lim, lim_set, use = q_lim, q_set, q_use
                    quota_mine = mine
                quota_seen = True
            elif tag == 0x58:
                status_value = as_int32(v)
            elif tag == 0x6A:
                good, fresh = _freshness(at, vs, q, fresh)
            elif tag == 0x72:
                good, cost = _cost(at, vs, q, cost)
            elif tag == 801:  # cost_per_hour, field 100, double
                flat = double_at(at, vs)
                flat_set = 1.0
            elif tag == 808:  # public_cloud, field 101
                public = 1 if v != 0 else 0
            if not good:
                status = ERR_MALFORMED
                break
            pos = q
        if status != OK:
            err_at = c
            break
        if not (
            utf8_ok(at, site_off, site_len)
            and utf8_ok(at, service_off, service_len)
            and utf8_ok(at, type_off, type_len)
        ):
            status = ERR_UTF8_CANDIDATE
            err_at = c
            break
        ci[c, C_SITE_OFF] = site_off
        ci[c, C_SITE_LEN] = site_len
        ci[c, C_SERVICE_OFF] = service_off
        ci[c, C_SERVICE_LEN] = service_len
        ci[c, C_TYPE_OFF] = type_off
        ci[c, C_TYPE_LEN] = type_len
        ci[c, C_STATUS] = status_value
        ci[c, C_STALE] = 1 if fresh[3] == 1 else 0
        ci[c, C_PUBLIC_CLOUD] = public
        ci[c, C_FLAVOR_COUNT] = n_f - ci[c, C_FLAVOR_FIRST]
        ci[c, C_IMAGE_COUNT] = n_i - ci[c, C_IMAGE_FIRST]
        ci[c, C_IDP_COUNT] = n_p - ci[c, C_IDP_FIRST]
        ci[c, C_FLAVOR_CHOSEN] = best
        ci[c, C_FITS] = fits
        ci[c, C_IMAGE_CHOSEN] = image
        cf[c, C_MOST] = most_gpus
        cf[c, C_MOST + 1] = most_cpus
        cf[c, C_MOST + 2] = most_ram
        cf[c, C_MOST + 3] = most_disk
        cf[c, C_CREATED] = fresh[0]
        cf[c, C_VALID_UNTIL] = fresh[1]
        cf[c, C_VALIDITY_S] = fresh[2]
        cf[c, C_COST_CPU] = cost[0]
        cf[c, C_COST_GPU] = cost[1]
        cf[c, C_COST_GB_RAM] = cost[2]
        cf[c, C_COST_FLAT] = flat
        cf[c, C_COST_FLAT_SET] = flat_set
        if quota_seen:
            for k in range(5):
                cf[c, C_LIMITS + k] = lim[k] if lim_set & (1 << k) else np.nan
                cf[c, C_USAGE + k] = use[k]
        else:
            for k in range(5):
                cf[c, C_LIMITS + k] = np.nan
                cf[c, C_USAGE + k] = 0.0
        ch[c, H_SITE] = hash_span(at, site_off, site_len)
        ch[c, H_TYPE] = hash_span(at, type_off, type_len)
    return (
        status,
        err_at,
        err_sub,
        ci,
        cf,
        ch,
        fi[:n_f],
        ff[:n_f],
        fh[:n_f],
        ii[:n_i],
        po[:n_p],
        ph[:n_p],
    )


@njit(cache=True)
def hash_records(buf, ci, idx, tag):
    """Per candidate of `idx`: a hash of all its fields with `tag` (e.g. its identity
    providers), bytes and order; equal hashes = equal lists. Computed on demand, for the
    few candidates whose explanation depends on such a list."""
    at = buf.ctypes.data
    out = np.empty(idx.size, np.uint64)
    for r in range(idx.size):
        c = idx[r]
        h = EMPTY_HASH
        pos = ci[c, C_START]
        e = ci[c, C_END]
        while pos < e:
            t, v, vs, q = next_field(at, pos, e)
            if q < 0:
                break
            if t == tag:
                h = (h ^ hash_span(at, vs, v)) * np.uint64(0x9E3779B97F4A7C15)
                h ^= h >> np.uint64(31)
            pos = q
        out[r] = h
    return out
