"""Durability: SIGKILL in the middle of a create, and two replicas sharing the work.

Real orchestrator processes (`hdc-orchestrator`) on the real PostgreSQL and RabbitMQ. The
im is a TEST DOUBLE (orch_doubles.ImDouble, a real consumer of the im's AMQP contract,
scripted by the test) because the real im is built concurrently; the infoprovider and
ranker are gRPC test doubles of their contracts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from orch_doubles import (
    TEMPLATE,
    ImDouble,
    OrchestratorProcess,
    Site,
    count_rows,
    free_port,
    orchestrator_env,
    user,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


@pytest.fixture
def im(rabbitmq_url, tmp_path):
    double = ImDouble(rabbitmq_url, tmp_path / "im.db").start()
    yield double
    double.stop()


def _env(postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path, port):
    return orchestrator_env(
        database_url=postgres_url,
        bus_url=rabbitmq_url,
        grpc_target=grpc_doubles.target,
        port=port,
        public_key=signer.public,
        data_dir=tmp_path,
        callback_secret="s",
    )


def test_sigkill_mid_create_then_restart(
    postgres_url, rabbitmq_url, grpc_doubles, signer, im, tmp_path
) -> None:
    grpc_doubles.set_sites([Site("site-a", 0.9)])
    im.delay_s = 1.5  # the create takes a while: time to kill the orchestrator meanwhile
    env = _env(postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path, free_port())
    orch = OrchestratorProcess(env, tmp_path / "orch.log").start()
    h = signer.headers(user("killme"))
    try:
        r = httpx.post(
            f"{orch.url}/deployments", json={"template": TEMPLATE}, headers=h, timeout=30
        )
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        wait_for(lambda: im.creates_for(uuid), 30, what="the im to receive the create")
        orch.kill()  # SIGKILL while the im is still creating
        wait_for(lambda: im.commands["create"] >= 1, 5)
        orch.start()
        body = wait_for(
            lambda: (
                (j := httpx.get(f"{orch.url}/deployments/{uuid}", headers=h, timeout=10).json())[
                    "status"
                ]
                == "CREATE_COMPLETE"
                and j
            ),
            60,
            what="CREATE_COMPLETE after restart",
        )
        assert body["cloudProviderName"] == "site-a"
        assert len(im.creates_for(uuid)) == 1  # no second create after the restart
        assert len(im.alive_for(uuid)) == 1  # exactly one infrastructure exists
        assert body["physicalId"] == im.alive_for(uuid)[0]
    finally:
        orch.stop()


def test_two_replicas_process_each_deployment_once(
    postgres_url, rabbitmq_url, grpc_doubles, signer, im, tmp_path
) -> None:
    grpc_doubles.set_sites([Site("site-a", 0.9), Site("site-b", 0.5)])
    replicas = [
        OrchestratorProcess(
            _env(postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path, free_port()),
            tmp_path / f"orch{i}.log",
        )
        for i in range(2)
    ]
    h = signer.headers(user("many"))
    try:
        for rep in replicas:
            rep.launch()  # start both at once, then wait: they migrate the same database together
        for rep in replicas:
            rep.wait_ready()

        def submit(i: int) -> str:
            url = replicas[i % 2].url
            r = httpx.post(f"{url}/deployments", json={"template": TEMPLATE}, headers=h, timeout=60)
            assert r.status_code == 201, r.text
            return r.json()["uuid"]

        with ThreadPoolExecutor(8) as pool:
            uuids = list(pool.map(submit, range(100)))
        assert len(set(uuids)) == 100

        def all_done() -> bool:
            page = httpx.get(
                f"{replicas[0].url}/deployments?createdBy=me&size=1000", headers=h, timeout=30
            ).json()
            return sum(d["status"] == "CREATE_COMPLETE" for d in page["content"]) == 100

        wait_for(all_done, 120, interval=0.5, what="100 deployments to complete")
        assert im.commands["create"] == 100
        for uuid in uuids:
            assert len(im.creates_for(uuid)) == 1
        completes = count_rows(
            postgres_url,
            "SELECT count(*) FROM orch_events WHERE kind = 'status' AND status = 'CREATE_COMPLETE'",
        )
        assert completes == 100
        emitted = count_rows(
            postgres_url,
            "SELECT count(*) FROM hdc_bus_outbox WHERE event_type = 'orchestrator.deployment.create_complete'",
        )
        assert emitted == 100
        attempts = count_rows(postgres_url, "SELECT count(*) FROM orch_attempts")
        assert attempts == 100
    finally:
        for rep in replicas:
            rep.stop()


def test_api_and_workers_roles_split_the_orchestrator(
    postgres_url, rabbitmq_url, grpc_doubles, signer, im, tmp_path
) -> None:
    """role=api serves the API and relays what it writes; role=workers runs the workflow.
    Two processes on one database and broker make one orchestrator. Then the API's reads
    outlive the database dropping every connection."""
    from hdc_common.bus import Bus

    grpc_doubles.set_sites([Site("site-a", 0.9)])

    def env(role: str) -> dict[str, str]:
        base = _env(postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path, free_port())
        return base | {"HDC_ORCHESTRATOR_ROLE": role}

    api = OrchestratorProcess(env("api"), tmp_path / "api.log")
    # The workers take the CPU after the API on a shared host (`nice`).
    workers = OrchestratorProcess(
        env("workers") | {"HDC_ORCHESTRATOR_NICE": "10"}, tmp_path / "workers.log"
    )
    probe = Bus(rabbitmq_url, service="probe")
    h = signer.headers(user("split"))
    try:
        api.start()
        r = httpx.post(f"{api.url}/deployments", json={"template": TEMPLATE}, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        # The API process relayed the place command, but nothing there consumes it.
        wait_for(lambda: probe.queue_depth("orchestrator.commands") == 1, 30, what="the relay")
        shown = httpx.get(f"{api.url}/deployments/{uuid}/placement", headers=h, timeout=10)
        assert shown.json()["placement"] is None
        workers.start()
        done = wait_for(
            lambda: (
                (j := httpx.get(f"{api.url}/deployments/{uuid}", headers=h, timeout=10).json())[
                    "status"
                ]
                == "CREATE_COMPLETE"
                and j
            ),
            60,
            what="the workers process to run the workflow",
        )
        assert done["cloudProviderName"] == "site-a"
        assert len(im.creates_for(uuid)) == 1
        assert thread_nices(workers.proc.pid) == {10}  # its consumers and relay included
        assert thread_nices(api.proc.pid) == {0}
        reads_survive_dropped_connections(api.url, h, postgres_url, uuid)
    finally:
        probe.stop()
        workers.stop()
        api.stop()


def thread_nices(pid: int) -> set[int]:
    """The niceness of every thread of a process (field 19 of its tasks' stat)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return {int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in tasks}


def reads_survive_dropped_connections(url: str, h: dict[str, str], db_url: str, uuid: str) -> None:
    """The GET pool skips the pre-ping: a connection the database dropped (a restart, an
    idle timeout) fails the read's own statement, and the read runs again on a fresh one."""
    import sqlalchemy as sa

    for _ in range(5):  # the read pool holds connections now
        assert httpx.get(f"{url}/deployments/{uuid}", headers=h, timeout=10).is_success
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            dropped = c.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": sa.engine.make_url(db_url).database},
            ).scalar()
    finally:
        admin.dispose()
    assert dropped > 0
    for path in (f"/deployments/{uuid}", "/deployments?createdBy=me"):
        r = httpx.get(f"{url}{path}", headers=h, timeout=10)
        assert r.status_code == 200, r.text
