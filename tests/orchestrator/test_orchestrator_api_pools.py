"""The API's bulkheads: GET handlers have threads (and database connections) of their own,
so reads are answered while every write thread is busy. A real orchestrator process on the
real PostgreSQL and RabbitMQ; the infoprovider is the gRPC TEST DOUBLE of its contract,
made to hang so that writes pile up."""

from __future__ import annotations

import threading

import httpx
import pytest
from orch_doubles import (
    TEMPLATE,
    OrchestratorProcess,
    Site,
    free_port,
    orchestrator_env,
    user,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


def test_reads_are_answered_while_every_write_thread_is_busy(
    postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path
) -> None:
    grpc_doubles.set_sites([Site("site-a", 0.9)])
    env = orchestrator_env(
        database_url=postgres_url,
        bus_url=rabbitmq_url,
        grpc_target=grpc_doubles.target,
        port=free_port(),
        public_key=signer.public,
        data_dir=tmp_path,
        api_write_threads=1,
        grpc_deadline_s=60,
    )
    orch = OrchestratorProcess(env, tmp_path / "orch.log")
    h = signer.headers(user("bulkhead"))
    client = httpx.Client(base_url=orch.url, headers=h, timeout=90)
    info = grpc_doubles.info
    answers: dict[str, int] = {}
    writers: list[threading.Thread] = []

    def post(name: str, query: str = "") -> None:
        r = client.post(f"/deployments{query}", json={"template": TEMPLATE})
        answers[name] = r.status_code

    try:
        orch.start()
        created = client.post("/deployments", json={"template": TEMPLATE})
        assert created.status_code == 201, created.text
        uuid = created.json()["uuid"]
        # Placed (the workers are done asking the registry) before it starts hanging.
        wait_for(lambda: client.get(f"/deployments/{uuid}/placement").json()["placement"], 30)
        calls = info.calls
        info.gate.clear()  # the registry hangs: a dry run holds the one write thread
        writers += [
            threading.Thread(target=post, args=("dry-run", "?dryRun=true")),
            threading.Thread(target=post, args=("queued",)),  # waits for that thread
        ]
        writers[0].start()
        wait_for(lambda: info.calls > calls, 30, what="the dry run to reach the registry")
        writers[1].start()
        for path in (
            f"/deployments/{uuid}",
            "/deployments?createdBy=me",
            f"/deployments/{uuid}/log",
        ):
            r = client.get(path)
            assert r.status_code == 200, r.text
        assert answers == {}  # both writes are still waiting
    finally:
        info.gate.set()
        for t in writers:
            t.join(60)
        client.close()
        orch.stop()
    assert answers == {"dry-run": 200, "queued": 201}
