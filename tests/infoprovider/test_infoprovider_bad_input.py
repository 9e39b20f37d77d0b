"""Bad input is refused with a reason, never a crash: over AMQP (real broker), HTTP and gRPC."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_common.bus import Bus
from hdc_infoprovider import synthetic
from hdc_infoprovider.report import utcnow
from kombu import Connection, Exchange, Producer

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.infoprovider.harness import Registry, registry_settings, wait_for


@pytest.fixture
def op():
    with FakeOIDCProvider() as provider:
        yield provider


def small_report(site: str = "site-0001", **extra) -> dict:
    report = synthetic.site_report(1, utcnow() - timedelta(seconds=1), flavors=3, images=2)
    report["site"]["id"] = site
    report.update(extra)
    return report


@pytest.mark.rabbitmq
def test_amqp_garbage_schema_invalid_oversized_and_forged_reports(
    op, rabbitmq_url, rabbitmq_api, sqlite_url
):
    reg = Registry(
        **registry_settings(
            op,
            {"agent-1": "site-0001"},
            database_url=sqlite_url,
            bus_url=rabbitmq_url,
            max_report_bytes=20_000,
        )  # fmt: skip
    ).start()
    try:
        token = op.issue_token("agent-1")
        bad_unknown = small_report()
        bad_unknown["services"][0]["flavors"][0]["cores"] = 4
        bad_type = small_report()
        bad_type["validity"] = "3600"
        oversized = synthetic.site_report(1, utcnow(), flavors=5, images=200)
        bad_sig = op.issue_token("agent-1")[:-8] + "AAAAAAAA"
        envelopes = [
            "garbage string",
            {"access_token": token, "report": bad_unknown},
            {"access_token": token, "report": bad_type},
            {"access_token": token, "report": oversized},
            {"access_token": bad_sig, "report": small_report()},
            {"access_token": token, "report": small_report(), "extra": 1},
            {"report": small_report()},
        ]
        with Bus(rabbitmq_url, service="bad-agent") as bus:
            for data in envelopes:
                event = bus.new_event("infoprovider.site.report", data)
                bus.publish(event, exchange="hdc.commands", routing_key="infoprovider")
        # Bytes that are not a CloudEvent at all: the bus dead-letters them with the reason.
        with Connection(rabbitmq_url) as conn:
            Producer(conn.channel()).publish(
                b"\x00\xff not json", exchange=Exchange("hdc.commands", type="direct", durable=True),
                routing_key="infoprovider", content_type="application/cloudevents+json",
            )  # fmt: skip
        rejected = wait_for(lambda: len(r := reg.rejected()) == 7 and r, what="7 refusals")
        reasons = [r["reason"] for r in rejected]
        # The registry's report consumers run side by side: refusals land in any order.
        for expected in (
            "report envelope must be a JSON object",
            "services.0.flavors.0.cores: Extra inputs are not permitted",
            "validity: Input should be a valid integer",
            "exceeds the limit of 20000 bytes",
            "Signature verification failed",
            "unknown envelope fields: extra",
            "no access_token",
        ):
            assert sum(expected in r for r in reasons) == 1, (expected, reasons)
        dlq = wait_for(
            lambda: rabbitmq_api.get_messages("infoprovider.commands.dlq"), what="the DLQ"
        )
        assert "InvalidEvent" in dlq[0]["properties"]["headers"]["x-hdc-error"]

        # The registry is still alive and takes a good report.
        with Bus(rabbitmq_url, service="bad-agent") as bus:
            event = bus.new_event(
                "infoprovider.site.report", {"access_token": token, "report": small_report()}
            )
            bus.publish(event, exchange="hdc.commands", routing_key="infoprovider")
        wait_for(lambda: reg.site("site-0001"), what="the good report")
    finally:
        reg.stop()


def test_http_and_grpc_refuse_bad_input_with_a_reason(op, sqlite_url):
    reg = Registry(
        **registry_settings(
            op,
            {"agent-1": "site-0001"},
            database_url=sqlite_url,
            bus_url="memory:///ip-bad-http",
            max_report_bytes=20_000,
        )  # fmt: skip
    ).start()
    try:
        http = reg.http
        auth = {"Authorization": f"Bearer {op.issue_token('agent-1')}"}
        resp = http.post("/v1/reports", json=small_report())
        assert resp.status_code == 400 and "authorization" in resp.text.lower()
        resp = http.post(
            "/v1/reports", json=small_report(), headers={"Authorization": "Bearer nope"}
        )
        assert resp.status_code == 401 and "not a JWT" in resp.json()["detail"]
        resp = http.post(
            "/v1/reports",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert resp.status_code == 400
        resp = http.post("/v1/reports", json=[1, 2], headers=auth)
        assert resp.status_code == 400
        resp = http.post("/v1/reports", json=small_report(bogus=True), headers=auth)
        assert (
            resp.status_code == 400
            and "bogus: Extra inputs are not permitted" in resp.json()["detail"]
        )
        resp = http.post("/v1/reports", json=small_report("site-0002"), headers=auth)
        assert resp.status_code == 403 and "claims site 'site-0002'" in resp.json()["detail"]
        big = synthetic.site_report(1, utcnow(), flavors=5, images=200)
        resp = http.post("/v1/reports", json=big, headers=auth)
        assert resp.status_code == 413
        good = small_report()
        resp = http.post("/v1/reports", json=good, headers=auth)
        assert resp.status_code == 202, resp.text
        assert resp.json()["changes"]["flavors"]["added"] == 3
        resp = http.post("/v1/reports", json=good, headers=auth)
        assert resp.status_code == 409 and "not newer" in resp.json()["detail"]
        assert resp.headers["content-type"] == "application/problem+json"

        assert http.get("/v1/sites/bad.id").status_code == 400
        assert http.get("/v1/sites/nope").status_code == 404
        assert http.get("/v1/services/nodot").status_code == 400
        resp = http.post("/v1/candidates/search", json={"cpus": -1})
        assert resp.status_code == 400
        resp = http.post("/v1/candidates/search", json={"gpus": 1})
        assert resp.status_code == 400 and "gpus" in resp.text
        assert reg.bare_http.get("/v1/rejected-reports").status_code == 401
        resp = http.get("/v1/rejected-reports", headers=reg.operator_headers(roles=("user",)))
        assert resp.status_code == 403
        kept = reg.rejected()
        assert len(kept) == 5 and {r["transport"] for r in kept} == {"http"}

        with pytest.raises(grpc.RpcError) as err:
            reg.stub.GetSite(pb.GetSiteRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            reg.stub.GetSite(pb.GetSiteRequest(site_id="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            reg.find(service_types=[str(i) for i in range(51)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        schema = http.get("/v1/schemas/site-report.json")
        assert schema.status_code == 200 and schema.json()["title"] == "hdc site report"
        assert json.loads(schema.text)["additionalProperties"] is False
    finally:
        reg.stop()
