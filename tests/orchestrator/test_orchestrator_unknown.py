"""Status UNKNOWN: the orchestrator can no longer tell what exists at the site.

Two ways in, both from the im's AMQP contract: `im.infrastructure.state` with state
`unknown` (the im cannot see the infrastructure, e.g. its site is unreachable), and
`im.infrastructure.deleted` for a running infrastructure nobody here asked to delete (it
vanished). Ways out: a later known state brings the settled status back; DELETE works from
UNKNOWN (and a vanished infrastructure needs no im round trip). The im is the TEST DOUBLE of
orch_doubles.py (a real consumer of the contract on the real RabbitMQ), scripted to report
those facts; test_orchestrator_with_im.py drives the vanished case with the real im.
"""

from __future__ import annotations

from typing import Any

import pytest
from orch_doubles import TEMPLATE, Site, user, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _one_site(grpc_doubles, im_double) -> None:
    grpc_doubles.set_sites([Site("site-a", 0.9)])
    im_double.behaviour.clear()
    im_double.default = "ok"


class Client:
    def __init__(self, stack: Any, headers: dict[str, str]) -> None:
        self.c, self.h = stack.client, headers

    def get(self, path: str) -> Any:
        return self.c.get(path, headers=self.h)

    def deployment(self, uuid: str) -> dict[str, Any]:
        r = self.get(f"/deployments/{uuid}")
        assert r.status_code == 200, r.text
        return r.json()

    def create(self) -> dict[str, Any]:
        r = self.c.post("/deployments", json={"template": TEMPLATE}, headers=self.h)
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        return self.wait_status(uuid, "CREATE_COMPLETE")

    def wait_status(self, uuid: str, status: str) -> dict[str, Any]:
        return wait_for(
            lambda: (d := self.deployment(uuid))["status"] == status and d,
            30,
            what=f"{uuid} to be {status}",
        )

    def event_kinds(self, uuid: str) -> list[str]:
        return [e["kind"] for e in self.get(f"/deployments/{uuid}/events").json()["events"]]


def state(im_double: Any, d: dict[str, Any], value: str, message: str = "") -> None:
    im_double.report(
        "im.infrastructure.state",
        {
            "infrastructure_id": d["physicalId"],
            "deployment_id": d["uuid"],
            "state": value,
            **({"message": message} if message else {}),
        },
    )


def test_unknown_state_then_known_again_restores_the_status(stack, signer, im_double) -> None:
    api = Client(stack, signer.headers(user("lost-and-found")))
    d = api.create()
    state(im_double, d, "unknown", "site-a API unreachable for 10 minutes")
    lost = api.wait_status(d["uuid"], "UNKNOWN")
    assert d["physicalId"] in lost["statusReason"]
    assert "unreachable for 10 minutes" in lost["statusReason"]
    assert "infrastructure.unknown" in api.event_kinds(d["uuid"])
    # Nothing can be changed on an infrastructure nobody can see...
    r = stack.client.put(f"/deployments/{d['uuid']}", json={"template": TEMPLATE}, headers=api.h)
    assert r.status_code == 409 and "UNKNOWN" in r.json()["message"], r.text
    server = next(
        x
        for x in api.get(f"/deployments/{d['uuid']}/resources").json()["content"]
        if x["toscaNodeName"] == "server"
    )
    r = stack.client.post(
        f"/deployments/{d['uuid']}/resources/{server['uuid']}/actions",
        json={"type": "stop"},
        headers=api.h,
    )
    assert r.status_code == 409, r.text
    # ... until the im sees it again: the deployment is what it was.
    state(im_double, d, "running")
    back = api.wait_status(d["uuid"], "CREATE_COMPLETE")
    assert "statusReason" not in back
    kinds = api.event_kinds(d["uuid"])
    assert kinds.index("infrastructure.unknown") < kinds.index("infrastructure.known")


