"""The ranker behind the REAL gateway (hdc_gateway, embedded OpenID provider): the
CloudProviderRanker-compatible `POST /rank` is reachable the way the INDIGO orchestrator
would call it (its bearer token at the gateway, which adds the signed `X-HDC-Identity`),
while the same request sent straight to the ranker is refused.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hdc_common.identity import generate_keypair
from hdc_gateway.devtoken import mint
from hdc_gateway.service import build_app
from hdc_gateway.settings import GatewaySettings, RouteSettings
from hdc_ranker.service import build
from hdc_ranker.settings import RankerSettings
from starlette.testclient import TestClient

REQUEST = (
    Path(__file__).parents[2] / "services/ranker/tests/data/cloudproviderranker/cpr-request.json"
).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keypair()


@pytest.fixture(scope="module")
def ranker_url(keys: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = RankerSettings(
        data_dir=tmp_path_factory.mktemp("ranker"), grpc_port=0, identity_public_key=keys[1]
    )
    port = _free_port()
    config = uvicorn.Config(
        build(settings).asgi_app, host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the ranker did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def gateway(
    keys: tuple[str, str], ranker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Any]]:
    data = tmp_path_factory.mktemp("gateway")
    settings = GatewaySettings(
        data_dir=data,
        identity_private_key=keys[0],
        identity_public_key=keys[1],
        routes=[RouteSettings(prefix="/ranker", upstream=ranker_url, strip_prefix=True)],
    )
    with TestClient(build_app(settings)) as client:
        yield client, data


def test_cpr_rank_through_the_gateway_is_answered(gateway: tuple[TestClient, Any]) -> None:
    client, data = gateway
    token = mint(data, "indigo-orchestrator")
    r = client.post(
        "/ranker/rank",
        content=REQUEST,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert '"total_score":227.16348' in r.text  # the CloudProviderRanker golden answer


def test_cpr_rank_without_a_token_is_refused_by_the_gateway(
    gateway: tuple[TestClient, Any],
) -> None:
    client, _ = gateway
    r = client.post("/ranker/rank", content=REQUEST, headers={"content-type": "application/json"})
    assert r.status_code == 401


def test_cpr_rank_straight_to_the_ranker_is_refused(
    gateway: tuple[TestClient, Any], ranker_url: str
) -> None:
    client, data = gateway
    # Even the user's valid OIDC token does not help: only the gateway's signed header does.
    token = mint(data, "indigo-orchestrator")
    r = httpx.post(
        f"{ranker_url}/rank",
        content=REQUEST,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 401
    assert "through the hdc gateway" in r.json()["detail"]
