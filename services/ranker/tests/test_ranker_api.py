"""The real gRPC server and REST app: answers, explanations, and bad input (never a crash)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc.ranker.v1 import ranker_pb2_grpc
from hdc_common.grpc import create_server, insecure_channel
from hdc_common.identity import GRPC_METADATA_KEY, HEADER, Identity, InternalTokenSigner
from hdc_common.identity import generate_keypair as new_keys
from hdc_ranker.grpc_api import TIMING_METADATA_KEY, servicer_entry
from hdc_ranker.service import build
from hdc_ranker.settings import RankerSettings
from starlette.testclient import TestClient


@pytest.fixture
def server(ranker, gateway) -> Iterator[object]:
    server = create_server(0, [servicer_entry(ranker, gateway.verifier())])
    server.start()
    try:
        yield server
    finally:
        server.stop(0)


@pytest.fixture
def stub(server, gateway) -> Iterator[ranker_pb2_grpc.RankerStub]:
    # The orchestrator's way: hdc_common's channel adds the signed identity to every call.
    channel = insecure_channel(f"127.0.0.1:{server.port}", identity_token=gateway.token)
    try:
        yield ranker_pb2_grpc.RankerStub(channel)
    finally:
        channel.close()


@pytest.fixture
def app(tmp_path: Path, gateway) -> object:
    settings = RankerSettings(data_dir=tmp_path, grpc_port=0, identity_public_key=gateway.public)
    return build(settings).asgi_app


@pytest.fixture
def http(app, gateway) -> Iterator[TestClient]:
    with TestClient(app, headers=gateway.headers()) as client:
        yield client


def test_grpc_rank_lists_every_candidate(stub, mk):
    req = mk.request(
        mk.candidate("a", quota={"cores": (100, 0)}),
        mk.candidate("b", quota={"cores": (100, 90)}),
        mk.candidate("c", status=pb.STATUS_DOWN),
        requirements=pb.Requirements(cpus=2),
    )
    resp, call = stub.Rank.with_call(req, timeout=10)
    assert [(r.site_id, r.rank) for r in resp.results] == [("a", 1), ("b", 2), ("c", -1)]
    assert resp.summary == "2/3 providers: 1 site down"
    assert resp.ranked_count == 2 and resp.total_count == 3
    assert dict(resp.rejection_counts) == {"SITE_DOWN": 1}
    assert list(resp.criteria) == ["sla", "preference", "monitoring", "headroom", "history", "cost"]
    best = resp.results[0]
    assert best.flavor_id == "m1" and len(best.criterion_scores) == 6
    assert 0 <= best.total_score <= 1
    assert resp.results[2].rejections[0].code == "SITE_DOWN"
    assert resp.results[2].rejections[0].filter == "health"
    assert resp.server_time_ms > 0
    trailing = dict(call.trailing_metadata())
    assert float(trailing[TIMING_METADATA_KEY]) > 0


def test_grpc_garbage_bytes_are_invalid_argument(server, gateway):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary("/hdc.ranker.v1.Ranker/Rank")  # raw bytes both ways
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x2a\xff\xff\xff\x0f garbage", timeout=10, metadata=gateway.metadata())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid RankRequest" in err.value.details()


def _forged_token() -> str:
    """Well-formed, but signed by a key the ranker does not trust (not the gateway's)."""
    private, _ = new_keys()
    return InternalTokenSigner(private).sign(Identity(subject="mallory", issuer="https://x/"))


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ((), "call this service through the hdc gateway"),
        (lambda: ((GRPC_METADATA_KEY, _forged_token()),), "invalid X-HDC-Identity"),
        (((GRPC_METADATA_KEY, "not-a-jwt"),), "invalid X-HDC-Identity"),
    ],
    ids=["missing", "forged", "garbage"],
)
def test_grpc_without_gateway_identity_is_unauthenticated(server, mk, metadata, detail):
    metadata = metadata() if callable(metadata) else metadata
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(mk.request(mk.candidate("a")), timeout=10, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert detail in err.value.details()


def test_grpc_refused_when_no_signer_is_trusted(ranker, gateway, mk):
    from hdc_common.identity import InternalTokenVerifier

    server = create_server(0, [servicer_entry(ranker, InternalTokenVerifier(""))])
    server.start()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            pytest.raises(grpc.RpcError) as err,
        ):
            ranker_pb2_grpc.RankerStub(channel).Rank(
                mk.request(), timeout=10, metadata=gateway.metadata()
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "trusts no identity signer" in err.value.details()
    finally:
        server.stop(0)


@pytest.mark.parametrize("path", ["/rank", "/v1/rank"])
@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "call this service through the hdc gateway"),
        (lambda: {HEADER: _forged_token()}, "invalid X-HDC-Identity"),
    ],
    ids=["missing", "forged"],
)
def test_rest_without_gateway_identity_is_401(app, path, headers, detail):
    headers = headers() if callable(headers) else headers
    with TestClient(app) as bare:
        # A body that would be a 400: refused as unauthenticated before it is even read.
        r = bare.post(path, content="[]", headers={"content-type": "application/json"} | headers)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert detail in r.json()["detail"]
        # Probes, metrics and the API description stay open.
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert bare.get(open_path).status_code == 200, open_path


