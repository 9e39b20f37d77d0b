"""GET /deployments/{id} answered on the event loop (hdc_orchestrator.loop_reads): the same
answer as the thread-pool reads give, the same visibility, and it survives the database
dropping its connections. A real orchestrator process on the real PostgreSQL and RabbitMQ;
placement from the gRPC TEST DOUBLES of the infoprovider and ranker contracts."""

from __future__ import annotations

import httpx
import pytest
from orch_doubles import TEMPLATE, OrchestratorProcess, Site, free_port, orchestrator_env, user

from tests.real_components import on_admin_database

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


def _terminate_connections(database: str) -> int:
    """What a database restart does to every client: their connections die."""
    (killed,) = on_admin_database(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = :db AND pid <> pg_backend_pid()",
        db=database,
    )
    return len(killed)


def test_get_one_on_the_loop(postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path) -> None:
    grpc_doubles.set_sites([Site("site-a", 0.9)])
    env = orchestrator_env(
        database_url=postgres_url,
        bus_url=rabbitmq_url,
        grpc_target=grpc_doubles.target,
        port=free_port(),
        public_key=signer.public,
        data_dir=tmp_path,
        role="api",  # no workers: the deployment stays as created while it is compared
    )
    orch = OrchestratorProcess(env, tmp_path / "orch.log")
    alice = httpx.Client(base_url=orch.url, headers=signer.headers(user("alice")), timeout=30)
    mallory = httpx.Client(base_url=orch.url, headers=signer.headers(user("mallory")), timeout=30)
    try:
        orch.start()
        created = alice.post("/deployments", json={"template": TEMPLATE})
        assert created.status_code == 201, created.text
        uuid = created.json()["uuid"]

        one = alice.get(f"/deployments/{uuid}")
        assert one.status_code == 200, one.text
        assert one.headers["ETag"] == created.headers["ETag"]
        # The list is served by the thread-pool reads and the same renderer: the loop's row
        # (types processed: timestamps, JSON, sealed secrets) must render identically.
        listed = alice.get("/deployments", params={"createdBy": "me"}).json()["content"]
        assert listed == [one.json()]

        # Someone else's deployment does not exist for them; an unknown id is a 404 too.
        assert mallory.get(f"/deployments/{uuid}").status_code == 404
        missing = alice.get("/deployments/00000000-0000-4000-8000-000000000000")
        assert missing.status_code == 404
        assert "doesn't exist" in missing.json()["message"]

        # The database drops every connection (a restart): the next read still answers.
        assert _terminate_connections(postgres_url.rsplit("/", 1)[1]) > 0
        again = alice.get(f"/deployments/{uuid}")
        assert again.status_code == 200, again.text
        assert again.json()["uuid"] == uuid
    finally:
        alice.close()
        mallory.close()
        orch.stop()
