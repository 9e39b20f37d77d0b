"""The compiled wire decoder/encoder agree with the protobuf library, and never crash."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc_ranker import decode as d
from hdc_ranker import match, wire
from hdc_ranker.engine import Ranker
from hdc_ranker.errors import RankInputError
from hdc_ranker.response import encode_response, rank_and_respond
from hdc_ranker.table import CandidateTable, text_hash

from .conftest import random_request


def _quota_for(c: pb.Candidate, tenant: str) -> pb.Quota | None:
    if not c.quotas:
        return None
    return next((q for q in c.quotas if q.tenant == tenant), c.quotas[0])


def _skewed_request() -> pb.RankRequest:
    """The first candidates publish no flavors, images or identity providers, the later
    ones many: the room estimated from the first ones is short (decode.SAMPLE)."""
    req = random_request(11, n=d.SAMPLE + 40)
    for c in req.candidates[: d.SAMPLE]:
        c.ClearField("flavors")
        c.ClearField("images")
        c.ClearField("identity_providers")
    for c in req.candidates[d.SAMPLE :]:
        for k in range(6):
            c.flavors.add(id=f"f{k}", cpus=k, gpu_vendor="nvidia")
            c.images.add(id=f"i{k}", os_distribution="ubuntu")
            c.identity_providers.add(issuer=f"https://iam{k}/")
    return req


@pytest.mark.parametrize(
    ("req", "room_short"),
    [(random_request(seed, n), False) for seed, n in ((0, 40), (1, 40), (2, 200), (3, 300))]
    + [(_skewed_request(), True)],
    ids=["40-0", "40-1", "200", "300", "skewed"],
)
def test_decoded_columns_match_protobuf(req, room_short):
    raw = req.SerializeToString()
    buf = np.frombuffer(raw, dtype=np.uint8)
    ok, cands, _head, tenant_off, tenant_len, room = d.scan_request(buf, False)
    needs = (match.flavor_need(req.requirements), match.image_need(req.requirements))
    tenant = (tenant_off, tenant_len)
    estimated = d.decode_candidates(buf, cands, tenant, room, False, *needs)[0]
    assert estimated == (d.ERR_ROOM if room_short else wire.OK)  # then decoded again
    t = CandidateTable(raw)
    flavors = [f for c in req.candidates for f in c.flavors]
    images = [img for c in req.candidates for img in c.images]
    assert t.site_id == [c.site_id for c in req.candidates]
    assert t.service_id == [c.service_id for c in req.candidates]
    assert t.service_type == [c.service_type for c in req.candidates]
    assert t.site_hash.tolist() == [text_hash(c.site_id) for c in req.candidates]
    assert t.service_hash.tolist() == [text_hash(c.service_id) for c in req.candidates]
    assert t.type_hash.tolist() == [text_hash(c.service_type) for c in req.candidates]
    assert t.status.tolist() == [c.status for c in req.candidates]
    assert t.public_cloud.tolist() == [c.public_cloud for c in req.candidates]
    assert t.flavors.cpus.tolist() == [f.cpus for f in flavors]
    assert t.flavors.ram_mb.tolist() == [float(f.ram_mb) for f in flavors]
    assert t.flavors.gpus.tolist() == [f.gpus for f in flavors]
    assert t.flavors.infiniband.tolist() == [f.infiniband for f in flavors]
    assert t.flavors.vendor_hash.tolist() == [text_hash(f.gpu_vendor, lower=True) for f in flavors]
    assert t.flavors.owner.tolist() == [i for i, c in enumerate(req.candidates) for _ in c.flavors]
    assert [t.flavors.message(i) for i in range(len(flavors))] == flavors
    costs = t.flavors.cost_per_hour(np.arange(len(flavors)))
    expected = [f.cost_per_hour if f.HasField("cost_per_hour") else math.nan for f in flavors]
    np.testing.assert_array_equal(costs, expected)
    spans = t.image_ints
    assert [t.text(s[d.I_ID], s[d.I_ID + 1]) for s in spans] == [img.id for img in images]
    assert [t.text(s[d.I_DISTRO], s[d.I_DISTRO + 1]) for s in spans] == [
        img.os_distribution for img in images
    ]
    assert [t.text(s[d.I_CUDA_VERSION], s[d.I_CUDA_VERSION + 1]) for s in spans] == [
        img.cuda_version for img in images
    ]
    assert (spans[:, d.I_CUDA] > 0).tolist() == [img.cuda for img in images]
    assert t.image_count.tolist() == [len(c.images) for c in req.candidates]
    created, valid, stale = t.freshness
    for i, c in enumerate(req.candidates):
        ct = c.freshness.creation_time
        want = ct.seconds + ct.nanos * 1e-9 if ct.seconds or ct.nanos else math.nan
        assert created[i] == pytest.approx(want, nan_ok=True)
        assert stale[i] == c.freshness.stale
        q = _quota_for(c, "vo")
        limits, usage = t.quota
        for j, name in enumerate(("instances", "cores", "ram_mb", "gpus", "floating_ips")):
            lim = getattr(q.limits, name) if q is not None and q.limits.HasField(name) else math.nan
            assert limits[i, j] == pytest.approx(lim, nan_ok=True), (i, name)
            assert usage[i, j] == (getattr(q.usage, name) if q is not None else 0), (i, name)
        prices = t.cost(np.array([i]))[0]
        assert prices[3] == pytest.approx(
            c.cost_per_hour if c.HasField("cost_per_hour") else math.nan, nan_ok=True
        )
        assert prices[0] == pytest.approx(
            c.cost.per_cpu_hour if c.HasField("cost") else math.nan, nan_ok=True
        )
        assert t.rows[i] == c
    issuers = [
        text_hash(p.issuer, strip_slash=True) for c in req.candidates for p in c.identity_providers
    ]
    assert t.idp_hash[:, d.P_ISSUER].tolist() == issuers
    assert t.idp_count.tolist() == [len(c.identity_providers) for c in req.candidates]
    # Equal lists of identity providers hash equal, different ones (almost surely) not.
    hashes = t.record_hashes(np.arange(t.n), d.T_IDENTITY_PROVIDERS)
    by_hash: dict[int, list] = {}
    for i, c in enumerate(req.candidates):
        by_hash.setdefault(int(hashes[i]), []).append(list(c.identity_providers))
    assert all(all(x == group[0] for x in group) for group in by_hash.values())
    assert len(by_hash) == len({str(list(c.identity_providers)) for c in req.candidates})


def test_head_keeps_every_field_but_the_candidates():
    req = random_request(3, n=5)
    req.slas.add(id="s", site_id="a").targets["x"] = 1.0
    req.options.seed = 9
    req.deployment_id = "d"
    t = CandidateTable(req.SerializeToString())
    head = pb.RankRequest.FromString(t.head_bytes())
    expected = pb.RankRequest()
    expected.CopyFrom(req)
    expected.ClearField("candidates")
    assert head == expected


def test_repeated_sub_messages_merge_like_protobuf():
    # A message field sent twice is merged by protobuf parsers; the decoder does the same.
    c = pb.Candidate(site_id="a")
    c.freshness.creation_time.seconds = 100
    c.cost.per_cpu_hour = 1.0
    q = c.quotas.add()
    q.limits.cores = 4
    extra = pb.Candidate()
    extra.freshness.stale = True
    extra.cost.per_gpu_hour = 2.0
    extra.quotas.add().limits.gpus = 1
    raw = pb.RankRequest(candidates=[c]).SerializeToString()
    # Append the extra fields inside the candidate: re-frame candidate 0 with both parts.
    body = c.SerializeToString() + extra.SerializeToString()
    raw = b"\x2a" + bytes([len(body)]) + body
    merged = pb.RankRequest.FromString(raw).candidates[0]
    t = CandidateTable(raw)
    created, _valid, stale = t.freshness
    assert created[0] == merged.freshness.creation_time.seconds == 100
    assert stale[0] and merged.freshness.stale
    assert t.cost(np.array([0]))[0, :2].tolist() == [1.0, 2.0]
    limits, _usage = t.quota
    assert limits[0, 1] == 4  # the first quota published counts (no tenant asked)
    assert t.rows[0] == merged


def test_encoded_answer_matches_protobuf(ranker, mk):
    req = random_request(9, n=60)
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
        assert wire.utf8_array_ok(buf) == valid, raw


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
