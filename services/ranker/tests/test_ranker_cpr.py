"""Golden compatibility with CloudProviderRanker's own published example (v0.7.0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hdc_ranker import cpr
from hdc_ranker.service import build
from hdc_ranker.settings import RankerSettings
from starlette.testclient import TestClient

DATA = Path(__file__).parent / "data" / "cloudproviderranker"
REQUEST = (DATA / "cpr-request.json").read_text()
RESPONSE = (DATA / "cpr-response.json").read_text().strip()


def test_golden_byte_for_byte():
    assert cpr.to_json(cpr.rank(json.loads(REQUEST)), error_reason=False) == RESPONSE


def test_golden_over_http_with_error_reason(tmp_path, gateway):
    # As the INDIGO orchestrator calls it: through the gateway, which adds X-HDC-Identity.
    settings = RankerSettings(data_dir=tmp_path, grpc_port=0, identity_public_key=gateway.public)
    with TestClient(build(settings).asgi_app, headers=gateway.headers()) as http:
        r = http.post("/rank", content=REQUEST, headers={"content-type": "application/json"})
    assert r.status_code == 200
    ours, theirs = r.json(), json.loads(RESPONSE)
    assert [{k: v for k, v in o.items() if k != "error_reason"} for o in ours] == theirs
    reasons = {o["service_id"]: o["error_reason"] for o in ours}
    assert reasons["eaa07cfcceb85cd11b8adacf35008587"] == (
        "no SLA for this service (it is only in the monitoring data)"
    )
    assert reasons["eaa07cfcceb85cd11b8adacf350022ce"] is None
    # the number formatting is the original's too
    assert '"total_score":227.16348' in r.text and '"sla_weight":null' in r.text


def test_sla_score_hand_computed():
    # IFCA-LCG2 in the example: public_ip 10+10+1+3 = 24, computing_time (20+5+10+10+5)*0.0166
    targets = [
        {
            "type": "public_ip",
            "restrictions": {
                "total_guaranteed": 10,
                "user_guaranteed": 1,
                "user_limit": 3,
                "total_limit": 10,
            },
        },
        {
            "type": "computing_time",
            "restrictions": {
                "total_guaranteed": 20,
                "instance_limit": 5,
                "user_guaranteed": 10,
                "user_limit": 10,
                "total_limit": 5,
            },
        },
    ]
    assert cpr.java_float(cpr.sla_score(targets)) == "24.83"
    # an unknown target type keeps the scale of the one before it
    assert float(
        cpr.sla_score(
            [
                {"type": "computing_time", "restrictions": {"total_limit": 100}},
                {"type": "x", "restrictions": {"total_limit": 100}},
            ]
        )
    ) == pytest.approx(3.32)


def test_metrics_score_rules():
    m = {
        "create_result": 1,
        "create_responseTime": 50,
        "run_result": 1,
        "run_responseTime": 100,
        "delete_result": 0,
        "delete_responseTime": 10,
    }
    assert float(cpr.metrics_score("org.openstack.nova", m)) == pytest.approx(2 + 1)
    assert cpr.metrics_score("IaaS", m) is None
    mesos = {
        "master.cpu_total": 10,
        "master.cpu_used": 4,
        "master.mem_total": 4096,
        "master.mem_used": 2048,
    }
    assert float(cpr.metrics_score("eu.indigo-datacloud.mesos", mesos)) == 6 + 2


def test_parent_score_added_and_ranks():
    doc = {
        "preferences": [
            {
                "service_type": "compute",
                "priority": [
                    {"sla_id": "s1", "service_id": "child", "weight": 0.5},
                    {"sla_id": "s2", "service_id": "other", "weight": 0.5},
                ],
            }
        ],
        "sla": [
            {
                "id": "s1",
                "provider": "p1",
                "services": [
                    {
                        "service_id": "child",
                        "targets": [{"type": "public_ip", "restrictions": {"total_limit": 2}}],
                    }
                ],
            },
            {
                "id": "s2",
                "provider": "p2",
                "services": [
                    {
                        "service_id": "other",
                        "targets": [{"type": "public_ip", "restrictions": {"total_limit": 3}}],
                    }
                ],
            },
        ],
        "monitoring": [
            {
                "provider": "p1",
                "services": [
                    {
                        "service_id": "child",
                        "service_parent_id": "parent",
                        "type": "x",
                        "metrics": [],
                    },
                    {
                        "service_id": "parent",
                        "type": "eu.indigo-datacloud.mesos",
                        "metrics": [
                            {"metricName": "master.cpu_total", "metricValue": 8},
                            {"metricName": "master.cpu_used", "metricValue": 6},
                        ],
                    },
                ],
            }
        ],
    }
    out = json.loads(cpr.to_json(cpr.rank(doc)))
    by_id = {o["service_id"]: o for o in out}
    assert by_id["child"]["total_score"] == 4.0  # 2 + parent's 2 free CPUs
    assert by_id["child"]["rank"] == 1 and by_id["other"]["rank"] == 2
    assert by_id["parent"]["rank"] == -1 and out[-1]["service_id"] == "child"  # best last


def test_java_float_and_hashmap_order():
    assert cpr.java_float(np.float32(0.1)) == "0.1"
    assert cpr.java_float(1e7) == "1.0E7"
    assert cpr.java_float(0.0001) == "1.0E-4"
    assert cpr.java_float(241.892) == "241.892"
    assert cpr.java_string_hash("hello") == 99162322
    # "Aa" and "BB" collide in Java: insertion order decides within the bucket
    assert cpr.java_hashmap_order(["BB", "Aa"]) == ["BB", "Aa"]
    assert cpr.java_hashmap_order(["Aa", "BB"]) == ["Aa", "BB"]
