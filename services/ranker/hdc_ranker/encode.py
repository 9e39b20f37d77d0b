"""Compiled encoding of the RankResponse: the per-candidate records (RankedCandidate,
field 1) written as protobuf bytes straight from the ranking's columns.

Strings (site, service, flavor, image ids) are copied from the request's bytes; the
Rejection records are written once per distinct sentence (response.py) and copied for
every candidate that has it. Like the decoder, the loops read and write through addresses
(see wire.py), and the answer is sized exactly before it is written.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from hdc_ranker import decode as d

# RankedCandidate tags (field number << 3 | wire type).
T_INDEX, T_SITE, T_SERVICE, T_RANK, T_TOTAL, T_SCORES = 0x08, 0x12, 0x1A, 0x20, 0x29, 0x32
T_FLAVOR_ID, T_FLAVOR_NAME, T_IMAGE_ID = 0x42, 0x4A, 0x52
T_RESULT = 0x0A  # RankResponse.results


@intrinsic
def _store_byte(typingctx, address, index, value):
    sig = types.void(types.intp, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.gep(builder.inttoptr(args[0], ir.PointerType(ir.IntType(8))), [args[1]])
        builder.store(builder.trunc(args[2], ir.IntType(8)), ptr)

    return sig, codegen


@intrinsic
def _store_double(typingctx, address, index, value):
    """Write a double, little-endian, at address + index (unaligned)."""
    sig = types.void(types.intp, types.intp, types.float64)

    def codegen(context, builder, signature, args):
        ptr = builder.gep(builder.inttoptr(args[0], ir.PointerType(ir.IntType(8))), [args[1]])
        builder.store(args[2], builder.bitcast(ptr, ir.PointerType(ir.DoubleType())), align=1)

    return sig, codegen


@intrinsic
def _copy(typingctx, dst, dst_index, src, src_index, n):
    """memcpy(dst + dst_index, src + src_index, n)."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        byte_ptr = ir.PointerType(ir.IntType(8))
        to = builder.gep(builder.inttoptr(args[0], byte_ptr), [args[1]])
        frm = builder.gep(builder.inttoptr(args[2], byte_ptr), [args[3]])
        cgutils.raw_memcpy(builder, to, frm, args[4], 1)

    return sig, codegen


@njit(cache=True)
def _varint_size(v):
    """Bytes of the varint of v (as unsigned 64 bits: a negative int32 takes 10)."""
    if v < 0:
        return 10
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


@njit(cache=True)
def _put_varint(at, pos, v):
    u = np.uint64(v)
    while u >= np.uint64(0x80):
        _store_byte(at, pos, np.int64(u & np.uint64(0x7F)) | 0x80)
        u >>= np.uint64(7)
        pos += 1
    _store_byte(at, pos, np.int64(u))
    return pos + 1


@njit(cache=True)
def _str_size(n):
    return 0 if n == 0 else 1 + _varint_size(n) + n


@njit(cache=True)
def _put_str(out, pos, tag, src, off, n):
    """A length-delimited field (skipped when empty, as proto3 does)."""
    if n == 0:
        return pos
    _store_byte(out, pos, tag)
    pos = _put_varint(out, pos + 1, n)
    _copy(out, pos, src, off, n)
    return pos + n


@njit(cache=True)
def _image_span(ii, i):
    """The chosen image's id (its name when it has no id): (offset, length)."""
    if i < 0:
        return 0, 0
    if ii[i, d.I_ID + 1] == 0:
        return ii[i, d.I_NAME], ii[i, d.I_NAME + 1]
    return ii[i, d.I_ID], ii[i, d.I_ID + 1]


