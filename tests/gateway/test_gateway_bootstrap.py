"""Realm bootstrap with python-keycloak (what the Helm install job runs), end to end:
bootstrap a fresh realm, put the printed issuer entry into a gateway, call through it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from hdc_gateway import keycloak_bootstrap

pytestmark = pytest.mark.keycloak

REALM_FILE = Path(__file__).resolve().parents[1] / "keycloak" / "hdc-realm.json"


@pytest.fixture
def fresh_realm(keycloak: Any) -> Any:
    name = f"boot-{uuid.uuid4().hex[:8]}"
    yield name
    keycloak.admin.change_current_realm("master")
    keycloak.admin.delete_realm(name)
    keycloak.admin.change_current_realm("hdc")


def _run(keycloak: Any, name: str, monkeypatch: Any, capsys: Any, *extra: str) -> str:
    monkeypatch.setenv("HDC_TEST_KC_ADMIN_PASSWORD", "admin")
    monkeypatch.setenv("HDC_TEST_AGENT_SECRET", "from-the-environment")
    keycloak_bootstrap.main(
        [
            "--url",
            keycloak.url,
            "--realm-file",
            str(REALM_FILE),
            "--realm-name",
            name,
            "--admin-password-env",
            "HDC_TEST_KC_ADMIN_PASSWORD",
            "--client-secret-env",
            "site-agent-1=HDC_TEST_AGENT_SECRET",
            *extra,
        ]
    )
    return capsys.readouterr().out


def test_bootstrap_creates_then_completes_realm(
    keycloak: Any, fresh_realm: str, start_gateway: Any, monkeypatch: Any, capsys: Any
) -> None:
    out = _run(keycloak, fresh_realm, monkeypatch, capsys)
    assert '"realm"' in out
    issuers = yaml.safe_load(out)["issuers"]
    assert issuers[0]["issuer"] == f"{keycloak.url}/realms/{fresh_realm}"

    # The secret came from the environment, not from the file.
    token_url = f"{keycloak.url}/realms/{fresh_realm}/protocol/openid-connect/token"
    agent = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "site-agent-1",
            "client_secret": "from-the-environment",
        },
    )
    assert agent.status_code == 200, agent.text

    # Running again only fills in what is missing.
    admin = keycloak.admin
    admin.change_current_realm(fresh_realm)
    group_id = next(g["id"] for g in admin.get_groups() if g["name"] == "ml-team-admins")
    admin.delete_group(group_id)
    admin.change_current_realm("hdc")
    again = _run(keycloak, fresh_realm, monkeypatch, capsys)
    assert '"groups": ["ml-team-admins"]' in again

    # A gateway configured with the printed entry accepts the new realm's tokens.
    gw = start_gateway(embedded_op=False, issuers=issuers)
    user = httpx.post(
        token_url,
        data={
            "grant_type": "password",
            "client_id": "hdc-cli",
            "username": "alice",
            "password": "alice-pass",
            "scope": "openid",
        },
    )
    assert user.status_code == 200, user.text
    resp = httpx.get(
        f"{gw.url}/team/x", headers={"Authorization": f"Bearer {user.json()['access_token']}"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["issuer"] == issuers[0]["issuer"]


def test_bootstrap_without_test_users(
    keycloak: Any, fresh_realm: str, monkeypatch: Any, capsys: Any
) -> None:
    _run(keycloak, fresh_realm, monkeypatch, capsys, "--no-users")
    admin = keycloak.admin
    admin.change_current_realm(fresh_realm)
    try:
        test_users = [admin.get_user_id(name) for name in ("alice", "bob", "carol", "dave")]
    finally:
        admin.change_current_realm("hdc")
    assert test_users == [None, None, None, None]
    # The site agent's service account (and its group) came along with its client.
    token = httpx.post(
        f"{keycloak.url}/realms/{fresh_realm}/protocol/openid-connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "site-agent-1",
            "client_secret": "from-the-environment",
        },
    ).json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["groups"] == ["site-agents"]


def test_bootstrap_refuses_bad_input(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.delenv("NO_SUCH_PASSWORD_VAR", raising=False)
    with pytest.raises(SystemExit) as exc:
        keycloak_bootstrap.main(
            [
                "--url",
                "http://127.0.0.1:9",
                "--realm-file",
                str(REALM_FILE),
                "--admin-password-env",
                "NO_SUCH_PASSWORD_VAR",
            ]
        )
    assert exc.value.code == 2
    assert "NO_SUCH_PASSWORD_VAR" in capsys.readouterr().err
    bad = tmp_path / "realm.json"
    bad.write_text("[]")
    with pytest.raises(keycloak_bootstrap.BootstrapError, match="no 'realm'"):
        keycloak_bootstrap.load_realm(bad)
    with pytest.raises(keycloak_bootstrap.BootstrapError, match="no client 'nope'"):
        keycloak_bootstrap.load_realm(REALM_FILE, client_secrets={"nope": "x"})
