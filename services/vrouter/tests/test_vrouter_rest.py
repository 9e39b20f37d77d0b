"""The REST contract: spec-validated input, problem+json errors, identity required for operators."""

from __future__ import annotations

import pytest
import yaml
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair
from hdc_vrouter.enrolment import TOKEN_FILE
from hdc_vrouter.service import build
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.wgkeys import generate_keypair as wg_keypair


@pytest.fixture
def api(tmp_path, sqlite_url):
    private, public = generate_keypair()
    settings = VRouterSettings(
        data_dir=tmp_path, database_url=sqlite_url, identity_public_key=public
    )
    app = build(settings).asgi_app
    signer = InternalTokenSigner(private)
    with app.test_client() as client:
        client.headers.update(
            {"X-HDC-Identity": signer.sign(Identity(subject="alice", issuer="https://idp"))}
        )
        yield client


def test_operator_and_agent_flow(api):
    r = api.post(
        "/v1/overlays",
        json={"name": "hybrid-1", "cidr": "10.200.0.0/16", "hub_endpoint": "198.18.0.1:51820"},
    )
    assert r.status_code == 201, r.text
    ov = r.json()
    assert ov["hub"]["enrolment_token"] and ov["site_capacity"] == 255

    r = api.post(
        f"/v1/overlays/{ov['id']}/sites",
        json={"name": "site-a", "private_ranges": ["192.168.1.0/24"]},
    )
    assert r.status_code == 201, r.text
    site = r.json()
    assert site["subnet"] == "10.200.1.0/24"

    _, public = wg_keypair()
    r = api.post(
        "/v1/agent/enrol",
        json={"token": site["enrolment_token"], "public_key": public},
        headers={"X-HDC-Identity": ""},
    )
    assert r.status_code == 201, r.text
    secret = r.json()["agent_secret"]
    agent = {"Authorization": f"Bearer {secret}", "X-HDC-Identity": ""}

    r = api.get("/v1/agent/config", headers=agent)
    assert r.status_code == 200 and r.json()["address"] == "10.200.1.1/32"
    r = api.post("/v1/agent/heartbeat", json={"config_version": 1, "peers": []}, headers=agent)
    assert r.status_code == 200 and set(r.json()) == {"config_version", "rotate_key"}

    r = api.post(f"/v1/overlays/{ov['id']}/sites/{site['id']}/rotate-key")
    assert r.status_code == 202 and r.json()["rotation_requested"] is True
    _, new = wg_keypair()
    r = api.put("/v1/agent/key", json={"public_key": new}, headers=agent)
    assert r.status_code == 200 and r.json()["rotate_key"] is False

    r = api.get(f"/v1/overlays/{ov['id']}/health")
    assert r.status_code == 200 and [s["name"] for s in r.json()["sites"]] == ["hub", "site-a"]
    r = api.get(f"/v1/overlays/{ov['id']}/sites/{site['id']}/config")
    assert r.status_code == 200 and r.json()["site_id"] == site["id"]
    r = api.post(f"/v1/overlays/{ov['id']}/sites/{site['id']}/enrolment-tokens")
    assert r.status_code == 201 and r.json()["enrolment_token"] != site["enrolment_token"]

    assert api.delete(f"/v1/overlays/{ov['id']}/sites/{site['id']}").status_code == 204
    r = api.get("/v1/agent/config", headers=agent)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert api.get("/v1/overlays").json()[0]["id"] == ov["id"]
    assert api.delete(f"/v1/overlays/{ov['id']}").status_code == 204
    assert api.get(f"/v1/overlays/{ov['id']}").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/overlays", {"name": "x"}, 400, "cidr"),
        ("/v1/overlays", {"name": "x", "cidr": "10.0.0.0/8", "colour": "red"}, 400, "colour"),
        ("/v1/overlays", {"name": "x", "cidr": "10.0.0.0/8", "topology": "ring"}, 400, "ring"),
        ("/v1/overlays", {"name": "x", "cidr": "10.0.0.1/8"}, 400, "host bits"),
        ("/v1/overlays", {"name": "x", "cidr": "10.0.0.0/8", "site_prefix": 8}, 400, "site_prefix"),
        ("/v1/agent/enrol", {"token": "t"}, 400, "public_key"),
        ("/v1/agent/enrol", {"token": "t", "public_key": "AAAA"}, 400, "bytes"),
        (
            "/v1/agent/enrol",
            {"token": "hdcvr-enrol-x", "public_key": wg_keypair()[1]},
            401,
            "unknown enrolment token",
        ),
        ("/v1/agent/heartbeat", {"peers": []}, 401, "Bearer"),
    ],
)
def test_bad_input_is_a_4xx_problem(api, path, body, status, needle):
    r = api.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert needle in r.json()["detail"]