def test_grpc_empty_candidate_list(stub):
    resp = stub.Rank(pb.RankRequest(), timeout=10)
    assert len(resp.results) == 0
    assert resp.summary == "0/0 providers: no candidates given"


def test_infoprovider_candidates_convert_by_bytes(stub, mk):
    from hdc.infoprovider.v1 import infoprovider_pb2 as ip

    src = ip.Candidate(
        site_id="a", service_id="a/nova", service_type="org.openstack.nova", status=ip.STATUS_UP
    )
    src.flavors.add(id="g", cpus=8, ram_mb=16384, gpus=1, gpu_vendor="nvidia")
    q = src.quotas.add(tenant="t")
    q.limits.cores, q.usage.cores = 10, 9
    converted = pb.Candidate.FromString(src.SerializeToString())
    reqs = ip.Requirements(cpus=2, gpu=ip.GpuRequirement(count=1), tenant="t", instances=1)
    req = mk.request(converted)
    req.requirements.CopyFrom(pb.Requirements.FromString(reqs.SerializeToString()))
    resp = stub.Rank(req, timeout=10)
    # the chosen GPU flavor has 8 cores, only 1 free
    assert resp.results[0].rejections[0].message == "quota exceeded (cores: needs 8, free 1 of 10)"


def _bad_requests(mk) -> list[tuple[str, pb.RankRequest, str]]:
    cases = []
    r = mk.request(mk.candidate("a"))
    r.candidates[0].site_id = ""
    cases.append(("missing site id", r, "candidates[0].site_id is required"))
    r = mk.request(
        mk.candidate("a"),
        monitoring=[pb.Monitoring(site_id="a", probes=[pb.Probe(success_rate=math.nan)])],
    )
    cases.append(
        (
            "NaN metric",
            r,
            "monitoring[0].probes[0].success_rate must be a number in [0, 1], got nan",
        )
    )
    r = mk.request(
        mk.candidate("a"),
        monitoring=[pb.Monitoring(site_id="a", probes=[pb.Probe(response_time_ms=-5)])],
    )
    cases.append(("negative metric", r, "response_time_ms must be a finite number >= 0, got -5.0"))
    r = mk.request(
        mk.candidate("a"),
        monitoring=[pb.Monitoring(site_id="a", probes=[pb.Probe(success_rate=1.5)])],
    )
    cases.append(("rate above 1", r, "success_rate must be a number in [0, 1], got 1.5"))
    r = mk.request(mk.candidate("a"), preferences=[pb.Preference(site_id="a", weight=-1)])
    cases.append(("negative preference", r, "preferences[0].weight must be a finite number >= 0"))
    r = mk.request(mk.candidate("a"), weights={"speed": 1})
    cases.append(("unknown criterion", r, "options.weights: unknown criteria ['speed']"))
    r = mk.request(mk.candidate("a"), scorers=["speed"])
    cases.append(("unknown scorer", r, "options.scorers: unknown ['speed']"))
    r = mk.request(mk.candidate("a"), filters=["gpu-ish"])
    cases.append(("unknown filter", r, "options.filters: unknown ['gpu-ish']"))
    r = mk.request(mk.candidate("a"), weights={"cost": math.nan})
    cases.append(("NaN weight", r, "options.weights['cost'] must be a finite number >= 0"))
    r = mk.request(mk.candidate("a", quota={"cores": (-5, 0)}))
    cases.append(("negative quota", r, "candidates[0].quotas: cores limit -5"))
    r = mk.request(mk.candidate("a", cost_per_hour=math.nan))
    cases.append(
        ("NaN cost", r, "candidates[0].cost_per_hour must be a finite number >= 0, got nan")
    )
    r = mk.request(mk.candidate("a"), slas=[pb.Sla(id="x", site_id="a", targets={"public_ip": -1})])
    cases.append(
        ("negative SLA target", r, "slas[0].targets['public_ip'] must be a finite number >= 0")
    )
    return cases


