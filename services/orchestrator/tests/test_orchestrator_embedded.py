"""Embedded mode (SQLite + the in-process bus), the default of `hdc up`: the same workflow
runs, including fail-over. Collaborators are the TEST DOUBLES of tests/orchestrator."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "orchestrator"))

from orch_doubles import TEMPLATE, GrpcDoubles, ImDouble, Signer, Site, user, wait_for


@pytest.fixture
def embedded(tmp_path):
    from hdc_orchestrator.service import build
    from hdc_orchestrator.settings import OrchestratorSettings
    from starlette.testclient import TestClient

    bus_url = f"memory:///orch-{uuid.uuid4().hex[:8]}"
    doubles = GrpcDoubles([Site("site-a", 0.9), Site("site-b", 0.5)])
    im = ImDouble(bus_url, tmp_path / "im.db", behaviour={"site-a": "fail"}).start()
    signer = Signer()
    settings = OrchestratorSettings(
        data_dir=tmp_path,
        bus_url=bus_url,
        infoprovider_target=doubles.target,
        ranker_target=doubles.target,
        identity_public_key=signer.public,
        sweep_interval_s=0.2,
    )
    components = build(settings)
    for bg in components.background:
        bg.start()
    client = TestClient(components.asgi_app)
    yield client, signer, im
    client.close()
    for bg in reversed(components.background):
        bg.stop()
    im.stop()
    doubles.stop()


def test_embedded_create_failover_delete(embedded) -> None:
    client, signer, im = embedded
    h = signer.headers(user("embedded"))
    r = client.post("/deployments", json={"template": TEMPLATE}, headers=h)
    assert r.status_code == 201, r.text
    uuid_ = r.json()["uuid"]
    done = wait_for(
        lambda: (
            (j := client.get(f"/deployments/{uuid_}", headers=h).json())["status"]
            != "CREATE_IN_PROGRESS"
            and j
        ),
        30,
    )
    assert done["status"] == "CREATE_COMPLETE" and done["cloudProviderName"] == "site-b"
    assert [x["provider"] for x in done["statusReasons"]] == ["site-a"]
    assert client.delete(f"/deployments/{uuid_}", headers=h).status_code == 204
    wait_for(lambda: client.get(f"/deployments/{uuid_}", headers=h).status_code == 404, 30)
    assert im.alive_for(uuid_) == []
