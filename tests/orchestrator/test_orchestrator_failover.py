"""Fail-over across providers, on the real PostgreSQL and RabbitMQ.

The im here is a TEST DOUBLE (orch_doubles.ImDouble): a real consumer of the im's AMQP
contract that the test scripts per site (fail / never answer / succeed), because the real
im is built concurrently. The infoprovider and ranker are gRPC test doubles of their
contracts. Timeouts are in "minutes" of 0.5 s (setting minute_s) so they fire in seconds.
"""

from __future__ import annotations

import json

import pytest
from orch_doubles import TEMPLATE, Site, user, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

SITES = [Site("site-a", 0.9), Site("site-b", 0.7), Site("site-c", 0.5)]


@pytest.fixture(autouse=True)
def _sites(grpc_doubles, im_double) -> None:
    grpc_doubles.set_sites(SITES)
    im_double.behaviour.clear()


def _settle(client, h, uuid: str) -> dict:
    return wait_for(
        lambda: (
            (j := client.get(f"/deployments/{uuid}", headers=h).json())["status"].endswith(
                ("_COMPLETE", "_FAILED")
            )
            and j
        ),
        40,
        what="deployment to settle",
    )


def test_first_fails_second_times_out_third_succeeds(stack, signer, im_double) -> None:
    im_double.behaviour.update({"site-a": "fail", "site-b": "hang", "site-c": "ok"})
    h = signer.headers(user("fo"))
    body = {"template": TEMPLATE, "timeoutMins": 60, "providerTimeoutMins": 2}
    uuid = stack.client.post("/deployments", json=body, headers=h).json()["uuid"]
    d = _settle(stack.client, h, uuid)
    assert d["status"] == "CREATE_COMPLETE", d
    assert d["cloudProviderName"] == "site-c"
    reasons = d["statusReasons"]
    assert [(r["provider"], r["phase"]) for r in reasons] == [
        ("site-a", "create"),
        ("site-b", "provider-timeout"),
    ]
    assert "quota exceeded" in reasons[0]["message"]
    assert "hunter22" not in json.dumps(d)  # the im's error text is redacted
    creates = im_double.creates_for(uuid)
    assert [c["site"]["id"] for c in creates] == ["site-a", "site-b", "site-c"]
    failed_ids = {creates[0]["infrastructure_id"], creates[1]["infrastructure_id"]}
    # Both failed attempts are cleaned up; only the third's infrastructure exists.
    wait_for(lambda: failed_ids <= set(im_double.deletes), 20, what="cleanup of failed attempts")
    assert im_double.alive_for(uuid) == [creates[2]["infrastructure_id"]]
    assert d["physicalId"] == creates[2]["infrastructure_id"]
    attempts = stack.client.get(f"/deployments/{uuid}/placement", headers=h).json()["attempts"]
    assert [a["state"] for a in attempts] == ["FAILED", "TIMED_OUT", "SUCCEEDED"]
    kinds = [
        e["kind"]
        for e in stack.client.get(f"/deployments/{uuid}/events", headers=h).json()["events"]
    ]
    assert kinds.count("attempt.started") == 3
    assert "attempt.failed" in kinds and "attempt.timed_out" in kinds


def test_max_providers_retry_and_keep_last_attempt(stack, signer, im_double) -> None:
    im_double.behaviour.update({"site-a": "fail", "site-b": "fail", "site-c": "ok"})
    h = signer.headers(user("keep"))
    body = {"template": TEMPLATE, "maxProvidersRetry": 2, "keepLastAttempt": True}
    uuid = stack.client.post("/deployments", json=body, headers=h).json()["uuid"]
    d = _settle(stack.client, h, uuid)
    assert d["status"] == "CREATE_FAILED"
    assert "site-a" in d["statusReason"] and "site-b" in d["statusReason"]
    creates = im_double.creates_for(uuid)
    assert [c["site"]["id"] for c in creates] == ["site-a", "site-b"]  # site-c never tried
    wait_for(lambda: creates[0]["infrastructure_id"] in im_double.deletes, 20)
    # keepLastAttempt: the last attempt is left for inspection (not deleted)...
    assert creates[1]["infrastructure_id"] not in im_double.deletes
    # ...until the deployment itself is deleted.
    assert stack.client.delete(f"/deployments/{uuid}", headers=h).status_code == 204
    wait_for(lambda: stack.client.get(f"/deployments/{uuid}", headers=h).status_code == 404, 20)
    assert creates[1]["infrastructure_id"] in im_double.deletes
    assert im_double.alive_for(uuid) == []


def test_overall_timeout(stack, signer, im_double) -> None:
    im_double.behaviour.update({"site-a": "hang", "site-b": "hang", "site-c": "hang"})
    h = signer.headers(user("slow"))
    body = {"template": TEMPLATE, "timeoutMins": 3, "providerTimeoutMins": 2}
    uuid = stack.client.post("/deployments", json=body, headers=h).json()["uuid"]
    d = _settle(stack.client, h, uuid)
    assert d["status"] == "CREATE_FAILED"
    assert "timed out" in d["statusReason"]
    creates = im_double.creates_for(uuid)
    assert 1 <= len(creates) <= 2
    ids = {c["infrastructure_id"] for c in creates}
    wait_for(lambda: ids <= set(im_double.deletes), 20, what="cleanup after timeout")
