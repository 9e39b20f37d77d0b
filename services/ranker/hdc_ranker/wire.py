"""Compiled primitives of the protobuf wire format: varints, skipping, hashes, UTF-8.

The request decoder (decode.py) and the answer encoder (encode.py) are built from these.

They read the message through its address (`buf.ctypes.data`, an integer), not through the
numpy array: numba counts references (two atomic operations) every time a function that
takes an array is entered, which on 10,000 candidates with ~100 fields each costs more
than the decoding itself. The caller keeps the array alive for the duration of the call.

Every read is bounds-checked against an explicit end: a malformed message makes a function
return position -1, never read past it. Integers are int64: a varint is read as the two's
complement of its 64 bits (what int64 fields mean); unsigned fields are fixed up where they
are read.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

HASH_SEED = np.uint64(0x243F6A8885A308D3)
MIX_MUL = np.uint64(0x9E3779B97F4A7C15)
MIX_FINAL = np.uint64(0xFF51AFD7ED558CCD)

OK = 0
ERR_MALFORMED = 1

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5
TWO_64 = 18446744073709551616.0


@intrinsic
def byte_at(typingctx, address, index):
    """The byte at address + index (as int64)."""
    sig = types.int64(types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.PointerType(ir.IntType(8)))
        return builder.zext(builder.load(builder.gep(ptr, [args[1]])), ir.IntType(64))

    return sig, codegen


@intrinsic
def double_at(typingctx, address, index):
    """The little-endian double at address + index (unaligned)."""
    sig = types.float64(types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ptr = builder.gep(builder.inttoptr(args[0], ir.PointerType(ir.IntType(8))), [args[1]])
        value = builder.load(builder.bitcast(ptr, ir.PointerType(ir.DoubleType())), align=1)
        return value

    return sig, codegen


@njit(cache=True, inline="always")
def varint(at, pos, end):
    """(value, next position) of the varint at `pos`; position -1 if truncated or longer
    than 10 bytes."""
    if pos < end:
        b = byte_at(at, pos)
        if b < 0x80:  # most tags, lengths and small numbers: one byte
            return b, pos + 1
    result = 0
    shift = 0
    while pos < end:
        b = byte_at(at, pos)
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            return result, -1
    return result, -1


@njit(cache=True, inline="always")
def skip(at, pos, end, wt):
    """Position after a value of wire type `wt` starting at `pos`; -1 if malformed."""
    if wt == WT_I64:
        return pos + 8 if pos + 8 <= end else -1
    if wt == WT_I32:
        return pos + 4 if pos + 4 <= end else -1
    if wt != WT_VARINT and wt != WT_LEN:
        return -1
    n, pos = varint(at, pos, end)
    if pos < 0 or wt == WT_VARINT:
        return pos
    if n < 0 or n > end - pos:
        return -1
    return pos + n


@njit(cache=True, inline="always")
def length_delimited(at, pos, end):
    """(payload start, payload end) of a length-delimited value at `pos`; end -1 if
    malformed."""
    n, s = varint(at, pos, end)
    if s < 0 or n < 0 or n > end - s:
        return s, -1
    return s, s + n


@njit(cache=True)
def as_unsigned(v):
    """A uint64 field's value (read as int64) as a float."""
    return float(v) if v >= 0 else float(v) + TWO_64


@njit(cache=True)
def as_uint32(v):
    return v & 0xFFFFFFFF


@njit(cache=True)
def as_int32(v):
    return ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


