"""The gateway against a real Keycloak: what it lets through, what it refuses, and why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hdc_common.identity import InternalTokenSigner, generate_keypair

pytestmark = pytest.mark.keycloak

# The same values the fixtures in conftest.py use (test modules cannot import conftest).
HDC_ISSUER = f"{os.environ.get('HDC_TEST_KEYCLOAK_URL', 'http://127.0.0.1:18080')}/realms/hdc"
Keycloak = ServerThread = Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": HDC_ISSUER,
        "aud": "hdc-gateway",
        "sub": "forged-subject",
        "iat": now,
        "exp": now + 300,
        "groups": ["ml-team"],
        "scope": "openid",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _realm_signing_jwk(kc: Keycloak, token: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    jwks = httpx.get(f"{HDC_ISSUER}/protocol/openid-connect/certs", timeout=10).json()
    return next(k for k in jwks["keys"] if k["kid"] == kid)


def _get(gw: ServerThread, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(gw.url + path, headers=headers, timeout=30, **kw)


def test_valid_token_is_routed_with_identity(keycloak: Keycloak, kc_gateway: ServerThread) -> None:
    token = keycloak.token("alice")
    resp = _get(kc_gateway, "/svc/deployments/42?x=1", token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["subject"] == jwt.decode(token, options={"verify_signature": False})["sub"]
    assert body["issuer"] == HDC_ISSUER
    assert body["groups"] == ["ml-team"]
    assert "user" in body["roles"]
    assert body["path"] == "/deployments/42" and body["query"] == "x=1"
    assert body["forwarded_prefix"] == "/svc"
    assert body["client_id"] == "hdc-cli"
    # Security headers ride on proxied answers too.
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_group_admin_and_platform_admin_roles(keycloak: Keycloak, kc_gateway: ServerThread) -> None:
    carol = _get(kc_gateway, "/svc/me", keycloak.token("carol")).json()
    assert "group-admin:ml-team" in carol["roles"]
    dave = _get(kc_gateway, "/svc/me", keycloak.token("dave")).json()
    assert "platform-admin" in dave["roles"]
    # A platform admin passes a group requirement without being in the group.
    assert _get(kc_gateway, "/team/x", keycloak.token("dave")).status_code == 200


def _hs256_with_public_key(kc: Keycloak) -> str:
    real = kc.token("alice")
    jwk = _realm_signing_jwk(kc, real)
    public_pem = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}
    signing_input = f"{_b64json(header)}.{_b64json(_claims())}"
    sig = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def _alg_none(kc: Keycloak) -> str:
    return f"{_b64json({'alg': 'none', 'typ': 'JWT'})}.{_b64json(_claims())}."


def _unknown_kid(kc: Keycloak) -> str:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(_claims(), stranger, algorithm="RS256", headers={"kid": "no-such-kid"})


def _alg_key_mismatch(kc: Keycloak) -> str:
    # ES256 claimed, but the kid names Keycloak's RSA key: the key must not be bent to fit.
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": kc.forge_kid})


def _wrong_issuer(kc: Keycloak) -> str:
    return jwt.encode(
        _claims(iss="https://evil.example.org/realms/hdc"),
        kc.forge_key,
        algorithm="RS256",
        headers={"kid": kc.forge_kid},
    )


def _wrong_audience(kc: Keycloak) -> str:
    # A real Keycloak token, issued to a client without the gateway audience.
    return kc.token("alice", client_id="other-app")


def _expired(kc: Keycloak) -> str:
    now = int(time.time())
    return jwt.encode(
        _claims(iat=now - 3600, exp=now - 600),
        kc.forge_key,
        algorithm="RS256",
        headers={"kid": kc.forge_kid},
    )


def _not_yet_valid(kc: Keycloak) -> str:
    now = int(time.time())
    return jwt.encode(
        _claims(nbf=now + 600, exp=now + 1200),
        kc.forge_key,
        algorithm="RS256",
        headers={"kid": kc.forge_kid},
    )


def _tampered(kc: Keycloak) -> str:
    head, payload, sig = kc.token("bob").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["hdc-admins"]  # try to become platform admin
    return f"{head}.{_b64json(claims)}.{sig}"


def _untrusted_realm(kc: Keycloak) -> str:
    # Same Keycloak, same audience, a realm the gateway does not trust.
    return kc.token("mallory", realm="untrusted")


# case -> (how to make the token, what the refusal must say: the intended check fired)
REFUSED = {
    "alg-none": (_alg_none, "algorithm 'none' is not allowed"),
    "hs256-with-rs-public-key": (_hs256_with_public_key, "algorithm 'HS256' is not allowed"),
    "unknown-kid": (_unknown_kid, "signing key 'no-such-kid' is unknown"),
    "alg-key-type-mismatch": (_alg_key_mismatch, "unfit for ES256"),
    "wrong-issuer": (_wrong_issuer, "issuer 'https://evil.example.org/realms/hdc' is not trusted"),
    "wrong-audience": (_wrong_audience, "audience is not one of ['hdc-gateway']"),
    "expired": (_expired, "token has expired"),
    "not-yet-valid": (_not_yet_valid, "not valid yet"),
    "tampered-payload": (_tampered, "signature does not verify"),
    "untrusted-realm": (_untrusted_realm, "realms/untrusted' is not trusted"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_tokens_are_refused_with_401(
    case: str, keycloak: Keycloak, kc_gateway: ServerThread
) -> None:
    make, reason = REFUSED[case]
    resp = _get(kc_gateway, "/svc/whoami", make(keycloak))
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="hdc"')
    assert 'error="invalid_token"' in challenge
    assert "error_description=" in challenge
    assert resp.headers["content-type"] == "application/problem+json"
    assert reason in resp.json()["detail"]
    assert reason in challenge


def test_no_token_is_refused_with_401(kc_gateway: ServerThread) -> None:
    resp = _get(kc_gateway, "/svc/whoami")
    assert resp.status_code == 401
    assert 'error="invalid_request"' in resp.headers["www-authenticate"]
    assert "Bearer" in resp.json()["detail"]


def test_forge_key_control_token_is_accepted(keycloak: Keycloak, kc_gateway: ServerThread) -> None:
    """The expired/not-yet-valid cases fail on their claims, not on the key they use."""
    token = jwt.encode(
        _claims(), keycloak.forge_key, algorithm="RS256", headers={"kid": keycloak.forge_kid}
    )
    resp = _get(kc_gateway, "/svc/whoami", token)
    assert resp.status_code == 200, resp.text
    assert resp.json()["subject"] == "forged-subject"


def test_user_without_group_gets_403(keycloak: Keycloak, kc_gateway: ServerThread) -> None:
    resp = _get(kc_gateway, "/team/models", keycloak.token("bob"))
    assert resp.status_code == 403, resp.text
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert "ml-team" in resp.json()["detail"]
    assert _get(kc_gateway, "/team/models", keycloak.token("alice")).status_code == 200


def test_required_scope(keycloak: Keycloak, kc_gateway: ServerThread) -> None:
    without = _get(kc_gateway, "/write/x", keycloak.token("alice"))
    assert without.status_code == 403
    assert 'scope="deployments:write"' in without.headers["www-authenticate"]
    with_scope = keycloak.token("alice", scope="openid deployments:write")
    assert _get(kc_gateway, "/write/x", with_scope).status_code == 200


@pytest.mark.parametrize("agent", ["site-agent-1", "site-agent-2"])
def test_site_agent_with_client_credentials(
    agent: str, keycloak: Keycloak, kc_gateway: ServerThread
) -> None:
    token = keycloak.client_token(agent, f"{agent}-secret")
    resp = _get(kc_gateway, "/agents/report", token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "site-agent" in body["roles"] and body["client_id"] == agent
    # A user is not a site agent.
    assert _get(kc_gateway, "/agents/report", keycloak.token("alice")).status_code == 403


def test_bypassing_the_gateway_is_refused(
    keycloak: Keycloak, kc_gateway: ServerThread, backend: ServerThread
) -> None:
    token = keycloak.token("alice")
    # Straight to the service with a perfectly valid user token: refused.
    direct = httpx.get(f"{backend.url}/whoami", headers={"Authorization": f"Bearer {token}"})
    assert direct.status_code == 401
    assert "gateway" in direct.json()["detail"]
    # An identity header signed by anyone but the gateway: refused.
    rogue_private, _ = generate_keypair()
    from hdc_common.identity import Identity

    forged = InternalTokenSigner(rogue_private).sign(
        Identity(subject="root", issuer=HDC_ISSUER, roles=("platform-admin",))
    )
    direct = httpx.get(f"{backend.url}/whoami", headers={"X-HDC-Identity": forged})
    assert direct.status_code == 401
    # Through the gateway, a client-supplied identity header is dropped, never forwarded.
    resp = httpx.get(f"{kc_gateway.url}/public/whoami", headers={"X-HDC-Identity": forged})
    assert resp.status_code == 401  # the backend saw no identity on the anonymous route
    resp = _get(kc_gateway, "/svc/whoami", token, headers={"X-HDC-Identity": forged})
    assert resp.status_code == 200 and resp.json()["subject"] != "root"


def test_anonymous_paths_need_no_token(kc_gateway: ServerThread) -> None:
    assert httpx.get(f"{kc_gateway.url}/svc/healthz").status_code == 200


def test_key_rotation_is_picked_up_without_restart(
    keycloak: Keycloak, kc_gateway: ServerThread
) -> None:
    before = keycloak.token("alice")
    assert _get(kc_gateway, "/svc/whoami", before).status_code == 200
    old_kid = jwt.get_unverified_header(before)["kid"]

    admin = keycloak.admin
    realm_id = keycloak.realm_id()
    providers = admin.get_components({"parent": realm_id, "type": "org.keycloak.keys.KeyProvider"})
    top = max(int(c["config"].get("priority", ["0"])[0]) for c in providers)
    admin.create_component(
        {
            "name": f"rotated-{uuid.uuid4().hex[:8]}",
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm_id,
            "config": {
                "priority": [str(top + 10)],
                "enabled": ["true"],
                "active": ["true"],
                "keySize": ["2048"],
                "algorithm": ["RS256"],
            },
        }
    )
    for comp in providers:
        if comp["providerId"] == "rsa-generated" and comp["config"].get("enabled", ["true"]) == [
            "true"
        ]:
            comp["config"]["enabled"] = ["false"]
            admin.update_component(comp["id"], comp)

    after = keycloak.token("alice")
    new_kid = jwt.get_unverified_header(after)["kid"]
    assert new_kid != old_kid
    resp = _get(kc_gateway, "/svc/whoami", after)
    assert resp.status_code == 200, resp.text


def test_introspection_sees_revocation(keycloak: Keycloak, start_gateway: Any) -> None:
    """With introspect: always, a token revoked at Keycloak (logout) stops working."""
    gw = start_gateway(
        embedded_op=False,
        token_cache_s=0,
        issuers=[
            {
                "issuer": HDC_ISSUER,
                "introspect": "always",
                "introspection_client_id": "hdc-gateway",
                "introspection_client_secret": "hdc-gateway-secret",
            }
        ],
    )
    token = keycloak.token("carol")
    assert _get(gw, "/svc/whoami", token).status_code == 200
    keycloak.admin.user_logout(keycloak.admin.get_user_id("carol"))
    resp = _get(gw, "/svc/whoami", token)
    assert resp.status_code == 401
    assert "not active" in resp.json()["detail"]


def test_realm_offers_the_cli_the_device_grant(keycloak: Keycloak) -> None:
    resp = httpx.post(
        f"{HDC_ISSUER}/protocol/openid-connect/auth/device", data={"client_id": "hdc-cli"}
    )
    assert resp.status_code == 200, resp.text
    assert {"device_code", "user_code", "verification_uri"} <= set(resp.json())


def test_id_token_is_not_an_access_token(keycloak: Keycloak, kc_gateway: ServerThread) -> None:
    resp = httpx.post(
        f"{HDC_ISSUER}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "hdc-cli",
            "username": "alice",
            "password": "alice-pass",
            "scope": "openid",
        },
    )
    tokens = resp.json()
    for kind in ("id_token", "refresh_token"):
        refused = _get(kc_gateway, "/svc/whoami", tokens[kind])
        assert refused.status_code == 401, kind
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
