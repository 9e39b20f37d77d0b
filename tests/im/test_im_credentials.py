"""Credentials are never logged, never returned, and stored only encrypted; OIDC callers come
through the gateway's signed identity."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
from pathlib import Path

import httpx
import sqlalchemy as sa
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair

_spec = importlib.util.spec_from_file_location(
    "im_fx_cred", Path(__file__).with_name("conftest.py")
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

SECRET = "pw-Zq8Hk2-never-show"
TOSCA = """
tosca_definitions_version: tosca_simple_yaml_1_0
topology_template:
  node_templates:
    vm:
      type: tosca.nodes.indigo.Compute
      capabilities:
        os: {properties: {image: img}}
  outputs:
    ip: {value: {get_attribute: [vm, public_address, 0]}}
"""


def test_secrets_stay_secret(im_server, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    h = {
        "Authorization": f"type = InfrastructureManager; username = kim; password = {SECRET}\\n"
        f"id = d; type = Dummy; username = cloud-user; password = {SECRET}",
        "Content-Type": "text/yaml",
    }
    r = httpx.post(f"{im_server.url}/infrastructures", content=TOSCA, headers=h, timeout=30)
    assert r.status_code == 200, r.text
    inf = r.headers["InfID"]
    base = f"{im_server.url}/infrastructures/{inf}"
    bodies = [
        httpx.get(f"{base}/{p}", headers={**h, "Accept": a}).text
        for p in ("state", "contmsg", "outputs", "tosca", "radl")
        for a in ("application/json", "text/plain", "*/*")
    ]
    bodies.append(httpx.get(f"{base}/vms/0", headers=h).text)
    bodies.append(httpx.get(f"{base}/vms/0", headers={**h, "Accept": "application/json"}).text)
    assert all(SECRET not in b for b in bodies)
    with im_server.parts["sessions"]() as s:
        rows = s.execute(sa.text("SELECT * FROM im_infrastructures")).all()
    dump = json.dumps([list(map(str, r)) for r in rows])
    assert SECRET not in dump and "cloud-user" not in dump  # sealed, not just hidden
    assert all(SECRET not in rec.getMessage() for rec in caplog.records)


def test_oidc_bearer_through_the_gateway(tmp_path: Path, sqlite_url: str) -> None:
    private, public = generate_keypair()
    server = fx.ImServer(fx.im_settings(tmp_path, sqlite_url, identity_public_key=public)).start()
    try:
        who = Identity(subject="sub-1", issuer="https://iam.example")
        payload = (
            base64.urlsafe_b64encode(
                json.dumps({"sub": "sub-1", "iss": "https://iam.example"}).encode()
            )
            .decode()
            .rstrip("=")
        )
        token = f"e30.{payload}.sig"
        h = {
            "Authorization": f"type = InfrastructureManager; token = {token}\\nid = d; type = Dummy",
            "X-HDC-Identity": InternalTokenSigner(private).sign(who),
            "Content-Type": "text/yaml",
        }
        r = httpx.post(f"{server.url}/infrastructures", content=TOSCA, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        listing = httpx.get(f"{server.url}/infrastructures", headers=h).text
        assert r.headers["InfID"] in listing
        no_gateway = {k: v for k, v in h.items() if k != "X-HDC-Identity"}
        r = httpx.get(f"{server.url}/infrastructures", headers=no_gateway)
        assert r.status_code == 401 and "gateway" in r.text
        forged = {**h, "X-HDC-Identity": "not-a-token"}
        assert httpx.get(f"{server.url}/infrastructures", headers=forged).status_code == 401
    finally:
        server.stop()
