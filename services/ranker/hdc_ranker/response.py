"""Outcome -> RankResponse: every candidate, ranked ones first, with its reasons.

The per-candidate records are written as protobuf bytes by the compiled encoder (wire.py);
the few summary fields by the protobuf library; protobuf concatenation merges them.
"""

from __future__ import annotations

import logging
import struct
import time

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb
from prometheus_client import Counter, Histogram

from hdc_ranker import wire
from hdc_ranker.engine import Outcome, Ranker
from hdc_ranker.errors import RankInputError

log = logging.getLogger(__name__)

LATENCY = Histogram(
    "hdc_ranker_rank_seconds",
    "Server time of one Rank call (decode, filter, score, encode)",
    ["api"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REQUESTS = Counter("hdc_ranker_requests_total", "Rank calls", ["api", "outcome"])
CANDIDATES = Counter("hdc_ranker_candidates_total", "Candidates ranked", ["outcome"])
REJECTIONS = Counter(
    "hdc_ranker_rejections_total", "Candidates rejected, by first reason", ["code"]
)

SERVER_TIME_TAG = b"\x41"  # RankResponse.server_time_ms: field 8, 64-bit


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (string/bytes/message) with its tag."""
    return _SMALL[(number << 3) | 2] + _varint(len(data)) + data


def encode_response(out: Outcome, summary: str | None = None) -> bytes:
    head = pb.RankResponse(
        summary=out.summary() if summary is None else summary,
        criteria=out.criteria,
        weights=out.weights,
        ranked_count=out.ranked_count,
        total_count=out.n,
        rejection_counts=out.rejection_counts(),
        seed=out.seed,
    ).SerializeToString()
    if out.n == 0:
        return head
    ctx = out.ctx
    table = ctx.table
    n = out.n
    rejected = np.flatnonzero(out.rank < 0)
    # Rejection{code=1, filter=2, message=3} records (RankedCandidate field 7), gathered per
    # candidate in filter order; code and filter are the same for all of one reason.
    records: dict[int, list[bytes]] = {}
    for f, r in out.rejections:
        prefix = _field(1, r.code.encode()) + _field(2, f.name.encode())
        idx, messages = r.messages()
        for i, message in zip(idx.tolist(), messages, strict=True):
            body = prefix + _field(3, message.encode())
            records.setdefault(i, []).append(b"\x3a" + _varint(len(body)) + body)
    lengths = np.zeros(n, dtype=np.int64)
    pieces = []
    for i in rejected.tolist():
        record = b"".join(records[i])
        lengths[i] = len(record)
        pieces.append(record)
    rej_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=rej_off[1:])
    rej_blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    k = len(out.criteria)
    scores = np.ascontiguousarray(np.nan_to_num(out.scores, nan=0.0), dtype=np.float64)
    totals = np.ascontiguousarray(out.total, dtype=np.float64)
    image_spans = ctx.shared.get("image_spans")
    if image_spans is None:
        image_spans = np.zeros((n, 2), dtype=np.int64)
    ft = table.flavors
    flavor_strs = ft.strs if len(ft) else np.zeros((1, 6), dtype=np.int64)
    order = np.concatenate([out.order, rejected]).astype(np.int64)
    body = wire.encode_results(
        table.buf,
        order,
        out.rank.astype(np.int64),
        totals.view(np.uint8),
        scores.reshape(-1).view(np.uint8),
        k,
        table.strs,
        flavor_strs,
        out.chosen_flavor.astype(np.int64),
        image_spans,
        rej_blob,
        rej_off,
    )
    return head + body.tobytes()


def rank_bytes(ranker: Ranker, raw: bytes, api: str = "grpc") -> tuple[bytes, float, float]:
    """Rank serialized RankRequest bytes: (serialized RankResponse, server time in ms, CPU
    time of this thread in ms; the latter does not count time other processes took)."""
    start = time.perf_counter()
    cpu_start = time.thread_time()
    try:
        out = ranker.rank(raw)
    except RankInputError:
        REQUESTS.labels(api, "invalid").inc()
        raise
    summary = out.summary()
    body = encode_response(out, summary)
    elapsed = time.perf_counter() - start
    LATENCY.labels(api).observe(elapsed)
    REQUESTS.labels(api, "ok").inc()
    CANDIDATES.labels("ranked").inc(out.ranked_count)
    CANDIDATES.labels("rejected").inc(out.n - out.ranked_count)
    for code, count in out.rejection_counts().items():
        REJECTIONS.labels(code).inc(count)
    log.info(
        "ranked",
        extra={
            "deployment_id": out.ctx.request.deployment_id,
            "candidates": out.n,
            "ranked": out.ranked_count,
            "ms": round(elapsed * 1e3, 3),
            "summary": summary,
        },
    )
    cpu_ms = (time.thread_time() - cpu_start) * 1e3
    return body + SERVER_TIME_TAG + struct.pack("<d", elapsed * 1e3), elapsed * 1e3, cpu_ms


def rank_and_respond(ranker: Ranker, request: pb.RankRequest | bytes) -> pb.RankResponse:
    """Rank and build the answer as a message (RankResponse.server_time_ms set)."""
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    body, _, _ = rank_bytes(ranker, raw, api="rest")
    return pb.RankResponse.FromString(body)


def to_response(out: Outcome) -> pb.RankResponse:
    return pb.RankResponse.FromString(encode_response(out))


_warm = False


def warm_up() -> None:
    """Compile (or load from numba's cache) every compiled function once, with a request
    that takes every path, so that no caller's first request pays for it."""
    global _warm
    if _warm:
        return
    from hdc_ranker.plugins import default_registry

    req = pb.RankRequest()
    r = req.requirements
    r.cpus, r.ram_mb, r.instances, r.public_ips, r.tenant = 1, 512, 1, 1, "t"
    r.gpu.count, r.gpu.vendor, r.gpu.model = 1, "nvidia", "v100"
    r.image.os_distribution, r.image.min_cuda_version, r.image.name = "ubuntu", "11", "img"
    r.identity_provider = "https://idp/"
    for i, ok in enumerate((True, False)):
        c = req.candidates.add(site_id=f"s{i}", service_id=f"s{i}/x", service_type="t")
        c.status = pb.STATUS_UP
        c.identity_providers.add(issuer="https://idp", name="idp")
        c.flavors.add(
            id="f",
            name="f",
            cpus=2,
            ram_mb=1024,
            gpus=1 if ok else 0,
            gpu_vendor="NVIDIA",
            gpu_model="Tesla V100",
            cost_per_hour=1.0,
        )
        c.images.add(id="img", name="img", os_distribution="Ubuntu", cuda=True, cuda_version="12.1")
        q = c.quotas.add(tenant="t")
        q.limits.cores, q.usage.cores = 10, 1
        c.freshness.creation_time.seconds, c.freshness.valid_until.seconds = 1, 2**31
        c.freshness.validity_s, c.freshness.stale = 10, False
        c.cost.per_cpu_hour = 0.1
        c.cost_per_hour, c.public_cloud = 1.0, True
    rank_bytes(Ranker(default_registry(entry_points_too=False)), req.SerializeToString())
    _warm = True