@intrinsic
def word_at(typingctx, address, index):
    """The 8 bytes at address + index as a little-endian uint64 (unaligned)."""
    sig = types.uint64(types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ptr = builder.gep(builder.inttoptr(args[0], ir.PointerType(ir.IntType(8))), [args[1]])
        return builder.load(builder.bitcast(ptr, ir.PointerType(ir.IntType(64))), align=1)

    return sig, codegen


@njit(cache=True)
def _mix(h, w):
    h = (h ^ w) * MIX_MUL
    return h ^ (h >> np.uint64(32))


@njit(cache=True)
def _finish(h):
    h ^= h >> np.uint64(29)
    h *= MIX_FINAL
    return h ^ (h >> np.uint64(32))


@njit(cache=True)
def hash_span(at, off, n):
    """64-bit hash of the n bytes at `off`, eight bytes per step (ids are compared by
    these hashes; `hash_text` gives the same for a Python string). A multiply-xorshift
    mix, as in common non-cryptographic hashes: ids come from the platform's own
    infoprovider and orchestrator, not from anonymous callers."""
    h = HASH_SEED ^ np.uint64(n)
    k = 0
    while k + 8 <= n:
        h = _mix(h, word_at(at, off + k))
        k += 8
    if k < n:
        w = np.uint64(0)
        for j in range(n - k):
            w |= np.uint64(byte_at(at, off + k + j)) << np.uint64(8 * j)
        h = _mix(h, w)
    return _finish(h)


@njit(cache=True)
def hash_span_lower(at, off, n):
    """hash_span of the bytes ASCII-lowercased."""
    h = HASH_SEED ^ np.uint64(n)
    w = np.uint64(0)
    for k in range(n):
        b = byte_at(at, off + k)
        if 65 <= b <= 90:
            b += 32
        w |= np.uint64(b) << np.uint64(8 * (k & 7))
        if (k & 7) == 7:
            h = _mix(h, w)
            w = np.uint64(0)
    if n & 7:
        h = _mix(h, w)
    return _finish(h)


@njit(cache=True)
def hash_span_stripped(at, off, n):
    """hash_span without trailing '/' (issuer URLs)."""
    while n > 0 and byte_at(at, off + n - 1) == 47:
        n -= 1
    return hash_span(at, off, n)


@njit(cache=True)
def _hash_array(data, lower, strip_slash):
    at = data.ctypes.data
    if lower:
        return hash_span_lower(at, 0, data.size)
    if strip_slash:
        return hash_span_stripped(at, 0, data.size)
    return hash_span(at, 0, data.size)


def hash_text(text: str, lower: bool = False, strip_slash: bool = False) -> int:
    """The hash of a Python string, as the spans of the request are hashed."""
    data = text.encode()
    return int(
        _hash_array(np.frombuffer(data or b"\0", dtype=np.uint8)[: len(data)], lower, strip_slash)
    )


EMPTY_HASH = np.uint64(hash_text(""))


@njit(cache=True)
def hash_spans(buf, offs, lens):
    """hash_span of every span (offs[i], lens[i]) of `buf`."""
    at = buf.ctypes.data
    out = np.empty(offs.size, np.uint64)
    for i in range(offs.size):
        out[i] = hash_span(at, offs[i], lens[i])
    return out


@njit(cache=True)
def utf8_ok(at, off, n):
    """Are the n bytes at `off` well-formed UTF-8 (RFC 3629: no overlongs, surrogates,
    > U+10FFFF)?"""
    # Nearly every id is ASCII: an OR over the bytes settles it.
    acc = 0
    for k in range(off, off + n):
        acc |= byte_at(at, k)
    if acc < 0x80:
        return True
    i = off
    end = off + n
    while i < end:
        b = byte_at(at, i)
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
        c = byte_at(at, i + 1)
        if c < lo or c > hi:
            return False
        for k in range(2, need + 1):
            c = byte_at(at, i + k)
            if c < 0x80 or c > 0xBF:
                return False
        i += need + 1
    return True


@njit(cache=True)
def utf8_array_ok(data):
    """utf8_ok of a whole uint8 array (for tests and Python callers)."""
    return utf8_ok(data.ctypes.data, 0, data.size)


@njit(cache=True)
def intern(hashes):
    """Distinct values of `hashes`: (id of each row's value, first row of each id), ids
    in order of first appearance. An open-addressing table: O(n), no sort."""
    n = hashes.size
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slot_id = np.full(size, -1, np.int64)
    slot_hash = np.zeros(size, np.uint64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    count = 0
    for i in range(n):
        h = hashes[i]
        s = (h ^ (h >> np.uint64(29))) & mask
        while True:
            k = slot_id[s]
            if k < 0:
                slot_id[s] = count
                slot_hash[s] = h
                first[count] = i
                ids[i] = count
                count += 1
                break
            if slot_hash[s] == h:
                ids[i] = k
                break
            s = (s + np.uint64(1)) & mask
    return ids, first[:count]


@njit(cache=True)
def gather(buf, spans):
    """The bytes of every span (start, end) of `buf`, one after the other."""
    n = 0
    for j in range(spans.shape[0]):
        n += spans[j, 1] - spans[j, 0]
    out = np.empty(n, np.uint8)
    pos = 0
    for j in range(spans.shape[0]):
        for k in range(spans[j, 0], spans[j, 1]):
            out[pos] = buf[k]
            pos += 1
    return out
