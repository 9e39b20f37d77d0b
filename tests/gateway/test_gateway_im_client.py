"""grycap's im-client (PyPI, unchanged) through the gateway to hdc's im, with a Keycloak token.

im-client puts the user's OIDC token on the InfrastructureManager line of its one
Authorization header; the gateway validates it there and passes the cloud lines on. The im
behind it holds the gateway's key and refuses anything that did not come through the gateway.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from imclient import IMClient

pytestmark = pytest.mark.keycloak

_spec = importlib.util.spec_from_file_location(
    "im_fx_gateway", Path(__file__).resolve().parents[1] / "im" / "conftest.py"
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        os: {properties: {image: dummy-image}}
        endpoint: {properties: {network_name: PUBLIC}}
  outputs:
    ip: {value: {get_attribute: [vm, public_address, 0]}}
"""


@pytest.fixture
def im_behind_gateway(
    keycloak: Any, start_gateway: Any, identity_keys: Any, tmp_path: Path, sqlite_url: str
) -> Any:
    im = fx.ImServer(
        fx.im_settings(tmp_path, sqlite_url, identity_public_key=identity_keys.public_pem)
    ).start()
    try:
        gateway = start_gateway(
            embedded_op=False,
            issuers=[{"issuer": f"{keycloak.url}/realms/hdc", "audiences": ["hdc-gateway"]}],
            routes=[
                {
                    "prefix": "/im",
                    "upstream": im.url,
                    "strip_prefix": True,
                    "token_from": "im_authorization",
                    "anonymous_paths": ["/version"],
                }
            ],
        )
        yield im, gateway
    finally:
        im.stop()


def test_im_client_through_the_gateway(keycloak: Any, im_behind_gateway: Any) -> None:
    im, gateway = im_behind_gateway
    token = keycloak.token("alice")
    auth = [
        {"id": "im", "type": "InfrastructureManager", "token": token},
        {"id": "dummy", "type": "Dummy"},
    ]
    client = IMClient.init_client(f"{gateway.url}/im", auth)
    ok, version = client.getversion()
    assert ok and version

    ok, inf_id = client.create(TOSCA, "yaml")
    assert ok, inf_id
    ok, infras = client.list_infras()
    assert ok and infras == [inf_id]
    ok, state = client.get_infra_property(inf_id, "state")
    assert ok and state["state"] == "configured", state

    # The infrastructure belongs to the Keycloak user the gateway verified.
    subject = jwt.decode(token, options={"verify_signature": False})["sub"]
    with im.parts["sessions"]() as s:
        import sqlalchemy as sa

        owners = s.execute(sa.text("SELECT owner FROM im_infrastructures")).scalars().all()
    assert owners == [f"{subject}@{keycloak.url}/realms/hdc"]

    # Another user sees none of it.
    bob = [
        {"id": "im", "type": "InfrastructureManager", "token": keycloak.token("bob")},
        {"id": "dummy", "type": "Dummy"},
    ]
    ok, infras = IMClient.init_client(f"{gateway.url}/im", bob).list_infras()
    assert ok and infras == []

    ok, msg = client.destroy(inf_id)
    assert ok, msg
    ok, infras = client.list_infras()
    assert ok and infras == []


def test_im_header_without_a_token_is_refused(im_behind_gateway: Any) -> None:
    _im, gateway = im_behind_gateway
    auth = [
        {"id": "im", "type": "InfrastructureManager", "username": "kim", "password": "pw"},
        {"id": "dummy", "type": "Dummy"},
    ]
    ok, msg = IMClient.init_client(f"{gateway.url}/im", auth).list_infras()
    assert not ok
    r = httpx.get(
        f"{gateway.url}/im/infrastructures",
        headers={"Authorization": "type = InfrastructureManager; username = kim; password = pw"},
    )
    assert r.status_code == 401
    assert "InfrastructureManager line" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_im_refuses_callers_that_skip_the_gateway(keycloak: Any, im_behind_gateway: Any) -> None:
    im, _gateway = im_behind_gateway
    token = keycloak.token("alice")
    for authorization in (
        f"type = InfrastructureManager; token = {token}\\nid = d; type = Dummy",
        "type = InfrastructureManager; username = kim; password = pw\\nid = d; type = Dummy",
        f"Bearer {token}",
    ):
        r = httpx.get(f"{im.url}/infrastructures", headers={"Authorization": authorization})
        assert r.status_code == 401, r.text
        assert "gateway" in r.json()["detail"]
    # The version stays open, as grycap's IM and im-client expect.
    assert httpx.get(f"{im.url}/version").status_code == 200
