"""Limits and HTTP hygiene: rate limits, CORS, security headers, routing errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from hdc_gateway import devtoken


def _auth(tmp_path: Path, subject: str = "u", groups: tuple[str, ...] = ()) -> dict[str, str]:
    return {"Authorization": f"Bearer {devtoken.mint(tmp_path, subject, list(groups))}"}


def test_rate_limit_per_identity_answers_429_with_retry_after(
    embedded_gateway: Any, tmp_path: Path
) -> None:
    gw = embedded_gateway(rate_limit={"per_identity": {"rate": 0.05, "burst": 3}})
    alice, bob = _auth(tmp_path, "alice"), _auth(tmp_path, "bob")
    with httpx.Client(base_url=gw.url) as client:
        codes = [client.get("/svc/", headers=alice).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = client.get("/svc/", headers=alice)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        # Another identity has its own bucket.
        assert client.get("/svc/", headers=bob).status_code == 200


def test_rate_limit_per_ip(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway(rate_limit={"per_ip": {"rate": 0.05, "burst": 2}})
    with httpx.Client(base_url=gw.url) as client:
        # Three different identities from one address: the address's bucket runs dry.
        codes = [
            client.get("/open/x", headers=_auth(tmp_path, f"u{i}")).status_code for i in range(3)
        ]
    assert codes == [200, 200, 429]


def test_trusted_proxy_forwarded_for(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway(
        trusted_proxies=["127.0.0.0/8"], rate_limit={"per_ip": {"rate": 0.05, "burst": 1}}
    )
    with httpx.Client(base_url=gw.url, headers=_auth(tmp_path)) as client:
        first = client.get("/open/x", headers={"X-Forwarded-For": "203.0.113.7"})
        assert first.status_code == 200
        assert first.json()["xff"] == "203.0.113.7, 127.0.0.1"
        # Same proxy, different client behind it: its own bucket.
        assert client.get("/open/x", headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 200
        assert client.get("/open/x", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 429


def test_untrusted_peer_cannot_spoof_forwarded_for(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway()
    resp = httpx.get(
        f"{gw.url}/open/x", headers={"X-Forwarded-For": "203.0.113.7", **_auth(tmp_path)}
    )
    assert resp.json()["xff"] == "127.0.0.1"


def test_cors_preflight_and_response_headers(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway(
        cors={"allow_origins": ["https://dash.example.org"], "allow_credentials": True}
    )
    pre = httpx.options(
        f"{gw.url}/svc/deployments",
        headers={
            "Origin": "https://dash.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://dash.example.org"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    assert pre.headers["access-control-allow-credentials"] == "true"
    denied = httpx.options(
        f"{gw.url}/svc/deployments",
        headers={"Origin": "https://evil.example.org", "Access-Control-Request-Method": "POST"},
    )
    assert denied.status_code == 403
    assert "access-control-allow-origin" not in denied.headers
    real = httpx.get(
        f"{gw.url}/svc/x", headers={"Origin": "https://dash.example.org", **_auth(tmp_path)}
    )
    assert real.headers["access-control-allow-origin"] == "https://dash.example.org"
    assert real.headers["vary"] == "Origin"
    # Errors carry CORS headers too, so the dashboard can read a 401.
    unauth = httpx.get(f"{gw.url}/svc/x", headers={"Origin": "https://dash.example.org"})
    assert unauth.status_code == 401
    assert unauth.headers["access-control-allow-origin"] == "https://dash.example.org"


def test_errors_are_problem_json_with_security_headers(
    embedded_gateway: Any, tmp_path: Path
) -> None:
    gw = embedded_gateway(routes=[{"prefix": "/svc", "upstream": "http://127.0.0.1:9"}])
    missing = httpx.get(f"{gw.url}/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["x-content-type-options"] == "nosniff"
    assert "no service is routed" in missing.json()["detail"]
    dots = httpx.get(f"{gw.url}/svc/healthz/%2E%2E/admin")
    assert dots.status_code == 400
    down = httpx.get(f"{gw.url}/svc/x", headers=_auth(tmp_path))
    assert down.status_code == 502
    assert "unreachable" in down.json()["detail"]


def test_optional_access_forwards_identity_when_present(
    embedded_gateway: Any, tmp_path: Path
) -> None:
    gw = embedded_gateway()
    anonymous = httpx.get(f"{gw.url}/open/x")
    assert anonymous.status_code == 401  # the backend itself requires an identity
    assert "gateway" in anonymous.json()["detail"]
    known = httpx.get(f"{gw.url}/open/x", headers=_auth(tmp_path, "carol"))
    assert known.json()["subject"] == "carol"
    bad = httpx.get(f"{gw.url}/open/x", headers={"Authorization": "Bearer a.b.c"})
    assert bad.status_code == 401  # an invalid token is refused, not ignored


def test_group_policy_and_forwarded_authorization(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway()
    outsider = httpx.get(f"{gw.url}/team/x", headers=_auth(tmp_path, "o"))
    assert outsider.status_code == 403
    member = httpx.get(f"{gw.url}/team/x", headers=_auth(tmp_path, "m", ("ml-team",)))
    assert member.status_code == 200
    assert member.json()["path"] == "/team/x"  # not stripped on this route
    assert member.json()["authorization"].startswith("Bearer ")


def test_basic_auth_and_opaque_tokens_are_refused(embedded_gateway: Any) -> None:
    gw = embedded_gateway()
    basic = httpx.get(f"{gw.url}/svc/x", auth=("user", "pass"))
    assert basic.status_code == 401
    assert 'error="invalid_request"' in basic.headers["www-authenticate"]
    opaque = httpx.get(
        f"{gw.url}/svc/x", headers={"Authorization": "Bearer 2YotnFZFEjr1zCsicMWpAA"}
    )
    assert opaque.status_code == 401
    assert "introspection" in opaque.json()["detail"]


def test_metrics_and_health(embedded_gateway: Any) -> None:
    gw = embedded_gateway()
    assert httpx.get(f"{gw.url}/healthz").json()["status"] == "ok"
    httpx.get(f"{gw.url}/svc/x")
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'hdc_gateway_requests_total{route="/svc",status="401"}' in metrics


def test_slow_upstream_gets_504(embedded_gateway: Any, echo_backend: Any, tmp_path: Path) -> None:
    gw = embedded_gateway(
        routes=[
            {
                "prefix": "/svc",
                "upstream": echo_backend.url,
                "strip_prefix": True,
                "read_timeout_s": 0.3,
            }
        ]
    )
    resp = httpx.get(f"{gw.url}/svc/slow", headers=_auth(tmp_path), timeout=10)
    assert resp.status_code == 504
    assert resp.json()["detail"] == "the service behind /svc did not answer in time"


def test_connection_listed_headers_are_not_forwarded(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway()
    headers = {"Connection": "keep-alive, X-Hop-Only", "X-Hop-Only": "1", "X-End-To-End": "2"}
    body = httpx.get(f"{gw.url}/svc/x", headers={**headers, **_auth(tmp_path)}).json()
    assert body["hop"] is None and body["kept"] == "2"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_must_start_answering_in_time(
    method: str, embedded_gateway: Any, echo_backend: Any, tmp_path: Path
) -> None:
    # No read timeout on the route (streams may idle), but the answer must begin in time.
    gw = embedded_gateway(
        upstream_header_timeout_s=0.3,
        routes=[{"prefix": "/svc", "upstream": echo_backend.url, "strip_prefix": True}],
    )
    resp = httpx.request(
        method,
        f"{gw.url}/svc/slow",
        headers=_auth(tmp_path),
        content=b"x" if method == "POST" else None,
        timeout=10,
    )
    assert resp.status_code == 504