def test_grpc_bad_input_is_invalid_argument(stub, mk):
    for name, req, message in _bad_requests(mk):
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert message in err.value.details(), (name, err.value.details())


def test_rest_v1_bad_input_is_400(http, mk):
    from google.protobuf import json_format

    for name, req, message in _bad_requests(mk):
        body = json_format.MessageToDict(req, preserving_proto_field_name=True)
        r = http.post(
            "/v1/rank", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, name
        assert r.headers["content-type"].startswith("application/problem+json")
        assert message in r.json()["detail"], (name, r.json())


def test_rest_v1_rank(http, mk):
    from google.protobuf import json_format

    req = mk.request(mk.candidate("a"), mk.candidate("b", status=pb.STATUS_DOWN))
    r = http.post("/v1/rank", json=json_format.MessageToDict(req))
    assert r.status_code == 200
    body = r.json()
    assert body["summary"] == "1/2 providers: 1 site down"
    assert [(x["site_id"], x["rank"]) for x in body["results"]] == [("a", 1), ("b", -1)]
    assert r.status_code == 200 and http.post("/v1/rank", json={}).json()["total_count"] == 0
    metrics = http.get("/metrics").text
    assert 'hdc_ranker_rank_seconds_count{api="rest"}' in metrics
    assert 'hdc_ranker_rejections_total{code="SITE_DOWN"}' in metrics


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ("[]", 400, "is not of type 'object'"),
        ("not json", 400, ""),
        (
            '{"sla": [{"id": "s", "services": [{"service_id": "x", "targets": [{"restrictions": {"total_limit": -3}}]}]}]}',
            400,
            "less than the minimum",
        ),
        (
            '{"monitoring": [{"provider": "p", "services": [{"service_id": "a", "metrics": [{"metricName": "run_result", "metricValue": NaN}]}]}]}',
            400,
            "metricValue must be a finite number >= 0, got nan",
        ),
        ('{"preferences": [{"priority": [{"sla_id": "s"}]}]}', 400, "service_id"),
    ],
)
def test_rest_cpr_bad_input(http, body, status, detail):
    r = http.post("/rank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert detail in r.json().get("detail", "")


def test_rest_cpr_unknown_sla_is_explained_not_a_crash(http):
    doc = {
        "preferences": [
            {
                "service_type": "compute",
                "priority": [{"sla_id": "nope", "service_id": "x", "weight": 1}],
            }
        ],
        "sla": [],
        "monitoring": [],
    }
    r = http.post("/rank", json=doc)
    assert r.status_code == 200
    assert r.json() == [
        {
            "provider": None,
            "rank": -1,
            "ranked": False,
            "service_id": "x",
            "sla_weight": 1.0,
            "total_score": 0.0,
            "error_reason": "sla_id nope of preferences[0].priority[0] is not in the request's sla list",
        }
    ]
    assert http.post("/rank", json={}).json() == []
