"""The orchestrator with the REAL im (`hdc-im`, its dummy libcloud driver), both real
processes on the real PostgreSQL and RabbitMQ: the AMQP contract between them end to end.
Placement still comes from the gRPC test doubles (orch_doubles.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
import hdc_im  # noqa: F401, E402 - the real im must be installed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def real_im(postgres_url, rabbitmq_url, tmp_path):
    config = tmp_path / "im.yaml"
    config.write_text(
        json.dumps(
            {
                "sites": {"site-a": {"type": "dummy"}},
                "tosca_types_files": [str(ROOT / "tosca-templates/indigo/custom_types.yaml")],
            }
        )
    )
    port = free_port()
    env = os.environ | {
        "HDC_IM_DATABASE_URL": postgres_url,
        "HDC_IM_BUS_URL": rabbitmq_url,
        "HDC_IM_HTTP_PORT": str(port),
        "HDC_IM_DATA_DIR": str(tmp_path / "im"),
        "HDC_IM_CONFIG": str(config),
        "HDC_IM_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "im.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hdc_im"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )

    def wait_ready() -> None:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "hdc-im did not start: " + log.read_text()[-3000:]
            time.sleep(0.2)

    try:
        yield wait_ready  # the test starts the orchestrator meanwhile, then waits for both
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_create_and_delete_through_the_real_im(
    real_im, postgres_url, rabbitmq_url, grpc_doubles, signer, tmp_path
) -> None:
    import uuid as uuidlib

    import sqlalchemy as sa

    grpc_doubles.set_sites([Site("site-a", 0.9)])
    # The orchestrator's own database, next to the im's on the same server.
    name = f"orch_{uuidlib.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    orch_db = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    env = orchestrator_env(
        database_url=orch_db,
        bus_url=rabbitmq_url,
        grpc_target=grpc_doubles.target,
        port=free_port(),
        public_key=signer.public,
        data_dir=tmp_path,
    )
    orch = OrchestratorProcess(env, tmp_path / "orch.log").launch()
    real_im()  # the im is ready
    orch.wait_ready()
    h = signer.headers(user("e2e"))
    try:
        r = httpx.post(
            f"{orch.url}/deployments", json={"template": TEMPLATE}, headers=h, timeout=30
        )
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        d = wait_for(
            lambda: (
                (j := httpx.get(f"{orch.url}/deployments/{uuid}", headers=h, timeout=10).json())[
                    "status"
                ]
                != "CREATE_IN_PROGRESS"
                and j
            ),
            60,
            what="the real im to configure the infrastructure",
        )
        assert d["status"] == "CREATE_COMPLETE", d
        resources = httpx.get(
            f"{orch.url}/deployments/{uuid}/resources", headers=h, timeout=10
        ).json()
        server = next(x for x in resources["content"] if x["toscaNodeName"] == "server")
        assert server["physicalId"]  # the dummy driver's node id, reported by the im
        assert (
            httpx.delete(f"{orch.url}/deployments/{uuid}", headers=h, timeout=10).status_code == 204
        )
        wait_for(
            lambda: (
                httpx.get(f"{orch.url}/deployments/{uuid}", headers=h, timeout=10).status_code
                == 404
            ),
            60,
            what="the real im to confirm the delete",
        )
        vanished_then_deleted(orch.url, h, rabbitmq_url)
    finally:
        orch.stop()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def vanished_then_deleted(url: str, h: dict[str, str], bus_url: str) -> None:
    """An infrastructure the real im removes on someone else's request (here a command sent
    straight to the im, as an operator's tool would) leaves its deployment UNKNOWN; a
    DELETE then removes the deployment without anything left to delete at the site."""
    from hdc_common.bus import COMMANDS, Bus

    r = httpx.post(f"{url}/deployments", json={"template": TEMPLATE}, headers=h, timeout=30)
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]

    def status() -> dict:
        return httpx.get(f"{url}/deployments/{uuid}", headers=h, timeout=10).json()

    d = wait_for(lambda: (j := status())["status"] == "CREATE_COMPLETE" and j, 60)
    operator = Bus(bus_url, service="operator")
    try:
        command = operator.new_event(
            "im.infrastructure.delete", {"infrastructure_id": d["physicalId"]}
        )
        operator.publish(command, COMMANDS, "im")
    finally:
        operator.stop()
    lost = wait_for(
        lambda: (j := status())["status"] == "UNKNOWN" and j,
        60,
        what="the orchestrator to learn that the infrastructure is gone",
    )
    assert "no longer exists" in lost["statusReason"]
    assert httpx.delete(f"{url}/deployments/{uuid}", headers=h, timeout=10).status_code == 204
    assert httpx.get(f"{url}/deployments/{uuid}", headers=h, timeout=10).status_code == 404
