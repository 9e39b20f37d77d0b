"""Hybrid deployments: the orchestrator with the REAL vrouter controller (its `build()` on the
real PostgreSQL and RabbitMQ, its gRPC API served by hdc_common.grpc.create_server), the im
test double of the AMQP contract and the placement doubles (orch_doubles.py).

What is checked end to end: the overlay and its sites are made over gRPC as the deployment's
owner; the `user_data_extra` the im receives carries, for each router's VM, an enrolment the
vrouter accepts (a fresh WireGuard key enrols through the vrouter's agent REST API); the
overlay id is in outputs and extra info; a failed attempt's overlay is removed; a restarted
orchestrator still removes the overlay when the deployment is deleted.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from orch_doubles import (
    ROOT,
    GrpcDoubles,
    ImDouble,
    Signer,
    Stack,
    drop_db,
    free_port,
    make_db,
    user,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

from hdc_common.grpc import create_server  # noqa: E402
from hdc_vrouter.enrolment import TOKEN_FILE  # noqa: E402 - the real vrouter must be installed
from hdc_vrouter.service import build as build_vrouter  # noqa: E402
from hdc_vrouter.settings import VRouterSettings  # noqa: E402
from hdc_vrouter.wgkeys import generate_keypair as wg_keypair  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

HYBRID = (ROOT / "tosca-templates/vrouter/hybrid_deployment.yaml").read_text()
ALICE = user("alice")
ROUTER_HOSTS = {"hub_server", "site_a_router_server", "site_b_router_server"}


class VRouter:
    """The real vrouter service in this process: REST through a TestClient, gRPC on a port."""

    def __init__(self, bus_url: str, db_url: str, public_key: str, data_dir: Path) -> None:
        self.grpc_port = free_port()
        settings = VRouterSettings(
            database_url=db_url,
            bus_url=bus_url,
            identity_public_key=public_key,
            data_dir=data_dir,
            grpc_port=self.grpc_port,
            public_url="http://vrouter.test:8105",
        )
        self.components = build_vrouter(settings)
        self.grpc = create_server(self.grpc_port, self.components.grpc_servicers)
        self.grpc.start()
        for bg in self.components.background:
            bg.start()
        self.rest = TestClient(self.components.asgi_app, base_url="http://vrouter.test")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self) -> None:
        self.rest.close()
        for bg in reversed(self.components.background):
            bg.stop()
        self.grpc.stop(0)


@pytest.fixture(scope="module")
def vrouter(
    module_bus_url: str, signer: Signer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VRouter]:
    name = make_db()
    from orch_doubles import PG_DSN

    v = VRouter(module_bus_url, f"{PG_DSN}/{name}", signer.public, tmp_path_factory.mktemp("vr"))
    yield v
    v.stop()
    drop_db(name)


def orchestrator_settings(
    module_bus_url: str,
    module_db_url: str,
    signer: Signer,
    grpc_doubles: GrpcDoubles,
    vrouter: VRouter,
    data_dir: Path,
) -> Any:
    from hdc_orchestrator.settings import OrchestratorSettings

    return OrchestratorSettings(
        database_url=module_db_url,
        bus_url=module_bus_url,
        infoprovider_target=grpc_doubles.target,
        ranker_target=grpc_doubles.target,
        vrouter_target=vrouter.target,
        identity_public_key=signer.public,
        identity_private_key=signer.private,
        data_dir=data_dir,
        minute_s=0.5,
        sweep_interval_s=0.2,
        callback_secret="test-callback-secret",
        secret_key="0" * 43 + "=",
    )


@pytest.fixture(scope="module")
def make_stack(
    module_bus_url: str,
    module_db_url: str,
    signer: Signer,
    grpc_doubles: GrpcDoubles,
    im_double: ImDouble,
    vrouter: VRouter,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("orch")
    started: list[Stack] = []

    def stop_all() -> None:
        for s in started:
            if s.components is not None:
                s.stop()
                s.components = None

    def make(**overrides: Any) -> Stack:
        # One orchestrator at a time: they would share the module's queues (as replicas do).
        stop_all()
        settings = orchestrator_settings(
            module_bus_url, module_db_url, signer, grpc_doubles, vrouter, data_dir
        )
        s = Stack(settings.model_copy(update=overrides))
        started.append(s)
        return s

    yield make
    stop_all()


# ---------------------------------------------------------------------- helpers


def create(stack: Stack, signer: Signer, template: str = HYBRID) -> str:
    r = stack.client.post(
        "/deployments", json={"template": template}, headers=signer.headers(ALICE)
    )
    assert r.status_code == 201, r.text
    return r.json()["uuid"]


def settle(stack: Stack, signer: Signer, uuid: str) -> dict[str, Any]:
    def done() -> Any:
        j = stack.client.get(f"/deployments/{uuid}", headers=signer.headers(ALICE)).json()
        return j if not j["status"].endswith("_IN_PROGRESS") else None

    return wait_for(done, 30, what=f"deployment {uuid} to settle")


def delete_and_wait(stack: Stack, signer: Signer, uuid: str) -> None:
    h = signer.headers(ALICE)
    assert stack.client.delete(f"/deployments/{uuid}", headers=h).status_code == 204
    wait_for(
        lambda: stack.client.get(f"/deployments/{uuid}", headers=h).status_code == 404,
        30,
        what=f"deployment {uuid} to be deleted",
    )


def tokens_by_host(script: str) -> dict[str, str]:
    """The enrolment token the script writes on each router host (what the VM would get)."""
    out: dict[str, str] = {}
    branches = re.findall(r"^  ([A-Za-z0-9_.-]+)\)\n(.*?)^    ;;$", script, re.M | re.S)
    for host, body in branches:
        m = re.search(
            rf"^cat > {re.escape(TOKEN_FILE)} <<'(\w+)'\n([A-Za-z0-9_\-]+)\n\1$", body, re.M
        )
        assert m, f"no token file written for {host}:\n{body}"
        out[host] = m.group(2)
    return out


def vrouter_sites(vrouter: VRouter, signer: Signer, overlay_id: str) -> Any:
    return vrouter.rest.get(f"/v1/overlays/{overlay_id}/sites", headers=signer.headers(ALICE))


# ---------------------------------------------------------------------- tests


def test_hybrid_deployment_enrols_its_routers_and_delete_removes_the_overlay(
    make_stack: Any, signer: Signer, im_double: ImDouble, vrouter: VRouter
) -> None:
    stack = make_stack()
    uuid = create(stack, signer)
    d = settle(stack, signer, uuid)
    assert d["status"] == "CREATE_COMPLETE", d
    overlay_id = d["outputs"]["vrouter_overlay_id"]

    # The overlay belongs to the deployment's owner, with the template's address plan.
    r = vrouter.rest.get(f"/v1/overlays/{overlay_id}", headers=signer.headers(ALICE))
    assert r.status_code == 200, r.text
    assert r.json()["cidr"] == "10.200.0.0/16" and r.json()["owner"].startswith("alice")
    sites = {s["name"]: s for s in vrouter_sites(vrouter, signer, overlay_id).json()}
    assert set(sites) == {"hub", "site_a_router", "site_b_router"}
    assert sites["site_a_router"]["private_ranges"] == ["192.168.10.0/24"]
    assert sites["site_b_router"]["nat"] is True
    assert not any(s["enrolled"] for s in sites.values())

    # The im got one fragment for the whole infrastructure: a valid shell script that, on each
    # router's VM (told apart by the node name the im writes), installs that router's agent.
    (extra,) = im_double.user_data_extra_for(uuid)
    assert extra and extra.startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n"], input=extra.encode(), check=False).returncode == 0
    assert "hdc_vrouter.agent" in extra and "http://vrouter.test:8105" in extra
    assert "--endpoint hub.hybrid.example.org:51820" in extra  # only the hub announces one
    tokens = tokens_by_host(extra)
    assert set(tokens) == ROUTER_HOSTS and len(set(tokens.values())) == 3

    # Every token enrols its router with a key generated "at the site"; tokens are single-use.
    for token in tokens.values():
        _, public = wg_keypair()
        r = vrouter.rest.post("/v1/agent/enrol", json={"token": token, "public_key": public})
        assert r.status_code == 201, r.text
        assert r.json()["overlay_id"] == overlay_id
    _, again = wg_keypair()
    r = vrouter.rest.post(
        "/v1/agent/enrol", json={"token": tokens["hub_server"], "public_key": again}
    )
    assert r.status_code == 409, r.text
    sites = {s["name"]: s for s in vrouter_sites(vrouter, signer, overlay_id).json()}
    assert all(s["enrolled"] for s in sites.values()), sites

    # Extra info shows, per router VM, its overlay site and subnet.
    r = stack.client.get(f"/deployments/{uuid}/extrainfo", headers=signer.headers(ALICE))
    infos = {i["node"]: i["vmProperties"] for i in r.json()}
    assert infos["hub_server"]["vrouter_role"] == "hub"
    assert infos["site_a_router_server"]["vrouter_site_id"] == sites["site_a_router"]["id"]
    assert infos["site_b_router_server"]["vrouter_subnet"] == sites["site_b_router"]["subnet"]

    # A restarted orchestrator knows the overlay from its database and removes it on delete.
    stack = make_stack()
    delete_and_wait(stack, signer, uuid)
    r = vrouter.rest.get(f"/v1/overlays/{overlay_id}", headers=signer.headers(ALICE))
    assert r.status_code == 404, r.text


def test_a_failed_attempt_removes_its_overlay_and_the_next_gets_fresh_tokens(
    make_stack: Any, signer: Signer, im_double: ImDouble, vrouter: VRouter
) -> None:
    stack = make_stack()
    im_double.behaviour["site-a"] = "fail"
    try:
        uuid = create(stack, signer)
        d = settle(stack, signer, uuid)
    finally:
        im_double.behaviour.pop("site-a")
    assert d["status"] == "CREATE_COMPLETE", d
    first, second = im_double.user_data_extra_for(uuid)
    assert first and second
    events = stack.client.get(f"/deployments/{uuid}/events", headers=signer.headers(ALICE))
    kinds = [e["kind"] for e in events.json()["events"]]
    assert kinds.count("vrouter.overlay_created") == 2 and "vrouter.overlay_deleted" in kinds

    # The failed attempt's overlay is gone, and with it its tokens.
    _, public = wg_keypair()
    old = tokens_by_host(first)["site_a_router_server"]
    r = vrouter.rest.post("/v1/agent/enrol", json={"token": old, "public_key": public})
    assert r.status_code == 401, r.text
    new = tokens_by_host(second)["site_a_router_server"]
    r = vrouter.rest.post("/v1/agent/enrol", json={"token": new, "public_key": public})
    assert r.status_code == 201, r.text
    assert r.json()["overlay_id"] == d["outputs"]["vrouter_overlay_id"]

    delete_and_wait(stack, signer, uuid)
    r = vrouter.rest.get(
        f"/v1/overlays/{d['outputs']['vrouter_overlay_id']}", headers=signer.headers(ALICE)
    )
    assert r.status_code == 404


def test_a_hybrid_template_the_vrouter_cannot_serve_is_refused(
    make_stack: Any, signer: Signer
) -> None:
    stack = make_stack()
    no_name = HYBRID.replace("dns_name: { get_input: hub_dns_name }", "private_ip: false")
    r = stack.client.post("/deployments", json={"template": no_name}, headers=signer.headers(ALICE))
    assert r.status_code == 400, r.text
    assert "dns_name" in r.json()["message"] and "hub_server" in r.json()["message"]

    # Two VMs for one router would share its single-use token.
    scaled = HYBRID.replace(
        "    site_a_router_server:\n      type: tosca.nodes.indigo.Compute\n      capabilities:\n",
        "    site_a_router_server:\n      type: tosca.nodes.indigo.Compute\n      capabilities:\n"
        "        scalable:\n          properties:\n            count: 2\n",
    )
    assert scaled != HYBRID
    r = stack.client.post("/deployments", json={"template": scaled}, headers=signer.headers(ALICE))
    assert r.status_code == 400, r.text
    assert "site_a_router_server" in r.json()["message"] and "single VM" in r.json()["message"]


def test_an_update_cannot_move_routers_and_a_delete_waits_for_the_overlay(
    make_stack: Any, signer: Signer, vrouter: VRouter
) -> None:
    stack = make_stack()
    uuid = create(stack, signer)
    d = settle(stack, signer, uuid)
    assert d["status"] == "CREATE_COMPLETE", d
    overlay_id = d["outputs"]["vrouter_overlay_id"]
    h = signer.headers(ALICE)

    # Moving site B's router to another VM would leave its enrolled router behind: refused.
    moved = HYBRID.replace("- host: site_b_router_server", "- host: site_a_router_server")
    r = stack.client.put(f"/deployments/{uuid}", json={"template": moved}, headers=h)
    assert r.status_code == 400, r.text  # two routers on one VM: refused before any state check
    dropped = HYBRID.split("    site_b_router:\n")[0] + HYBRID[HYBRID.index("  outputs:") :]
    r = stack.client.put(f"/deployments/{uuid}", json={"template": dropped}, headers=h)
    assert r.status_code == 409, r.text
    assert "vRouter" in r.json()["message"]

    # The vrouter is unreachable while the deployment is deleted: DELETE_FAILED, overlay kept
    # (and remembered); deleting again once it is back removes both.
    stack = make_stack(vrouter_target=f"127.0.0.1:{free_port()}", grpc_deadline_s=1.0)
    assert stack.client.delete(f"/deployments/{uuid}", headers=h).status_code == 204
    failed = settle(stack, signer, uuid)
    assert failed["status"] == "DELETE_FAILED", failed
    assert "overlay could not be removed" in failed["statusReason"], failed["statusReason"]
    assert vrouter.rest.get(f"/v1/overlays/{overlay_id}", headers=h).status_code == 200
    stack = make_stack()
    delete_and_wait(stack, signer, uuid)
    assert vrouter.rest.get(f"/v1/overlays/{overlay_id}", headers=h).status_code == 404


def test_when_the_vrouter_cannot_be_reached_no_router_boots_without_enrolment(
    make_stack: Any, signer: Signer, im_double: ImDouble
) -> None:
    stack = make_stack(vrouter_target=f"127.0.0.1:{free_port()}", grpc_deadline_s=1.0)
    uuid = create(stack, signer)
    d = settle(stack, signer, uuid)
    assert d["status"] == "CREATE_FAILED", d
    assert "vrouter CreateOverlay" in d["statusReason"], d["statusReason"]
    assert im_double.creates_for(uuid) == []  # nothing was sent to the im
