"""Outcome -> RankResponse: every candidate, ranked ones first, with its reasons.

The per-candidate records are written as protobuf bytes by the compiled encoder
(encode.py); the few summary fields by the protobuf library; protobuf concatenation merges
them. Each distinct explanation is rendered once and copied to every candidate it applies
to (Rejected.key, plugins.py).
"""

from __future__ import annotations

import logging
import struct
import time

import numpy as np
from hdc.ranker.v1 import ranker_pb2 as pb
from prometheus_client import Counter, Histogram

from hdc_ranker import decode as d
from hdc_ranker import encode
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

SERVER_TIME_TAG = 0x41  # RankResponse.server_time_ms: field 8, 64-bit
SERVER_TIME_SIZE = 9


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (string/bytes/message) with its tag."""
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _rejection_records(out: Outcome) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Every distinct Rejection (serialized, as a field 7 record: the same field number in
    RankedCandidate and in ResultColumns) once; and who has which, sorted by candidate, a
    candidate's in filter order: (records, candidates, record of each)."""
    pieces: list[bytes] = []
    owners: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    for f, r in out.rejections:
        idx, group, sentences = r.grouped()
        if not idx.size:
            continue
        prefix = _field(1, r.code.encode()) + _field(2, f.name.encode())
        owners.append(idx)
        ids.append(group + len(pieces))
        for sentence in sentences:
            pieces.append(_field(7, prefix + _field(3, sentence.encode())))
    if not owners:
        return pieces, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    owner = np.concatenate(owners)
    by_owner = np.argsort(owner, kind="stable")  # stable: filter order within a candidate
    return pieces, owner[by_owner], np.concatenate(ids)[by_owner]


def encode_response(out: Outcome, summary: str | None = None) -> bytes:
    """The serialized RankResponse (without server_time_ms)."""
    body = _encode(out, summary, 0)
    return body if isinstance(body, bytes) else body.tobytes()


def _encode(out: Outcome, summary: str | None, tail: int) -> np.ndarray | bytes:
    """The serialized RankResponse without server_time_ms: per candidate, as an array with
    `tail` free bytes at the end; as columns, as bytes."""
    head = pb.RankResponse(
        summary=out.summary() if summary is None else summary,
        criteria=out.criteria,
        weights=out.weights,
        ranked_count=out.ranked_count,
        total_count=out.n,
        rejection_counts=out.rejection_counts(),
        seed=out.seed,
    ).SerializeToString()
    records, owners, ids = _rejection_records(out)
    order = np.concatenate([out.order, np.flatnonzero(out.rank < 0)])
    if out.layout == pb.RESULT_LAYOUT_COLUMNS:
        return head + _field(10, _columns(out, order, records, owners, ids))
    table = out.ctx.table
    sizes = np.fromiter(map(len, records), np.int64, len(records))
    blob_off = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(sizes, out=blob_off[1:])
    return encode.encode_results(
        np.frombuffer(head, dtype=np.uint8),
        table.buf,
        table.ints,
        table.flavors.ints,
        table.image_ints,
        np.asarray(order, dtype=np.int64),
        np.asarray(out.rank, dtype=np.int64),
        np.asarray(out.total, dtype=np.float64),
        out.scores,  # the NaN rows of rejected candidates are not written
        np.asarray(out.chosen_flavor, dtype=np.int64),
        np.asarray(out.chosen_image, dtype=np.int64),
        np.frombuffer(b"".join(records) or b"\0", dtype=np.uint8),
        blob_off,
        owners,
        ids,
        tail,
    )


def _packed(number: int, values: np.ndarray, dtype: str) -> bytes:
    """A packed repeated field of fixed-width numbers (omitted when empty, as proto3 does)."""
    if not values.size:
        return b""
    return _field(number, np.ascontiguousarray(values, dtype=dtype).tobytes())


def _columns(
    out: Outcome, order: np.ndarray, records: list[bytes], owners: np.ndarray, ids: np.ndarray
) -> bytes:
    """The ResultColumns message."""
    ft = out.ctx.table.flavors
    table = out.ctx.table
    flavor = np.where(out.chosen_flavor >= 0, out.chosen_flavor - ft.first, -1)
    image = np.where(out.chosen_image >= 0, out.chosen_image - table.image_first, -1)
    return b"".join(
        [
            _packed(1, order, "<i4"),
            _packed(2, out.rank, "<i4"),
            _packed(3, out.total, "<f8"),
            _packed(4, np.nan_to_num(out.scores, nan=0.0), "<f8"),
            _packed(5, flavor, "<i4"),
            _packed(6, image, "<i4"),
            *records,  # field 7
            _packed(8, owners, "<i4"),
            _packed(9, ids, "<i4"),
        ]
    )


