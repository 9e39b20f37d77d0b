"""Does a flavor or an image meet the requirements? Compiled predicates, used by the decoder
(decode.py) while it reads each flavor and image: matching while the bytes are in the
cache costs a fraction of another pass over every flavor of every candidate.

The requirements travel as plain tuples (FlavorNeed / ImageNeed) built once per request;
strings as (address, length) of a bytes object kept alive by the caller, like the request
(see wire.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb
from numba import njit

from hdc_ranker.wire import byte_at, hash_text


class FlavorNeed(NamedTuple):
    cpus: float
    ram_mb: float
    disk_gb: float
    gpus: float  # per instance; 0 = none needed
    vendor: np.uint64  # hash of the lower-cased vendor; 0 = any
    model: np.ndarray  # lower-cased bytes to find in the GPU model; empty = any
    infiniband: bool


class ImageNeed(NamedTuple):
    required: bool  # any part of the ImageRequirement set
    name: np.ndarray  # bytes; empty = any
    os_type: np.ndarray
    distro: np.ndarray
    version: np.ndarray
    arch: np.ndarray
    cuda: bool
    min_cuda: np.ndarray  # dotted version bytes; empty = any


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def flavor_need(req: pb.Requirements) -> FlavorNeed:
    gpus = req.gpu.count
    return FlavorNeed(
        cpus=float(req.cpus),
        ram_mb=float(req.ram_mb),
        disk_gb=float(req.disk_gb),
        gpus=float(gpus),
        vendor=np.uint64(hash_text(req.gpu.vendor, lower=True) if gpus and req.gpu.vendor else 0),
        model=_bytes(req.gpu.model.lower() if gpus else ""),
        infiniband=req.infiniband,
    )


def image_required(want: pb.ImageRequirement) -> bool:
    """Is any part of the image requirement set?"""
    return bool(
        want.name
        or want.os_type
        or want.os_distribution
        or want.os_version
        or want.architecture
        or want.cuda
        or want.min_cuda_version
    )


def image_need(req: pb.Requirements) -> ImageNeed:
    want = req.image
    return ImageNeed(
        required=image_required(want),
        name=_bytes(want.name),
        os_type=_bytes(want.os_type),
        distro=_bytes(want.os_distribution),
        version=_bytes(want.os_version),
        arch=_bytes(want.architecture),
        cuda=want.cuda,
        min_cuda=_bytes(want.min_cuda_version),
    )


@njit(cache=True, inline="always")
def _contains_lower(at, off, n, needle_at, m):
    """Do the n bytes at `off` contain the m bytes at `needle_at` (lower-case), ASCII
    case-insensitively?"""
    for start in range(0, n - m + 1):
        hit = True
        for k in range(m):
            b = byte_at(at, off + start + k)
            if 65 <= b <= 90:
                b += 32
            if b != byte_at(needle_at, k):
                hit = False
                break
        if hit:
            return True
    return False


@njit(cache=True, inline="always")
def flavor_fits(at, nums, model_off, model_len, vendor, need):
    """(size, GPUs, Infiniband): does the flavor (nums: cpus, ram_mb, disk_gb, gpus,
    infiniband, ...; its GPU model span and lower-cased vendor hash) have the CPUs, RAM and
    disk; the GPU count, vendor and model; the Infiniband of `need` (flavor_scalars)?"""
    cpus, ram, disk, gpus, want_vendor, model_at, model_n, infiniband = need
    size = nums[0] >= cpus and nums[1] >= ram and nums[2] >= disk
    gpu = True
    if gpus > 0:
        gpu = nums[3] >= gpus
        if gpu and want_vendor != 0:
            gpu = vendor == want_vendor
        if gpu and model_n:
            gpu = _contains_lower(at, model_off, model_len, model_at, model_n)
    ib = nums[4] > 0 or not infiniband
    return size, gpu, ib


@njit(cache=True)
def flavor_scalars(need):
    """A FlavorNeed as scalars only (its model as address and length): what flavor_fits
    takes, so that nothing is reference-counted per flavor."""
    cpus, ram, disk, gpus, vendor, model, infiniband = need
    return (cpus, ram, disk, gpus, vendor, model.ctypes.data, model.size, infiniband)


@njit(cache=True, inline="always")
def _eq(at, off, n, needle_at, m, ci):
    """Are the n bytes at `off` the m bytes at `needle_at` (ASCII case-insensitively if
    `ci`)?"""
    if n != m:
        return False
    for k in range(n):
        b = byte_at(at, off + k)
        w = byte_at(needle_at, k)
        if ci:
            if 65 <= b <= 90:
                b += 32
            if 65 <= w <= 90:
                w += 32
        if b != w:
            return False
    return True


@njit(cache=True, inline="always")
def version_of(at, off, n):
    """Dotted version: its first four numbers (missing parts 0)."""
    v0 = v1 = v2 = v3 = 0
    part = 0
    for k in range(off, off + n):
        b = byte_at(at, k)
        if b == 46:
            part += 1
            if part >= 4:
                break
        elif 48 <= b <= 57:
            if part == 0:
                v0 = v0 * 10 + (b - 48)
            elif part == 1:
                v1 = v1 * 10 + (b - 48)
            elif part == 2:
                v2 = v2 * 10 + (b - 48)
            else:
                v3 = v3 * 10 + (b - 48)
    return (v0, v1, v2, v3)


@njit(cache=True, inline="always")
def image_fits(at, spans, cuda_flag, need):
    """Does the image (spans: offset, length of id, name, os_type, os_distribution,
    os_version, architecture, cuda_version; its cuda flag) meet `need` (image_scalars)?"""
    addresses, sizes, cuda, has_min, min_cuda = need
    name_n, type_n, distro_n, version_n, arch_n = sizes
    if name_n and not (
        _eq(at, spans[0], spans[1], addresses[0], name_n, False)
        or _eq(at, spans[2], spans[3], addresses[0], name_n, False)
    ):
        return False
    if type_n and not _eq(at, spans[4], spans[5], addresses[1], type_n, True):
        return False
    if distro_n and not _eq(at, spans[6], spans[7], addresses[2], distro_n, True):
        return False
    if version_n and not _eq(at, spans[8], spans[9], addresses[3], version_n, False):
        return False
    if arch_n and not _eq(at, spans[10], spans[11], addresses[4], arch_n, False):
        return False
    if (cuda or has_min) and not (cuda_flag > 0 or spans[13] > 0):
        return False
    return not (has_min and version_of(at, spans[12], spans[13]) < min_cuda)


@njit(cache=True)
def image_scalars(need):
    """An ImageNeed as scalars only (see flavor_scalars): (needle addresses, needle
    lengths (name, os_type, distro, version, arch), cuda, has a minimum CUDA version, that
    version as four numbers)."""
    _, name, os_type, distro, version, arch, cuda, min_cuda = need
    addresses = (
        name.ctypes.data,
        os_type.ctypes.data,
        distro.ctypes.data,
        version.ctypes.data,
        arch.ctypes.data,
    )
    sizes = (name.size, os_type.size, distro.size, version.size, arch.size)
    want = (0, 0, 0, 0)
    if min_cuda.size:
        want = version_of(min_cuda.ctypes.data, 0, min_cuda.size)
    return addresses, sizes, cuda, min_cuda.size > 0, want
