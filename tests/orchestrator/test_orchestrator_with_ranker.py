"""The orchestrator with the REAL ranker service (hdc_ranker, its gRPC server, its database
and its bus consumer), on the real PostgreSQL and RabbitMQ. The infoprovider and the im are
still TEST DOUBLES here (orch_doubles.py): the candidates and the im's answers are scripted.

Checks the cross-service contracts: the ranker's ranking drives placement (with its
criteria and chosen flavor shown by /placement), and the ranker learns per-site outcomes
from the orchestrator's `orchestrator.deployment.*` events, failed attempts included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from orch_doubles import TEMPLATE, Site, Stack, free_port, user, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

import hdc_ranker.service as hdc_ranker  # noqa: E402 - the real ranker must be installed


@pytest.fixture(scope="module")
def ranker(
    module_bus_url: str, signer: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from hdc_common.grpc import create_server
    from hdc_ranker.settings import RankerSettings

    data = tmp_path_factory.mktemp("ranker")
    settings = RankerSettings(
        database_url=f"sqlite:///{data / 'ranker.db'}",
        bus_url=module_bus_url,
        data_dir=data,
        # The ranker trusts only the gateway's key; the orchestrator signs with it.
        identity_public_key=signer.public,
    )
    components = hdc_ranker.build(settings)
    server = create_server(free_port(), components.grpc_servicers)
    server.start()
    for bg in components.background:
        bg.start()
    yield server, settings
    for bg in reversed(components.background):
        bg.stop()
    server.stop()


@pytest.fixture(scope="module")
def stack_with_ranker(
    module_bus_url, module_db_url, signer, grpc_doubles, im_double, ranker, tmp_path_factory
) -> Iterator[Any]:
    from hdc_orchestrator.settings import OrchestratorSettings

    server, _ = ranker
    settings = OrchestratorSettings(
        database_url=module_db_url,
        bus_url=module_bus_url,
        infoprovider_target=grpc_doubles.target,
        ranker_target=f"127.0.0.1:{server.port}",
        identity_public_key=signer.public,
        identity_private_key=signer.private,
        data_dir=tmp_path_factory.mktemp("orch"),
        minute_s=0.5,
        sweep_interval_s=0.2,
        callback_secret="x",
        # The operator's SLA catalogue: group "gold" has one SLA on site-b, and one on site-a
        # that ended in 2020.
        slas=[
            {
                "id": "sla-gold",
                "site_id": "site-b",
                "targets": {"computing_time": 1000},
                "user_groups": ["gold"],
            },
            {
                "id": "sla-expired",
                "site_id": "site-a",
                "end": "2020-01-01T00:00:00Z",
                "user_groups": ["gold"],
            },
        ],
    )
    s = Stack(settings)
    yield s
    s.stop()


def test_real_ranker_places_and_learns_from_events(
    stack_with_ranker, ranker, signer, grpc_doubles, im_double
) -> None:
    grpc_doubles.set_sites([Site("site-a"), Site("site-b")])
    client = stack_with_ranker.client
    h = signer.headers(user("ranked"))
    uuid = client.post("/deployments", json={"template": TEMPLATE}, headers=h).json()["uuid"]
    placement = wait_for(
        lambda: client.get(f"/deployments/{uuid}/placement", headers=h).json()["placement"], 30
    )
    ranked = [c for c in placement["candidates"] if c["rank"] > 0]
    assert {c["siteId"] for c in ranked} == {"site-a", "site-b"}
    assert set(placement["criteria"]) >= {"history"}  # the real ranker's scorers
    assert ranked[0]["flavor"]["name"] == "small"  # the ranker chose the smallest fit
    assert ranked[0]["imageId"] == f"{ranked[0]['siteId']}-img-1"
    first, second = ranked[0]["siteId"], ranked[1]["siteId"]
    done = wait_for(
        lambda: (
            (j := client.get(f"/deployments/{uuid}", headers=h).json())["status"]
            != "CREATE_IN_PROGRESS"
            and j
        ),
        30,
    )
    assert done["status"] == "CREATE_COMPLETE" and done["cloudProviderName"] == first
    # What the im was asked to make: the chosen flavor and the site's image id pinned.
    sent = im_double.creates_for(uuid)[0]["tosca"]
    assert "instance_type: small" in sent and f"image: {first}-img-1" in sent

    # A fail-over: the ranker must learn that one site failed and the other succeeded.
    im_double.behaviour[first] = "fail"
    try:
        uuid2 = client.post("/deployments", json={"template": TEMPLATE}, headers=h).json()["uuid"]
        d2 = wait_for(
            lambda: (
                (j := client.get(f"/deployments/{uuid2}", headers=h).json())["status"]
                != "CREATE_IN_PROGRESS"
                and j
            ),
            30,
        )
    finally:
        im_double.behaviour.clear()
    assert d2["status"] == "CREATE_COMPLETE" and d2["cloudProviderName"] == second
    _, settings = ranker
    engine = sa.create_engine(settings.database_url)

    def outcomes() -> dict[tuple[str, str], bool]:
        with engine.connect() as c:
            rows = c.execute(
                sa.text(
                    "SELECT deployment_uuid, site_id, succeeded FROM ranker_deployment_outcomes"
                )
            ).all()
        return {(u, s): bool(ok) for u, s, ok in rows}

    try:
        got = wait_for(lambda: (o := outcomes()).get((uuid2, second)) is not None and o, 30)
    finally:
        engine.dispose()
    assert got[(uuid, first)] is True
    assert got[(uuid2, first)] is False
    assert got[(uuid2, second)] is True


def sla_template(sla_id: str) -> str:
    policy = (
        "  policies:\n"
        "    - on_my_sla:\n"
        "        type: tosca.policies.indigo.SlaPlacement\n"
        f"        properties: {{sla_id: {sla_id}}}\n"
        "        targets: [server]\n"
    )
    return TEMPLATE.replace("  outputs:\n", policy + "  outputs:\n")


def test_sla_placement_policy_reaches_the_real_ranker(
    stack_with_ranker, signer, grpc_doubles
) -> None:
    """The template's SlaPlacement sla_id and the SLAs of the owner's group go to the ranker,
    whose SLA filter then keeps only the services that SLA covers."""
    grpc_doubles.set_sites([Site("site-a", 0.9), Site("site-b", 0.5)])
    client = stack_with_ranker.client

    def settle(uuid: str, h: dict[str, str]) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (j := client.get(f"/deployments/{uuid}", headers=h).json())["status"]
                != "CREATE_IN_PROGRESS"
                and j
            ),
            30,
        )

    gold = signer.headers(user("gold-member", groups=("gold",)))
    body = {"template": sla_template("sla-gold"), "userGroup": "gold"}
    r = client.post("/deployments", json=body, headers=gold)
    assert r.status_code == 201, r.text
    done = settle(r.json()["uuid"], gold)
    assert done["status"] == "CREATE_COMPLETE" and done["cloudProviderName"] == "site-b"
    shown = client.get(f"/deployments/{done['uuid']}/placement", headers=gold).json()
    assert shown["requirements"]["sla_ids"] == ["sla-gold"]
    by_site = {c["siteId"]: c for c in shown["placement"]["candidates"]}
    assert by_site["site-b"]["rank"] == 1
    assert [x["code"] for x in by_site["site-a"]["discarded"]] == ["NO_SLA"]

    # Outside the group the SLA is not the caller's: no service is covered, nothing qualifies.
    plain = signer.headers(user("not-gold"))
    r = client.post("/deployments", json={"template": sla_template("sla-gold")}, headers=plain)
    failed = settle(r.json()["uuid"], plain)
    assert failed["status"] == "CREATE_FAILED" and "SLA" in failed["statusReason"], failed
    # Nor does an SLA that is no longer in force, or an SLA id the catalogue does not know.
    for sla_id in ("sla-expired", "sla-nope"):
        body = {"template": sla_template(sla_id), "userGroup": "gold"}
        failed = settle(client.post("/deployments", json=body, headers=gold).json()["uuid"], gold)
        assert failed["status"] == "CREATE_FAILED" and "SLA" in failed["statusReason"], failed


def test_ranker_refuses_placement_without_a_signed_identity(ranker, signer, grpc_doubles) -> None:
    """The orchestrator's placement client: unsigned calls are refused, signed ones ranked."""
    import grpc
    from hdc_orchestrator.placement import PlacementClient, PlacementError

    server, _ = ranker
    grpc_doubles.set_sites([Site("site-a")])
    reqs = {"cpus": 1, "ram_mb": 512}
    unsigned = PlacementClient(grpc_doubles.target, f"127.0.0.1:{server.port}", 5.0)
    signed = PlacementClient(
        grpc_doubles.target, f"127.0.0.1:{server.port}", 5.0, private_key_pem=signer.private
    )
    try:
        with pytest.raises(PlacementError) as err:
            unsigned.place(reqs, "d-unsigned", user("someone"))
        assert grpc.StatusCode.UNAUTHENTICATED.name in str(err.value)
        assert "through the hdc gateway" in str(err.value) and not err.value.transient
        placed = signed.place(reqs, "d-signed", user("someone"))
        assert [c["siteId"] for c in placed["candidates"] if c["rank"] > 0] == ["site-a"]
    finally:
        unsigned.close()
        signed.close()
