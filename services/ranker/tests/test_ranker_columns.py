"""RankResponse.columns (RankOptions.result_layout = RESULT_LAYOUT_COLUMNS) says exactly
what RankResponse.results says, on the same requests."""

from __future__ import annotations

import random

import grpc
import numpy as np
import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc.ranker.v1 import ranker_pb2_grpc
from hdc_common.grpc import create_server, insecure_channel
from hdc_ranker.errors import RankInputError
from hdc_ranker.grpc_api import servicer_entry
from hdc_ranker.response import rank_and_respond


def _as_results(req: pb.RankRequest, resp: pb.RankResponse) -> list[pb.RankedCandidate]:
    """The per-candidate records a client rebuilds from the columns."""
    cols = resp.columns
    k = len(resp.criteria)
    scores = np.array(cols.criterion_scores).reshape(len(req.candidates), k)
    reasons: dict[int, list[pb.Rejection]] = {}
    for c, r in zip(cols.rejected_candidate, cols.rejected_reason, strict=True):
        reasons.setdefault(c, []).append(cols.reasons[r])
    out = []
    for i in cols.order:
        c = req.candidates[i]
        r = pb.RankedCandidate(index=i, site_id=c.site_id, service_id=c.service_id)
        r.rank = cols.rank[i]
        if r.rank > 0:
            r.total_score = cols.total_score[i]
            r.criterion_scores.extend(scores[i].tolist())
            if cols.flavor[i] >= 0:
                f = c.flavors[cols.flavor[i]]
                r.flavor_id, r.flavor_name = f.id, f.name
            if cols.image[i] >= 0:
                img = c.images[cols.image[i]]
                r.image_id = img.id or img.name
        r.rejections.extend(reasons.get(i, []))
        out.append(r)
    return out


def _both(ranker, req: pb.RankRequest) -> tuple[pb.RankResponse, pb.RankResponse]:
    per_candidate = rank_and_respond(ranker, req)
    req.options.result_layout = pb.RESULT_LAYOUT_COLUMNS
    columns = rank_and_respond(ranker, req)
    req.options.result_layout = pb.RESULT_LAYOUT_PER_CANDIDATE
    return per_candidate, columns


def _assert_same(req: pb.RankRequest, per_candidate: pb.RankResponse, columns: pb.RankResponse):
    assert not columns.results and not per_candidate.HasField("columns")
    assert _as_results(req, columns) == list(per_candidate.results)
    for field in ("summary", "criteria", "weights", "ranked_count", "total_count", "seed"):
        assert getattr(columns, field) == getattr(per_candidate, field), field
    assert dict(columns.rejection_counts) == dict(per_candidate.rejection_counts)
    # Distinct reasons are listed once.
    assert len({r.SerializeToString() for r in columns.columns.reasons}) == len(
        columns.columns.reasons
    )


@pytest.mark.parametrize("seed", range(6))
def test_columns_equal_per_candidate_results(ranker, mk, seed):
    rng = random.Random(seed)
    req = mk.random_request(seed, n=80)
    for c in req.candidates:
        c.site_id = c.site_id or "s"
        c.ClearField("quotas")
        for f in c.flavors:
            f.ClearField("cost_per_hour")
        if rng.random() < 0.3:
            c.health.add(component="nova", healthy=False, message=rng.choice(["503", "slow"]))
    r = req.requirements
    r.cpus = 1
    r.gpu.count = seed % 2
    if seed % 3 == 0:
        r.image.os_distribution = "ubuntu"
    if seed % 3 == 1:
        r.identity_provider = "https://iam"
    r.service_types.extend(["", "a", "nvidia", "NVIDIA", "Tesla V100", "ünïcødé-site"])
    r.exclude_site_ids.append(req.candidates[0].site_id)
    req.options.now.seconds = 2**32
    req.options.max_age_s = 2**40
    per_candidate, columns = _both(ranker, req)
    assert per_candidate.ranked_count > 0 and per_candidate.ranked_count < len(req.candidates)
    _assert_same(req, per_candidate, columns)


def test_columns_with_every_filter_and_scorer(ranker, mk):
    spec = pb.Requirements(
        cpus=2, gpu=pb.GpuRequirement(count=1, vendor="nvidia"), instances=2, public_ips=1
    )
    spec.image.os_distribution = "ubuntu"
    gpu = [dict(id="g1", name="gpu.large", cpus=4, ram_mb=8192, gpus=1, gpu_vendor="NVIDIA")]
    ubuntu = [dict(id="", name="ubuntu-22", os_distribution="Ubuntu")]
    cands = [
        mk.candidate("a", flavors=gpu, images=ubuntu, quota={"cores": (100, 1)}),
        mk.candidate("b", flavors=gpu, images=ubuntu, quota={"cores": (5, 4)}),
        mk.candidate("c", images=ubuntu),
        mk.candidate("d", flavors=gpu, images=ubuntu, status=pb.STATUS_DOWN, created=1),
        mk.candidate("e", flavors=gpu, images=ubuntu, cost_per_hour=0.5),
    ]
    req = mk.request(
        *cands,
        requirements=spec,
        slas=[pb.Sla(id="1", site_id="a", targets={"public_ip": 3})],
        preferences=[pb.Preference(site_id="e", weight=2)],
        monitoring=[pb.Monitoring(site_id="a", probes=[pb.Probe(success_rate=0.9)])],
    )
    per_candidate, columns = _both(ranker, req)
    _assert_same(req, per_candidate, columns)
    cols = columns.columns
    assert list(cols.rank) == [1, -1, -1, -1, 2] or list(cols.rank) == [2, -1, -1, -1, 1]
    assert list(cols.flavor) == [0, 0, -1, 0, 0]
    assert list(cols.image) == [0, 0, 0, 0, 0]
    # d is down and stale: both reasons, in filter order
    d_reasons = [
        cols.reasons[r].code
        for c, r in zip(cols.rejected_candidate, cols.rejected_reason, strict=True)
        if c == 3
    ]
    assert d_reasons == ["SITE_DOWN", "STALE_DATA"]


def test_columns_of_an_empty_request(ranker, mk):
    req = mk.request()
    req.options.result_layout = pb.RESULT_LAYOUT_COLUMNS
    resp = rank_and_respond(ranker, req)
    assert resp.summary == "0/0 providers: no candidates given"
    assert not resp.columns.order and not resp.results


def test_unknown_layout_is_an_input_error(ranker, mk):
    req = mk.request(mk.candidate("a"))
    req.options.result_layout = 7
    with pytest.raises(RankInputError, match="result_layout"):
        ranker.rank(req)


def test_columns_over_grpc(ranker, gateway, mk):
    server = create_server(0, [servicer_entry(ranker, gateway.verifier())])
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}", identity_token=gateway.token)
    try:
        stub = ranker_pb2_grpc.RankerStub(channel)
        req = mk.request(mk.candidate("a"), mk.candidate("b", status=pb.STATUS_DOWN))
        req.options.result_layout = pb.RESULT_LAYOUT_COLUMNS
        resp = stub.Rank(req, timeout=10)
        assert list(resp.columns.order) == [0, 1] and list(resp.columns.rank) == [1, -1]
        assert resp.server_time_ms > 0
        # The packed column is one little-endian array.
        raw = resp.columns.SerializeToString()
        assert np.frombuffer(raw[2:10], dtype="<i4").tolist() == [0, 1]
        req.options.result_layout = 3
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
        server.stop(0)
