"""`/deployments/{uuid}/model/...`: the gateway looks the deployment up with the caller's
identity and proxies to its `endpoint` output, only on allowed hosts.

The deployment lookup goes to a contract double of the orchestrator's
`GET /deployments/{uuid}` (owner or platform admin sees it, anyone else 404), the
same rule the real orchestrator applies; tests/e2e runs the route against the real one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hdc_common.errors import Problem
from hdc_common.identity import InternalTokenVerifier, identity_from_headers
from hdc_gateway import devtoken
from hdc_gateway.model_routes import HostAllowList, parse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrchestratorDouble:
    """The orchestrator's GET /deployments/{uuid} contract: identity required, visibility
    by owner (or platform admin), INDIGO error body on 404."""

    def __init__(self, public_key: str, serve: Callable[[Any], Any]) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.lookups = 0
        verifier = InternalTokenVerifier(public_key)

        async def get(request: Request) -> Response:
            self.lookups += 1
            try:
                who = identity_from_headers(request.headers, verifier)
            except Problem as exc:
                return JSONResponse({"code": 401, "message": exc.detail}, status_code=401)
            doc = self.deployments.get(request.path_params["uuid"])
            if doc is None or (doc["owner"] != who.subject and not who.is_platform_admin):
                return JSONResponse(
                    {"code": 404, "title": "Not Found", "message": "no such deployment"},
                    status_code=404,
                )
            return JSONResponse({k: v for k, v in doc.items() if k != "owner"})

        self.server = serve(Starlette(routes=[Route("/deployments/{uuid}", get)]))


@pytest.fixture(scope="module")
def model_backend(keys: tuple[str, str], serve: Callable[[Any], Any]) -> Any:
    """A model API: answers who called, on which path, and how much it was sent."""
    verifier = InternalTokenVerifier(keys[1])

    async def any_path(request: Request) -> Response:
        try:
            who = identity_from_headers(request.headers, verifier)
        except Problem as exc:
            return JSONResponse(exc.to_dict(), status_code=401)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse(
            {
                "subject": who.subject,
                "path": request.url.path,
                "query": request.url.query,
                "received": size,
                "authorization": request.headers.get("authorization"),
                "prefix": request.headers.get("x-forwarded-prefix"),
            }
        )

    return serve(Starlette(routes=[Route("/{rest:path}", any_path, methods=["GET", "POST"])]))


@pytest.fixture(scope="module")
def orchestrator(keys: tuple[str, str], serve: Callable[[Any], Any]) -> OrchestratorDouble:
    return OrchestratorDouble(keys[1], serve)


def _auth(tmp_path: Path, subject: str, roles: tuple[str, ...] = ()) -> dict[str, str]:
    return {"Authorization": f"Bearer {devtoken.mint(tmp_path, subject, [], roles=list(roles))}"}


def _deployment(owner: str, endpoint: Any, status: str = "CREATE_COMPLETE") -> dict[str, Any]:
    outputs = {"model": "digits"} if endpoint is None else {"endpoint": endpoint, "model": "x"}
    return {"owner": owner, "status": status, "outputs": outputs}


def test_owner_reaches_the_model_with_identity_and_without_token(
    embedded_gateway: Any, orchestrator: OrchestratorDouble, model_backend: Any, tmp_path: Path
) -> None:
    orchestrator.deployments["d-own"] = _deployment("alice", model_backend.url + "/")
    gw = embedded_gateway(model_lookup_upstream=orchestrator.server.url)
    alice = _auth(tmp_path, "alice")
    with httpx.Client(base_url=gw.url, headers=alice) as client:
        r = client.get("/deployments/d-own/model/v2/models/?x=1")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["subject"] == "alice"
        assert body["path"] == "/v2/models/" and body["query"] == "x=1"
        # The model is the deployment owner's code: the caller's bearer token stays behind.
        assert body["authorization"] is None
        assert body["prefix"] == "/deployments/d-own/model"
        # An upload streams through the aiohttp path.
        data = b"x" * 300_000
        up = client.post("/deployments/d-own/model/v2/models/x/predict/", content=data)
        assert up.status_code == 200 and up.json()["received"] == len(data)
        assert client.get("/deployments/d-own/model").json()["path"] == "/"
        # An admin sees every deployment, like at the orchestrator.
        admin = _auth(tmp_path, "root", roles=("platform-admin",))
        assert client.get("/deployments/d-own/model/v2/", headers=admin).json()["subject"] == "root"


def test_visibility_and_authentication(
    embedded_gateway: Any, orchestrator: OrchestratorDouble, model_backend: Any, tmp_path: Path
) -> None:
    orchestrator.deployments["d-vis"] = _deployment("alice", model_backend.url)
    gw = embedded_gateway(model_lookup_upstream=orchestrator.server.url)
    with httpx.Client(base_url=gw.url) as client:
        mallory = client.get("/deployments/d-vis/model/v2/", headers=_auth(tmp_path, "mallory"))
        assert mallory.status_code == 404
        assert "d-vis" in mallory.json()["detail"]
        missing = client.get("/deployments/nope/model/v2/", headers=_auth(tmp_path, "alice"))
        assert missing.status_code == 404
        anonymous = client.get("/deployments/d-vis/model/v2/")
        assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
        bad_id = client.get("/deployments/a%20b/model/v2/", headers=_auth(tmp_path, "alice"))
        assert bad_id.status_code == 400


@pytest.mark.parametrize(
    ("status", "endpoint", "code", "words"),
    [
        ("CREATE_IN_PROGRESS", "http://127.0.0.1:1", 409, "CREATE_IN_PROGRESS"),
        ("DELETE_IN_PROGRESS", "http://127.0.0.1:1", 409, "DELETE_IN_PROGRESS"),
        ("CREATE_COMPLETE", None, 409, "no 'endpoint' output"),
        ("CREATE_COMPLETE", "http://203.0.113.9:5000", 403, "model_upstream_hosts"),
        ("CREATE_COMPLETE", "http://model.evil.example:80", 403, "model_upstream_hosts"),
        ("CREATE_COMPLETE", "file:///etc/passwd", 403, "http(s) URL"),
        ("CREATE_COMPLETE", "http://user:pw@127.0.0.1:9/", 403, "http(s) URL"),
        ("CREATE_COMPLETE", 42, 409, "no 'endpoint' output"),
    ],
)
def test_not_ready_or_refused_endpoints(
    embedded_gateway: Any,
    orchestrator: OrchestratorDouble,
    tmp_path: Path,
    status: str,
    endpoint: Any,
    code: int,
    words: str,
) -> None:
    orchestrator.deployments["d-bad"] = _deployment("alice", endpoint, status)
    gw = embedded_gateway(model_lookup_upstream=orchestrator.server.url, model_lookup_cache_s=0)
    r = httpx.get(f"{gw.url}/deployments/d-bad/model/v2/", headers=_auth(tmp_path, "alice"))
    assert r.status_code == code, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.json()["detail"]


def test_endpoint_on_an_hdc_service_is_refused(
    embedded_gateway: Any, orchestrator: OrchestratorDouble, echo_backend: Any, tmp_path: Path
) -> None:
    # `localhost` spelled differently is still the orchestrator's (and a routed service's) port.
    orch_port = orchestrator.server.port
    orchestrator.deployments["d-orch"] = _deployment("alice", f"http://localhost:{orch_port}")
    orchestrator.deployments["d-svc"] = _deployment("alice", echo_backend.url)
    gw = embedded_gateway(model_lookup_upstream=orchestrator.server.url)
    with httpx.Client(base_url=gw.url, headers=_auth(tmp_path, "alice")) as client:
        for dep in ("d-orch", "d-svc"):
            r = client.get(f"/deployments/{dep}/model/deployments/d-orch")
            assert r.status_code == 403 and "hdc's own services" in r.json()["detail"], r.text


def test_allowed_hosts_setting(
    embedded_gateway: Any, orchestrator: OrchestratorDouble, model_backend: Any, tmp_path: Path
) -> None:
    orchestrator.deployments["d-host"] = _deployment("alice", model_backend.url)
    gw = embedded_gateway(
        model_lookup_upstream=orchestrator.server.url, model_upstream_hosts=["10.0.0.0/8"]
    )
    r = httpx.get(f"{gw.url}/deployments/d-host/model/v2/", headers=_auth(tmp_path, "alice"))
    assert r.status_code == 403


def test_lookup_is_cached_and_a_stale_endpoint_is_looked_up_again(
    embedded_gateway: Any, orchestrator: OrchestratorDouble, model_backend: Any, tmp_path: Path
) -> None:
    orchestrator.deployments["d-cache"] = _deployment("alice", model_backend.url)
    gw = embedded_gateway(model_lookup_upstream=orchestrator.server.url, model_lookup_cache_s=60)
    with httpx.Client(base_url=gw.url, headers=_auth(tmp_path, "alice")) as client:
        before = orchestrator.lookups
        for _ in range(3):
            assert client.get("/deployments/d-cache/model/v2/").status_code == 200
        assert orchestrator.lookups - before == 1
        # The deployment goes away and its model stops: the cached endpoint fails, the
        # gateway looks again and says why.
        orchestrator.deployments["d-cache"] = _deployment(
            "alice", f"http://127.0.0.1:{free_port()}", "DELETE_IN_PROGRESS"
        )
        gw_cached = client.get("/deployments/d-cache/model/v2/")
        assert gw_cached.status_code == 200  # still the cached, live endpoint
        del orchestrator.deployments["d-cache"]
    gw2 = embedded_gateway(model_lookup_upstream=orchestrator.server.url, model_lookup_cache_s=60)
    orchestrator.deployments["d-gone"] = _deployment("alice", f"http://127.0.0.1:{free_port()}")
    with httpx.Client(base_url=gw2.url, headers=_auth(tmp_path, "alice")) as client:
        assert client.get("/deployments/d-gone/model/v2/").status_code == 502
        del orchestrator.deployments["d-gone"]
        assert client.get("/deployments/d-gone/model/v2/").status_code == 404


def test_orchestrator_unreachable_is_503(embedded_gateway: Any, tmp_path: Path) -> None:
    gw = embedded_gateway(model_lookup_upstream=f"http://127.0.0.1:{free_port()}")
    r = httpx.get(f"{gw.url}/deployments/d1/model/v2/", headers=_auth(tmp_path, "alice"))
    assert r.status_code == 503


def test_parse_and_host_allow_list() -> None:
    assert parse("/deployments/abc/model/v2/models/") == ("abc", "/v2/models/")
    assert parse("/deployments/abc/model") == ("abc", "/")
    assert parse("/deployments/abc") is None
    assert parse("/deployments/abc/other/x") is None
    assert parse("/orchestrator/deployments/abc/model") is None
    hosts = HostAllowList(["127.0.0.0/8", "::1/128", "localhost", "*.models.example.org"])
    assert hosts.allows("127.0.0.1") and hosts.allows("::1") and hosts.allows("[::1]")
    assert hosts.allows("LOCALHOST") and hosts.allows("a.models.example.org")
    assert not hosts.allows("models.example.org.evil.com")
    assert not hosts.allows("10.0.0.1") and not hosts.allows("example.org")