def test_operator_calls_need_the_gateway_identity(api):
    r = api.get("/v1/overlays", headers={"X-HDC-Identity": ""})
    assert r.status_code == 401 and "gateway" in r.json()["detail"]
    r = api.get("/v1/overlays", headers={"X-HDC-Identity": "forged.token.value"})
    assert r.status_code == 401


def test_router_user_data_carries_a_working_one_time_token(api):
    ov = api.post("/v1/overlays", json={"name": "ud", "cidr": "10.200.0.0/16"}).json()
    site = api.post(f"/v1/overlays/{ov['id']}/sites", json={"name": "a"}).json()
    r = api.post(
        f"/v1/overlays/{ov['id']}/sites/{site['id']}/user-data", json={"interface": "hdcvr7"}
    )
    assert r.status_code == 201, r.text
    doc = yaml.safe_load(r.json()["user_data"])
    token = next(f for f in doc["write_files"] if f["path"] == TOKEN_FILE)["content"].strip()
    assert token != site["enrolment_token"]
    unit = next(f for f in doc["write_files"] if f["path"].endswith(".service"))["content"]
    assert "--interface hdcvr7" in unit and "--controller http://127.0.0.1:8105" in unit
    # The token inside the user data is what the VM's agent will present: it enrols once.
    enrol = {"token": token, "public_key": wg_keypair()[1]}
    assert api.post("/v1/agent/enrol", json=enrol).status_code == 201
    assert (
        api.post("/v1/agent/enrol", json=enrol | {"public_key": wg_keypair()[1]}).status_code == 409
    )

    hub = f"/v1/overlays/{ov['id']}/sites/{ov['hub']['id']}/user-data"
    r = api.post(hub, json={})
    assert r.status_code == 400 and "endpoint" in r.json()["detail"]
    r = api.post(hub, json={"endpoint": "203.0.113.9:51820"})
    assert r.status_code == 201 and "--endpoint 203.0.113.9:51820" in r.json()["user_data"]
    r = api.post(hub, json={"endpoint": "203.0.113.9:51820", "interface": "bad name"})
    assert r.status_code == 400


def test_overlap_and_exhaustion_answer_409_with_reasons(api):
    ov = api.post(
        "/v1/overlays", json={"name": "s", "cidr": "10.9.0.0/23", "site_prefix": 24}
    ).json()
    base = f"/v1/overlays/{ov['id']}/sites"
    assert (
        api.post(base, json={"name": "a", "private_ranges": ["192.168.0.0/16"]}).status_code == 201
    )
    r = api.post(base, json={"name": "b", "private_ranges": ["192.168.3.0/24"]})
    assert (
        r.status_code == 409
        and r.json()["reason"] == "range_overlap"
        and r.json()["conflicting_site"] == "a"
    )
    r = api.post(base, json={"name": "c"})
    assert r.status_code == 409 and r.json()["reason"] == "pool_exhausted"
    assert api.get("/healthz").status_code == 200 and api.get("/readyz").status_code == 200
