"""Opaque access tokens, checked at the issuer with RFC 7662 introspection."""

from __future__ import annotations

from typing import Any

import httpx

ISSUER = "https://opaque-as.test/"


def _issuer(as_url: str, secret: str = "gw-secret") -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "introspection_endpoint": f"{as_url}/introspect",
        "introspection_client_id": "hdc-gateway",
        "introspection_client_secret": secret,
    }


def _token(as_url: str) -> str:
    resp = httpx.post(
        f"{as_url}/token",
        data={"grant_type": "client_credentials", "scope": "infoprovider:write"},
        auth=("agent-7", "agent-secret"),
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def test_opaque_token_is_introspected(embedded_gateway: Any, opaque_as: Any) -> None:
    gw = embedded_gateway(issuers=[_issuer(opaque_as.url)], token_cache_s=0)
    token = _token(opaque_as.url)
    assert token.count(".") != 2  # really opaque
    resp = httpx.get(f"{gw.url}/svc/report", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["subject"] == "client:agent-7" and body["issuer"] == ISSUER
    assert body["groups"] == ["site-agents"]
    # Revoked at the issuer: refused on the next call (cache disabled here).
    httpx.post(f"{opaque_as.url}/revoke", data={"token": token}, auth=("agent-7", "agent-secret"))
    revoked = httpx.get(f"{gw.url}/svc/report", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 401
    assert 'error="invalid_token"' in revoked.headers["www-authenticate"]


def test_unknown_opaque_token_is_refused(embedded_gateway: Any, opaque_as: Any) -> None:
    gw = embedded_gateway(issuers=[_issuer(opaque_as.url)])
    resp = httpx.get(f"{gw.url}/svc/x", headers={"Authorization": "Bearer made-up-token"})
    assert resp.status_code == 401
    assert "not active" in resp.json()["detail"]


def test_introspection_failure_is_503_not_401(embedded_gateway: Any, opaque_as: Any) -> None:
    gw = embedded_gateway(issuers=[_issuer(opaque_as.url, secret="wrong")])
    resp = httpx.get(
        f"{gw.url}/svc/x", headers={"Authorization": f"Bearer {_token(opaque_as.url)}"}
    )
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    assert "introspection" in resp.json()["detail"]
