"""Embedded mode: development tokens from the local key, validated by the same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hdc_common.errors import ConfigError
from hdc_common.identity import generate_keypair
from hdc_gateway import devtoken, embedded_op
from hdc_gateway.service import build_app
from hdc_gateway.settings import GatewaySettings


def test_dev_token_is_validated_and_identity_forwarded(
    embedded_gateway: Any, tmp_path: Path
) -> None:
    gw = embedded_gateway()
    token = devtoken.mint(tmp_path, "dev-user", ["ml-team", "ml-team-admins"])
    resp = httpx.get(f"{gw.url}/svc/x", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["subject"] == "dev-user"
    assert body["issuer"] == embedded_op.EMBEDDED_ISSUER
    assert body["groups"] == ["ml-team", "ml-team-admins"]
    assert "group-admin:ml-team" in body["roles"]
    # The upstream keeps its own security headers; the gateway fills in the rest.
    assert resp.headers["x-frame-options"] == "SAMEORIGIN"
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_jwks_and_discovery_are_served(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway()
    token = devtoken.mint(tmp_path, "u")
    jwks = httpx.get(f"{gw.url}/.well-known/jwks.json").json()
    assert [k["kid"] for k in jwks["keys"]] == [jwt.get_unverified_header(token)["kid"]]
    # The served key really verifies the minted token.
    key = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="hdc-gateway")
    assert claims["iss"] == embedded_op.EMBEDDED_ISSUER
    doc = httpx.get(f"{gw.url}/.well-known/openid-configuration").json()
    assert doc["issuer"] == embedded_op.EMBEDDED_ISSUER
    assert doc["jwks_uri"] == f"{gw.url}/.well-known/jwks.json"


def test_local_key_rotation_needs_no_restart(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway(jwks_min_refresh_s=0)
    first = devtoken.mint(tmp_path, "u")
    assert (
        httpx.get(f"{gw.url}/svc/", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    )
    embedded_op.key_path(tmp_path).unlink()
    second = devtoken.mint(tmp_path, "u")
    assert jwt.get_unverified_header(second)["kid"] != jwt.get_unverified_header(first)["kid"]
    resp = httpx.get(f"{gw.url}/svc/", headers={"Authorization": f"Bearer {second}"})
    assert resp.status_code == 200, resp.text


def test_dev_token_for_another_audience_is_refused(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway()
    token = devtoken.mint(tmp_path, "u", audience="someone-else")
    resp = httpx.get(f"{gw.url}/svc/", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert "audience" in resp.headers["www-authenticate"]


def test_mint_validates_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subject"):
        devtoken.mint(tmp_path, "")
    with pytest.raises(ValueError, match="ttl_s"):
        devtoken.mint(tmp_path, "u", ttl_s=0)


def _settings(tmp_path: Path, **kw: Any) -> GatewaySettings:
    private, public = generate_keypair()
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "identity_private_key": private,
        "identity_public_key": public,
    }
    values.update(kw)
    return GatewaySettings(**values)


def test_embedded_mode_refuses_to_bind_beyond_localhost(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        build_app(_settings(tmp_path, http_host="0.0.0.0"))
    build_app(_settings(tmp_path, http_host="::1"))  # loopback is fine


def test_distributed_mode_needs_issuers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="issuer"):
        build_app(_settings(tmp_path, embedded_op=False, http_host="0.0.0.0"))
    build_app(
        _settings(
            tmp_path,
            embedded_op=False,
            http_host="0.0.0.0",
            issuers=[{"issuer": "https://iam.example.org/"}],
        )
    )


def test_identity_key_is_required_and_must_match(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity_private_key is required"):
        build_app(GatewaySettings(data_dir=tmp_path))
    other_private, _ = generate_keypair()
    with pytest.raises(ConfigError, match="does not match"):
        build_app(_settings(tmp_path, identity_private_key=other_private))
    with pytest.raises(ConfigError, match="cannot read"):
        build_app(_settings(tmp_path, identity_private_key=str(tmp_path / "missing.pem")))


def test_openapi_document_describes_the_local_endpoints(embedded_gateway: Any) -> None:
    from openapi_spec_validator import validate

    gw = embedded_gateway()
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    validate(spec)
    for path in spec["paths"]:
        if "{" in path:  # the deployed-model route: test_gateway_model_routes
            continue
        assert httpx.get(f"{gw.url}{path}").status_code != 404, path