def test_unknown_after_an_update_comes_back_as_update_complete(stack, signer, im_double) -> None:
    api = Client(stack, signer.headers(user("updated-then-lost")))
    d = api.create()
    r = stack.client.put(
        f"/deployments/{d['uuid']}",
        json={"template": TEMPLATE, "parameters": {"num_cpus": 2}},
        headers=api.h,
    )
    assert r.status_code == 202, r.text
    api.wait_status(d["uuid"], "UPDATE_COMPLETE")
    state(im_double, d, "unknown")
    api.wait_status(d["uuid"], "UNKNOWN")
    im_double.report(
        "im.infrastructure.configured",
        {"infrastructure_id": d["physicalId"], "deployment_id": d["uuid"], "vms": []},
    )
    api.wait_status(d["uuid"], "UPDATE_COMPLETE")


def test_delete_works_from_unknown(stack, signer, im_double) -> None:
    api = Client(stack, signer.headers(user("delete-the-unknown")))
    d = api.create()
    state(im_double, d, "unknown", "no answer from the site")
    api.wait_status(d["uuid"], "UNKNOWN")
    r = stack.client.delete(f"/deployments/{d['uuid']}", headers=api.h)
    assert r.status_code == 204, r.text
    # Whatever is left at the site is asked to go, and then the deployment is gone.
    wait_for(lambda: api.get(f"/deployments/{d['uuid']}").status_code == 404, 30)
    assert d["physicalId"] in im_double.deletes
    assert im_double.alive_for(d["uuid"]) == []


def test_an_infrastructure_deleted_behind_our_back_makes_the_deployment_unknown(
    stack, signer, im_double
) -> None:
    api = Client(stack, signer.headers(user("vanished")))
    d = api.create()
    infra = d["physicalId"]
    im_double.forget(infra)  # gone at the site (an operator, the site's own clean-up ...)
    im_double.report("im.infrastructure.deleted", {"infrastructure_id": infra})
    lost = api.wait_status(d["uuid"], "UNKNOWN")
    assert f"{infra} on site-a no longer exists" in lost["statusReason"]
    resources = api.get(f"/deployments/{d['uuid']}/resources").json()["content"]
    assert {x["state"] for x in resources} == {"DELETED"}
    assert "infrastructure.deleted" in api.event_kinds(d["uuid"])
    # A "running" report does not bring back what no longer exists. (The VM report after
    # it is a barrier: it shows in the history once both were handled, in order.)
    state(im_double, d, "running")
    server = next(x for x in resources if x["toscaNodeName"] == "server")
    im_double.report(
        "im.vm.state",
        {"infrastructure_id": infra, "vm_id": server["physicalId"], "state": "deleted"},
    )
    wait_for(lambda: "resource.state" in api.event_kinds(d["uuid"]), 30)
    assert api.deployment(d["uuid"])["status"] == "UNKNOWN"
    # Deleting it needs nothing from the im: nothing is left to remove.
    assert stack.client.delete(f"/deployments/{d['uuid']}", headers=api.h).status_code == 204
    assert api.get(f"/deployments/{d['uuid']}").status_code == 404
    assert infra not in im_double.deletes


def test_state_reports_about_a_creation_in_progress_leave_it_to_its_timeouts(
    stack, signer, im_double
) -> None:
    im_double.default = "hang"  # the im never finishes this one
    api = Client(stack, signer.headers(user("in-flight")))
    r = stack.client.post("/deployments", json={"template": TEMPLATE}, headers=api.h)
    uuid = r.json()["uuid"]
    infra = wait_for(lambda: im_double.creates_for(uuid), 30)[0]["infrastructure_id"]
    im_double.report("im.infrastructure.state", {"infrastructure_id": infra, "state": "unknown"})
    # A later event of the same infrastructure is a barrier: the report was handled first.
    im_double.report(
        "im.infrastructure.progress", {"infrastructure_id": infra, "message": "barrier"}
    )

    def messages() -> list[str]:
        events = api.get(f"/deployments/{uuid}/events").json()["events"]
        return [e.get("message", "") for e in events]

    wait_for(lambda: "barrier" in messages(), 30)
    assert api.deployment(uuid)["status"] == "CREATE_IN_PROGRESS"
    assert "infrastructure.unknown" not in api.event_kinds(uuid)
    assert stack.client.delete(f"/deployments/{uuid}", headers=api.h).status_code == 204