def rank_bytes(
    ranker: Ranker, raw: bytes, api: str = "grpc", start: float | None = None
) -> tuple[bytes, float, float]:
    """Rank serialized RankRequest bytes: (serialized RankResponse, server time in ms since
    `start` (a time.perf_counter() value; default: now), CPU time of this thread in ms; the
    latter does not count time other processes took)."""
    start = time.perf_counter() if start is None else start
    cpu_start = time.thread_time()
    try:
        out = ranker.rank(raw)
    except RankInputError:
        REQUESTS.labels(api, "invalid").inc()
        raise
    summary = out.summary()
    body = _encode(out, summary, SERVER_TIME_SIZE)
    counts = out.rejection_counts()
    REQUESTS.labels(api, "ok").inc()
    CANDIDATES.labels("ranked").inc(out.ranked_count)
    CANDIDATES.labels("rejected").inc(out.n - out.ranked_count)
    for code, count in counts.items():
        REJECTIONS.labels(code).inc(count)
    elapsed = time.perf_counter() - start
    stamp = struct.pack("<Bd", SERVER_TIME_TAG, elapsed * 1e3)
    if isinstance(body, bytes):
        answer = body + stamp
    else:
        body[-SERVER_TIME_SIZE:] = np.frombuffer(stamp, dtype=np.uint8)
        answer = body.tobytes()
    LATENCY.labels(api).observe(elapsed)
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
    return answer, elapsed * 1e3, cpu_ms


def rank_and_respond(ranker: Ranker, request: pb.RankRequest | bytes) -> pb.RankResponse:
    """Rank and build the answer as a message (RankResponse.server_time_ms set)."""
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    body, _, _ = rank_bytes(ranker, raw, api="rest")
    return pb.RankResponse.FromString(body)


def to_response(out: Outcome) -> pb.RankResponse:
    return pb.RankResponse.FromString(encode_response(out))


_warm = False


def warm_up() -> None:
    """Compile (or load from numba's cache) every compiled function once, with requests
    that take every path (both answer layouts, every explanation, look-ups by site and by
    service, the exact recount of sub-messages), so that no caller's first request pays."""
    global _warm
    if _warm:
        return
    from hdc_ranker import wire
    from hdc_ranker.plugins import default_registry

    ranker = Ranker(default_registry(entry_points_too=False))
    req = _warm_up_request(n=d.SAMPLE + 8)
    for layout in (pb.RESULT_LAYOUT_PER_CANDIDATE, pb.RESULT_LAYOUT_COLUMNS):
        req.options.result_layout = layout
        rank_bytes(ranker, req.SerializeToString())
    wire.utf8_array_ok(np.frombuffer(b"warm", dtype=np.uint8))
    _warm = True


def _warm_up_request(n: int) -> pb.RankRequest:
    req = pb.RankRequest()
    r = req.requirements
    r.cpus, r.ram_mb, r.instances, r.public_ips, r.tenant = 1, 512, 1, 1, "t"
    r.gpu.count, r.gpu.vendor, r.gpu.model = 1, "nvidia", "v100"
    r.image.os_distribution, r.image.min_cuda_version, r.image.name = "ubuntu", "11", "img"
    r.identity_provider = "https://idp/"
    r.exclude_site_ids.append("s1")
    r.service_types.append("t")
    req.options.now.seconds = 2**30
    sla = req.slas.add(id="a", site_id="s0", service_id="s0/x", targets={"ip": 1.0})
    sla.end.seconds = 2**31
    req.slas.add(id="b", site_id="s2", targets={"ip": 2.0})
    req.preferences.add(site_id="s0", service_type="t", service_id="s0/x", weight=1.0)
    req.preferences.add(site_id="s2", weight=2.0)
    probe = req.monitoring.add(site_id="s0", service_id="s0/x").probes.add(success_rate=1.0)
    probe.time.seconds = 2**30 - 60
    req.monitoring.add(site_id="s2").probes.add(success_rate=0.5, response_time_ms=10)
    for i in range(n):
        ok = i % 2 == 0
        c = req.candidates.add(site_id=f"s{i % 5}", service_id=f"s{i}/x", service_type="t")
        c.status = pb.STATUS_UP if i % 7 else pb.STATUS_DOWN
        c.health.add(component="api", healthy=False, message="503")
        c.identity_providers.add(issuer="https://idp" if i % 3 else "https://other", name="idp")
        # the last candidates have more flavors than the first ones suggest: recount
        for _ in range(1 if i < d.SAMPLE else 6):
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
        q.limits.cores, q.usage.cores = 10, 1 if i % 4 else 10
        c.freshness.creation_time.seconds, c.freshness.valid_until.seconds = 1, 2**31
        c.freshness.validity_s, c.freshness.stale = 10, i % 11 == 0
        c.cost.per_cpu_hour = 0.1
        c.cost_per_hour, c.public_cloud = 1.0, True
    return req
