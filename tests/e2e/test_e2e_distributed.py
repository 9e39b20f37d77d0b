"""The main job in distributed mode: one process per service, the real RabbitMQ (a fresh
vhost) and PostgreSQL (fresh databases), the gateway in front trusting the real Keycloak,
whose users deploy and predict. No service answers a caller that skips the gateway. After
the delete nothing of the deployment is left: no process, no port, no database row, no
broker queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.flow import digit_png, listening, model_url, post_digit, processes_of

HDC = str(Path(sys.executable).with_name("hdc"))
PG_DSN = os.environ.get("HDC_TEST_POSTGRES", "postgresql+psycopg://hdc:hdc@127.0.0.1:5432")
SERVICES = ("gateway", "im", "infoprovider", "orchestrator", "ranker", "vrouter")
REPO = Path(__file__).resolve().parents[2]
KC_URL = os.environ.get("HDC_TEST_KEYCLOAK_URL", "http://127.0.0.1:18080")
ISSUER = f"{KC_URL}/realms/hdc"
# One operation of each service's API, called straight at its port (no gateway).
DIRECT_CALLS = {
    "orchestrator": ("GET", "http://127.0.0.1:8101/deployments"),
    "im": ("GET", "http://127.0.0.1:8102/infrastructures"),
    "infoprovider": ("GET", "http://127.0.0.1:8103/v1/sites"),
    "ranker": ("POST", "http://127.0.0.1:8104/rank"),
    "vrouter": ("GET", "http://127.0.0.1:8105/v1/overlays"),
}


def keycloak_token(username: str) -> str:
    """A user's access token from the real Keycloak (password grant of the CLI's client)."""
    subprocess.run(["bash", str(REPO / "tests/infra/keycloak.sh")], check=True, timeout=420)
    r = httpx.post(
        f"{ISSUER}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "hdc-cli",
            "username": username,
            "password": f"{username}-pass",
            "scope": "openid",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def rows(db_url: str, sql: str, **params: str) -> list:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").partition("=")[::2] for e in raw if b"=" in e)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_main_job_distributed(tmp_path, rabbitmq_url, rabbitmq_api):
    prefix = f"t_{uuidlib.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")}
    alice, bob = keycloak_token("alice"), keycloak_token("bob")
    env |= {
        "HDC_TOKEN": alice,
        "HDC_HOME": str(tmp_path / "home"),
        "HDC_BUS_URL": rabbitmq_url,
        "HDC_POSTGRES_URL": PG_DSN,
        "HDC_DB_PREFIX": prefix,
    }

    def hdc(*args: str) -> dict:
        out = subprocess.run(
            [HDC, *args, "--json"], env=env, capture_output=True, text=True, timeout=180
        )
        assert out.returncode == 0, f"hdc {' '.join(args)}: {out.stderr}{out.stdout}"
        return json.loads(out.stdout)

    up = subprocess.run(
        [HDC, "up", "--distributed", "--trust-issuer", ISSUER],
        env=env,
        capture_output=True,
        text=True,
    )
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        status = hdc("status")
        assert status["running"] and len(status["pids"]) > len(SERVICES)
        # The orchestrator runs as the chart runs it: an API process and its workers, which
        # take the host's CPU after the API (nice 10).
        assert status["services"]["orchestrator-workers"]["health"] == "healthy"
        roles = {
            environ_of(pid).get("HDC_ORCHESTRATOR_ROLE"): os.getpriority(os.PRIO_PROCESS, pid)
            for pid in status["pids"]
            if environ_of(pid).get("HDC_ORCHESTRATOR_ROLE")
        }
        assert roles == {"api": 0, "workers": 10}
        # So do the im and the ranker, which nobody waits on interactively.
        for name in ("im", "ranker"):
            pids = [p for p in status["pids"] if f"HDC_{name.upper()}_NICE" in environ_of(p)]
            assert pids and all(os.getpriority(os.PRIO_PROCESS, p) == 10 for p in pids), name
        deadline = time.monotonic() + 30
        while not hdc("site", "list")["sites"]:
            assert time.monotonic() < deadline, "the local site was not registered"
            time.sleep(0.5)

        dep = hdc("model", "deploy", "digits", "--wait", "--wait-timeout", "120")
        assert dep["status"] == "CREATE_COMPLETE", dep
        uuid, infra = dep["uuid"], dep["physicalId"]
        endpoint = dep["outputs"]["endpoint"]
        assert dep["createdBy"]["issuer"] == ISSUER  # deployed as the Keycloak user
        seven = digit_png(tmp_path / "seven.png", 7)
        r = post_digit(model_url(uuid), seven, {"Authorization": f"Bearer {alice}"})
        assert r.status_code == 200 and r.json()["predictions"]["label"] == 7, r.text
        stranger = post_digit(model_url(uuid), seven, {"Authorization": f"Bearer {bob}"})
        assert stranger.status_code == 404, stranger.text  # bob may not see alice's model
        # The gateway cannot be skipped: not for the model, not for any service, even with
        # a perfectly valid Keycloak token.
        assert post_digit(endpoint, seven, {"Authorization": f"Bearer {alice}"}).status_code == 401
        for name, (method, url) in DIRECT_CALLS.items():
            direct = httpx.request(
                method, url, headers={"Authorization": f"Bearer {alice}"}, json={}, timeout=10
            )
            assert direct.status_code == 401, f"{name} answered {direct.status_code}: {direct.text}"
        assert (
            hdc("model", "predict", uuid, "--file", f"image={seven}")["predictions"]["label"] == 7
        )

        assert hdc("deployment", "delete", uuid, "--wait")["status"] == "DELETE_COMPLETE"
        assert not listening(endpoint)
        assert processes_of(infra) == []
        orch_db, im_db = f"{PG_DSN}/{prefix}_orchestrator", f"{PG_DSN}/{prefix}_im"
        assert rows(orch_db, "SELECT uuid FROM orch_deployments WHERE uuid = :u", u=uuid) == []
        # The im keeps a tombstone of the infrastructure (a repeated delete is answered from
        # it, the reconciler knows the id is gone); its credentials are dropped.
        [(state, credentials)] = rows(
            im_db, "SELECT state, credentials FROM im_infrastructures WHERE id = :i", i=infra
        )
        assert state == "deleted" and credentials is None
        vms = rows(im_db, "SELECT state FROM im_vms WHERE infrastructure_id = :i", i=infra)
        assert all(vm_state == "deleted" for (vm_state,) in vms), vms
        leftovers = [q for q in rabbitmq_api.queues() if uuid in q or infra in q]
        assert leftovers == []
    finally:
        subprocess.run([HDC, "down"], env=env, capture_output=True, timeout=60)
        admin = sa.create_engine(f"{PG_DSN}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in SERVICES:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}_{name}" WITH (FORCE)'))
        admin.dispose()
