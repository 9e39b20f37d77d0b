"""Deployment history: orchestrator events on the real bus -> the ranker's DB -> the score."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from hdc.ranker.v1 import ranker_pb2_grpc
from hdc_common.bus import Bus, CloudEvent
from hdc_common.grpc import create_server, insecure_channel
from hdc_ranker.history import DeploymentOutcome, outcome_from_event
from hdc_ranker.service import build
from hdc_ranker.settings import RankerSettings

EVENTS = [
    (
        "orchestrator.deployment.created",
        {"uuid": "d1", "status": "CREATE_COMPLETE", "cloudProviderName": "a"},
    ),
    (
        "orchestrator.deployment.created",
        {"uuid": "d2", "status": "CREATE_COMPLETE", "cloudProviderName": "a"},
    ),
    (
        "orchestrator.deployment.updated",
        {"uuid": "d3", "status": "CREATE_COMPLETE", "cloudProviderName": "a"},
    ),
    (
        "orchestrator.deployment.failed",
        {"uuid": "d4", "status": "CREATE_FAILED", "cloudProviderName": "b"},
    ),
    # fail-over: d4 retried on a, where it worked: one outcome per (deployment, site)
    (
        "orchestrator.deployment.updated",
        {"uuid": "d4", "status": "CREATE_COMPLETE", "cloudProviderName": "a"},
    ),
    ("orchestrator.deployment.failed", {"uuid": "d5", "status": "CREATE_FAILED", "site_id": "b"}),
    # not terminal / not about a site: ignored
    (
        "orchestrator.deployment.updated",
        {"uuid": "d6", "status": "CREATE_IN_PROGRESS", "cloudProviderName": "c"},
    ),
    (
        "orchestrator.deployment.deleted",
        {"uuid": "d1", "status": "DELETE_COMPLETE", "cloudProviderName": "a"},
    ),
]


def test_outcome_from_event():
    assert outcome_from_event(
        {"uuid": "u", "status": "CREATE_COMPLETE", "cloudProviderName": "s"}
    ) == ("u", "s", True, "CREATE_COMPLETE")
    assert outcome_from_event({"uuid": "u", "status": "CREATE_FAILED", "site_id": "s"}) == (
        "u",
        "s",
        False,
        "CREATE_FAILED",
    )
    assert outcome_from_event({"uuid": "u", "status": "UPDATE_COMPLETE", "site_id": "s"}) is None
    assert outcome_from_event({"status": "CREATE_FAILED", "site_id": "s"}) is None  # no uuid
    assert outcome_from_event({"uuid": "u", "status": "CREATE_FAILED"}) is None  # no site


@contextmanager
def _run(settings: RankerSettings, gateway) -> Iterator[tuple[ranker_pb2_grpc.RankerStub, object]]:
    comps = build(settings.model_copy(update={"identity_public_key": gateway.public}))
    for bg in comps.background:
        bg.start()
    server = create_server(0, comps.grpc_servicers)
    server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}", identity_token=gateway.token)
    try:
        yield ranker_pb2_grpc.RankerStub(channel), comps
    finally:
        channel.close()
        server.stop(0)
        for bg in comps.background:
            bg.stop()


def _learn_and_rank(stub, bus_url: str, database_url: str, mk) -> None:
    sender = Bus(bus_url, service="orchestrator")
    try:
        for event_type, data in EVENTS:
            event = CloudEvent.create(
                event_type, data, source="/hdc/orchestrator", subject=data["uuid"]
            )
            sender.publish(event)
            if data["uuid"] == "d2":
                sender.publish(event)  # a redelivered duplicate changes nothing
    finally:
        sender.stop()
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    deadline = time.monotonic() + 30
    rows: list = []
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    DeploymentOutcome.deployment_uuid,
                    DeploymentOutcome.site_id,
                    DeploymentOutcome.succeeded,
                ).order_by(DeploymentOutcome.deployment_uuid, DeploymentOutcome.site_id)
            ).all()
        if len(rows) == 6:
            break
        time.sleep(0.1)
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("d1", "a", True),
        ("d2", "a", True),
        ("d3", "a", True),
        ("d4", "a", True),
        ("d4", "b", False),
        ("d5", "b", False),
    ]
    req = mk.request(mk.candidate("a"), mk.candidate("b"), mk.candidate("c"), scorers=["history"])
    resp = stub.Rank(req, timeout=10)
    # a: (4+1)/(4+2), b: (0+1)/(2+2), c: no history, prior 1/2
    assert [(r.site_id, r.rank) for r in resp.results] == [("a", 1), ("c", 2), ("b", 3)]
    assert resp.results[1].criterion_scores[0] == pytest.approx((0.5 - 0.25) / (5 / 6 - 0.25))


def test_history_over_embedded_bus(tmp_path: Path, mk, gateway):
    bus_url = f"memory:///ranker-{uuid.uuid4().hex[:8]}"
    settings = RankerSettings(data_dir=tmp_path, bus_url=bus_url, grpc_port=0)
    with _run(settings, gateway) as (stub, _):
        _learn_and_rank(stub, bus_url, settings.resolved_database_url(), mk)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_history_over_rabbitmq_and_postgres(
    tmp_path: Path, rabbitmq_url, postgres_url, mk, gateway
):
    settings = RankerSettings(
        data_dir=tmp_path, bus_url=rabbitmq_url, database_url=postgres_url, grpc_port=0
    )
    with _run(settings, gateway) as (stub, _):
        _learn_and_rank(stub, rabbitmq_url, postgres_url, mk)