@njit(cache=True)
def encode_results(
    head,
    buf,
    ci,
    fi,
    ii,
    order,
    rank,
    total,
    scores,
    chosen_flavor,
    chosen_image,
    blob,
    blob_off,
    owners,
    rec_ids,
    tail,
):
    """`head` + one RankResponse.results record per candidate, in the order `order`, +
    `tail` free bytes (for the server time, written once known).

    The Rejection records (whole field-7 records, tag included) are
    blob[blob_off[r]:blob_off[r+1]]; candidate owners[j] has record rec_ids[j] (owners
    ascending, a candidate's records in filter order).

    Records are sized and written in request order (each at its place in the answer): the
    candidates' columns and strings are then read in the order they lie in memory, not in
    the random order of the ranking.
    """
    n = rank.size
    rec_off = np.zeros(n + 1, np.int64)  # candidate c's records: rec_ids[rec_off[c]:rec_off[c+1]]
    for j in range(owners.size):
        rec_off[owners[j] + 1] += 1
    for c in range(n):
        rec_off[c + 1] += rec_off[c]
    at = buf.ctypes.data
    blob_at = blob.ctypes.data
    k = scores.shape[1]
    sizes = np.empty(n, np.int64)
    for c in range(n):
        sz = 1 + _varint_size(c)
        sz += _str_size(ci[c, d.C_SITE_LEN]) + _str_size(ci[c, d.C_SERVICE_LEN])
        sz += 1 + _varint_size(rank[c])
        if rank[c] > 0:
            sz += 9  # total_score
            if k:
                sz += 1 + _varint_size(8 * k) + 8 * k
            f = chosen_flavor[c]
            if f >= 0:
                sz += _str_size(fi[f, d.F_ID_LEN]) + _str_size(fi[f, d.F_NAME_LEN])
            sz += _str_size(_image_span(ii, chosen_image[c])[1])
        for j in range(rec_off[c], rec_off[c + 1]):
            sz += blob_off[rec_ids[j] + 1] - blob_off[rec_ids[j]]
        sizes[c] = sz
    # where each candidate's record starts, in the answer's order
    start = np.empty(n, np.int64)
    pos = head.size
    for r in range(order.size):
        c = order[r]
        start[c] = pos
        pos += 1 + _varint_size(sizes[c]) + sizes[c]
    out = np.empty(pos + tail, np.uint8)
    oat = out.ctypes.data
    _copy(oat, 0, head.ctypes.data, 0, head.size)
    for c in range(n):
        pos = start[c]
        _store_byte(oat, pos, T_RESULT)
        pos = _put_varint(oat, pos + 1, sizes[c])
        _store_byte(oat, pos, T_INDEX)
        pos = _put_varint(oat, pos + 1, c)
        pos = _put_str(oat, pos, T_SITE, at, ci[c, d.C_SITE_OFF], ci[c, d.C_SITE_LEN])
        pos = _put_str(oat, pos, T_SERVICE, at, ci[c, d.C_SERVICE_OFF], ci[c, d.C_SERVICE_LEN])
        _store_byte(oat, pos, T_RANK)
        pos = _put_varint(oat, pos + 1, rank[c])
        if rank[c] > 0:
            _store_byte(oat, pos, T_TOTAL)
            _store_double(oat, pos + 1, total[c])
            pos += 9
            if k:
                _store_byte(oat, pos, T_SCORES)
                pos = _put_varint(oat, pos + 1, 8 * k)
                for j in range(k):
                    _store_double(oat, pos, scores[c, j])
                    pos += 8
            f = chosen_flavor[c]
            if f >= 0:
                pos = _put_str(oat, pos, T_FLAVOR_ID, at, fi[f, d.F_ID_OFF], fi[f, d.F_ID_LEN])
                pos = _put_str(
                    oat, pos, T_FLAVOR_NAME, at, fi[f, d.F_NAME_OFF], fi[f, d.F_NAME_LEN]
                )
            image_off, image_len = _image_span(ii, chosen_image[c])
            pos = _put_str(oat, pos, T_IMAGE_ID, at, image_off, image_len)
        for j in range(rec_off[c], rec_off[c + 1]):
            a = blob_off[rec_ids[j]]
            m = blob_off[rec_ids[j] + 1] - a
            _copy(oat, pos, blob_at, a, m)
            pos += m
    return out
