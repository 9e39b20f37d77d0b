"""The compiled wire decoder/encoder agree with the protobuf library, and never crash."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc_ranker import wire
from hdc_ranker.engine import Ranker
from hdc_ranker.errors import RankInputError
from hdc_ranker.response import encode_response, rank_and_respond
from hdc_ranker.table import CandidateTable, text_hash


def _random_request(seed: int, n: int = 40) -> pb.RankRequest:
    rng = random.Random(seed)
    req = pb.RankRequest()
    req.requirements.tenant = "vo"
    words = ["", "a", "nvidia", "NVIDIA", "Tesla V100", "ünïcødé-site", "x" * 200]
    for i in range(n):
        c = req.candidates.add(
            site_id=f"site-{rng.randrange(7)}-{rng.choice(words)}", service_id=f"svc-{i}"
        )
        c.service_type = rng.choice(words)
        c.status = rng.randrange(4)
        for _ in range(rng.randrange(4)):
            c.flavors.add(
                id=rng.choice(words),
                name=rng.choice(words),
                cpus=rng.randrange(2**32),
                ram_mb=rng.randrange(2**40),
                disk_gb=rng.randrange(100),
                gpus=rng.randrange(3),
                gpu_vendor=rng.choice(words),
                gpu_model=rng.choice(words),
                infiniband=rng.random() < 0.5,
            )
            if rng.random() < 0.3:
                c.flavors[-1].cost_per_hour = rng.random()
            c.flavors[-1].properties["k"] = "v"  # a field the decoder skips
        for _ in range(rng.randrange(3)):
            c.images.add(
                id=rng.choice(words),
                os_distribution=rng.choice(["ubuntu", "Ubuntu", "centos"]),
                cuda=rng.random() < 0.5,
                cuda_version=rng.choice(["", "11.8", "12.1", "9"]),
            )
        for _ in range(rng.randrange(3)):
            q = c.quotas.add(tenant=rng.choice(["vo", "other"]))
            if rng.random() < 0.8:
                q.limits.cores = rng.choice([-1, 0, 10, 2**40])
            q.limits.instances = rng.randrange(20)
            q.usage.cores = rng.randrange(10)
        for _ in range(rng.randrange(3)):
            c.identity_providers.add(
                issuer=rng.choice(["https://iam/", "https://iam", "x"]), name="n"
            )
        if rng.random() < 0.7:
            c.freshness.creation_time.seconds = rng.randrange(1, 2**33)
            c.freshness.creation_time.nanos = rng.randrange(10**9)
        if rng.random() < 0.5:
            c.freshness.valid_until.seconds = rng.randrange(1, 2**33)
        c.freshness.validity_s = rng.randrange(3)
        c.freshness.stale = rng.random() < 0.2
        if rng.random() < 0.5:
            c.cost.per_cpu_hour = rng.random()
        if rng.random() < 0.5:
            c.cost_per_hour = rng.random()
        c.public_cloud = rng.random() < 0.5
        c.properties["ignored"] = "yes"
    return req


def _quota_for(c: pb.Candidate, tenant: str) -> pb.Quota | None:
    if not c.quotas:
        return None
    return next((q for q in c.quotas if q.tenant == tenant), c.quotas[0])


@pytest.mark.parametrize("seed", range(5))
def test_decoded_columns_match_protobuf(seed):
    req = _random_request(seed)
    raw = req.SerializeToString()
    buf = np.frombuffer(raw, dtype=np.uint8)
    status, cs, ce, _hs, _he, counts = wire.scan_request(buf)
    assert status == wire.OK
    t = CandidateTable(raw, cs, ce, counts, "vo")
    flavors = [f for c in req.candidates for f in c.flavors]
    assert t.site_id == [c.site_id for c in req.candidates]
    assert t.service_type == [c.service_type for c in req.candidates]
    assert t.site_hash.tolist() == [text_hash(c.site_id) for c in req.candidates]
    assert t.status.tolist() == [c.status for c in req.candidates]
    assert t.public_cloud.tolist() == [c.public_cloud for c in req.candidates]
    assert t.flavors.cpus.tolist() == [f.cpus for f in flavors]
    assert t.flavors.ram_mb.tolist() == [float(f.ram_mb) for f in flavors]
    assert t.flavors.infiniband.tolist() == [f.infiniband for f in flavors]
    assert t.flavors.vendor_hash.tolist() == [text_hash(f.gpu_vendor, lower=True) for f in flavors]
    assert [t.flavors.message(i) for i in range(len(flavors))] == flavors
    costs = t.flavors.cost_per_hour(np.arange(len(flavors)))
    expected = [f.cost_per_hour if f.HasField("cost_per_hour") else math.nan for f in flavors]
    np.testing.assert_array_equal(costs, expected)
    created, valid, stale = t.freshness
    for i, c in enumerate(req.candidates):
        ct = c.freshness.creation_time
        want = ct.seconds + ct.nanos * 1e-9 if ct.seconds or ct.nanos else math.nan
        assert created[i] == pytest.approx(want, nan_ok=True)
        assert stale[i] == c.freshness.stale
        q = _quota_for(c, "vo")
        for j, name in enumerate(("instances", "cores", "ram_mb", "gpus", "floating_ips")):
            lim = getattr(q.limits, name) if q is not None and q.limits.HasField(name) else math.nan
            assert t._limits[i, j] == pytest.approx(lim, nan_ok=True), (i, name)
        prices = t._cost[i]
        assert prices[3] == pytest.approx(
            c.cost_per_hour if c.HasField("cost_per_hour") else math.nan, nan_ok=True
        )
        assert t.rows[i] == c
    issuers = [
        text_hash(p.issuer, strip_slash=True) for c in req.candidates for p in c.identity_providers
    ]
    assert t.idp_hash[:, 0].tolist() == issuers


def test_encoded_answer_matches_protobuf(ranker, mk):
    req = _random_request(9, n=60)
    for c in req.candidates:
        c.site_id = c.site_id or "s"
        c.ClearField("quotas")  # keep the request valid: the quota filter checks values
        for f in c.flavors:
            f.ClearField("cost_per_hour")
    req.requirements.cpus = 2
    req.requirements.image.os_distribution = "ubuntu"
    out = ranker.rank(req)
    resp = pb.RankResponse.FromString(encode_response(out))
    assert len(resp.results) == 60
    for r in resp.results:
        c = req.candidates[r.index]
        assert (r.site_id, r.service_id) == (c.site_id, c.service_id)
        assert r.rank == out.rank[r.index]
        if r.rank > 0:
            assert r.total_score == out.total[r.index]
            assert list(r.criterion_scores) == out.scores[r.index].tolist()
            if out.chosen_flavor[r.index] >= 0:
                f = out.ctx.table.flavors.message(out.chosen_flavor[r.index])
                assert (r.flavor_id, r.flavor_name) == (f.id, f.name)
        else:
            assert [(x.code, x.filter, x.message) for x in r.rejections] == out.reasons(r.index)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x2a\xff\xff\xff\xff\x0f",  # candidate longer than the message
        b"\x2a\x03\x0a\x05ab",  # site id longer than the candidate
        b"\x2a\x02\x42\x80",  # truncated flavor length varint
        b"\xff" * 11,  # a tag varint that never ends
        b"\x0a\x02\x08",  # requirements that do not parse
        b"\x2a\x02\x1f\x00",  # wire type 7 does not exist
    ],
)
def test_malformed_bytes_are_input_errors(ranker, raw):
    with pytest.raises(RankInputError, match="not a valid"):
        ranker.rank(raw)


def test_utf8_validation_matches_python():
    samples = [
        b"",
        b"plain",
        "ünïcødé €𝄞".encode(),
        b"\xff",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
        b"ok\xe2\x82\xac",
        b"\xf0\x9f\x98",
    ]
    for raw in samples:
        buf = np.frombuffer(raw, dtype=np.uint8)
        try:
            raw.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        assert wire._utf8_ok(buf, 0, buf.size) == valid, raw


def test_invalid_utf8_in_a_candidate_is_an_input_error(ranker, mk):
    c = mk.candidate("a")
    raw = pb.RankRequest(candidates=[c]).SerializeToString().replace(b"a/nova", b"a/n\xffva")
    with pytest.raises(RankInputError, match="not valid UTF-8"):
        ranker.rank(raw)


def test_bytes_and_message_give_the_same_answer(ranker: Ranker, mk):
    req = mk.request(mk.candidate("a"), mk.candidate("b", status=pb.STATUS_DOWN))
    a = rank_and_respond(ranker, req)
    b = rank_and_respond(ranker, req.SerializeToString())
    a.server_time_ms = b.server_time_ms = 0
    assert a == b
