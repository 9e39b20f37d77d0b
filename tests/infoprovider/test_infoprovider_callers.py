"""The registry's real callers, now that it answers only gateway-signed identities:

- the orchestrator's placement client (hdc_orchestrator.placement) asks the real registry and
  the real ranker over gRPC with its owner identity signed by the gateway's key;
- the embedded/distributed mode's local site agent (hdc_cli.local_site) posts its report over
  HTTP through the REAL gateway (hdc_gateway, embedded OpenID provider), which forwards the
  agent's bearer token with the signed identity; the same post straight to the registry is
  refused; `hdc site list`'s read goes through the gateway the same way.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from hdc_cli import local_site
from hdc_common.grpc import create_server
from hdc_common.identity import Identity
from hdc_gateway.devtoken import mint
from hdc_gateway.service import build_app
from hdc_gateway.settings import GatewaySettings, RouteSettings
from hdc_infoprovider import synthetic
from hdc_infoprovider.agent.publish import PublishError
from hdc_infoprovider.agent_auth import AgentClient, TrustedIssuer
from hdc_infoprovider.report import utcnow
from hdc_orchestrator.placement import PlacementClient, PlacementError
from hdc_ranker.service import build as build_ranker
from hdc_ranker.settings import RankerSettings

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.infoprovider.harness import Registry, registry_settings

OWNER = Identity(subject="alice", issuer="https://op.test", groups=("vo.example.eu",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """An ASGI app on a real loopback port (uvicorn in a thread)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def platform(tmp_path) -> Iterator[dict[str, Any]]:
    """Gateway (embedded OP) in front of the registry, wired like `hdc up` wires them."""
    gateway_port = _free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    reg = Registry(
        database_url=f"sqlite:///{tmp_path / 'ip.db'}",
        bus_url=f"memory:///ip-{uuid.uuid4().hex[:8]}",
        trusted_issuers=[
            TrustedIssuer(
                issuer=local_site.EMBEDDED_ISSUER, jwks_uri=f"{gateway_url}/.well-known/jwks.json"
            )
        ],
        agent_clients=[
            AgentClient(
                site_id=local_site.SITE_ID,
                client_id=local_site.AGENT_CLIENT_ID,
                issuer=local_site.EMBEDDED_ISSUER,
            )
        ],
    ).start()
    public_pem = reg.settings.identity_public_key
    gw_data = tmp_path / "gateway"
    try:
        with Served(reg.components.asgi_app) as registry_http:
            settings = GatewaySettings(
                data_dir=gw_data,
                identity_private_key=reg.private_pem,
                identity_public_key=public_pem,
                routes=[
                    RouteSettings(
                        prefix="/infoprovider", upstream=registry_http.url, strip_prefix=True
                    )
                ],
            )
            with Served(build_app(settings), port=gateway_port) as gateway:
                yield {
                    "registry": reg,
                    "registry_url": registry_http.url,
                    "gateway_url": gateway.url,
                    "gateway_data": gw_data,
                }
    finally:
        reg.stop()


def test_local_site_agent_reports_through_the_gateway(platform):
    gateway_data = platform["gateway_data"]
    report = local_site.publish_once(gateway_data, local_site.registry_url(platform["gateway_url"]))
    site = platform["registry"].site(local_site.SITE_ID)
    assert site is not None and site.summary.last_report_time.seconds > 0
    assert [f.id for f in site.services[0].flavors] == ["this-machine"]
    assert report["site"]["id"] == local_site.SITE_ID

    # `hdc site list`: a user's token at the gateway, which adds the signed identity.
    user_token = mint(gateway_data, "alice")
    resp = httpx.get(
        f"{platform['gateway_url']}/infoprovider/v1/sites",
        headers={"Authorization": f"Bearer {user_token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert [s["id"] for s in resp.json()["sites"]] == [local_site.SITE_ID]


def test_agent_and_user_straight_to_the_registry_are_refused(platform):
    gateway_data = platform["gateway_data"]
    # The agent's token is valid for the registry's own check, but it skipped the gateway.
    with pytest.raises(PublishError, match="401"):
        local_site.publish_once(gateway_data, platform["registry_url"])
    assert platform["registry"].site(local_site.SITE_ID) is None
    resp = httpx.get(
        f"{platform['registry_url']}/v1/sites",
        headers={"Authorization": f"Bearer {mint(gateway_data, 'alice')}"},
        timeout=10,
    )
    assert resp.status_code == 401 and "through the hdc gateway" in resp.json()["detail"]


@pytest.fixture
def collaborators(tmp_path) -> Iterator[tuple[Registry, Any]]:
    """The real registry (holding one site) and the real ranker gRPC servers, trusting the
    same identity key."""
    with FakeOIDCProvider() as op:
        reg = Registry(
            **registry_settings(
                op,
                {"agent-a": "site-a"},
                database_url=f"sqlite:///{tmp_path / 'ip.db'}",
                bus_url=f"memory:///ip-{uuid.uuid4().hex[:8]}",
            )
        ).start()
        report = synthetic.site_report(1, utcnow(), flavors=5, images=3)
        report["site"]["id"] = "site-a"
        resp = reg.http.post(
            "/v1/reports",
            json=report,
            headers={"Authorization": f"Bearer {op.issue_token('agent-a')}"},
        )
        assert resp.status_code == 202, resp.text
    ranker = build_ranker(
        RankerSettings(
            data_dir=tmp_path / "ranker",
            grpc_port=0,
            identity_public_key=reg.settings.identity_public_key,
        )
    )
    ranker_server = create_server(0, ranker.grpc_servicers)
    ranker_server.start()
    try:
        yield reg, ranker_server
    finally:
        ranker_server.stop(0)
        reg.stop()


def test_orchestrator_placement_client_with_its_signed_owner(collaborators):
    reg, ranker_server = collaborators
    client = PlacementClient(
        f"127.0.0.1:{reg.grpc_server.port}",
        f"127.0.0.1:{ranker_server.port}",
        deadline_s=10,
        private_key_pem=reg.private_pem,
    )
    try:
        placed = client.place({"cpus": 1, "ram_mb": 1024}, "dep-1", OWNER)
    finally:
        client.close()
    ranked = [c for c in placed["candidates"] if c["rank"] > 0]
    assert ranked and {c["siteId"] for c in ranked} == {"site-a"}
    assert all("flavor" in c for c in ranked)


def test_orchestrator_without_the_key_is_refused_by_the_registry(collaborators):
    reg, ranker_server = collaborators
    client = PlacementClient(
        f"127.0.0.1:{reg.grpc_server.port}", f"127.0.0.1:{ranker_server.port}", deadline_s=10
    )
    try:
        with pytest.raises(PlacementError) as err:
            client.place({"cpus": 1}, "dep-2", OWNER)
    finally:
        client.close()
    assert "infoprovider answered UNAUTHENTICATED" in str(err.value)
    assert err.value.transient is False


def test_orchestrator_asks_only_for_the_images_it_boots(collaborators):
    """The orchestrator caps the matching images per site it asks the registry for; the
    image a placement pins (the first that matches) is the same as with all of them."""
    from hdc.infoprovider.v1 import infoprovider_pb2_grpc as ip_grpc
    from hdc_orchestrator.acting_identity import OwnerSigner
    from hdc_orchestrator.placement import requirements_message

    reg, ranker_server = collaborators
    req = {"cpus": 1, "ram_mb": 1024, "image": {"os_type": "linux"}}
    placed = {}
    for cap in (0, 1):
        client = PlacementClient(
            f"127.0.0.1:{reg.grpc_server.port}",
            f"127.0.0.1:{ranker_server.port}",
            deadline_s=10,
            private_key_pem=reg.private_pem,
            images_per_candidate=cap,
        )
        try:
            placed[cap] = client.place(req, f"dep-images-{cap}", OWNER)
        finally:
            client.close()
    pinned = {
        cap: [c.get("imageId") for c in p["candidates"] if c["rank"] > 0]
        for cap, p in placed.items()
    }
    assert pinned[0] and pinned[0][0] and pinned[1] == pinned[0]
    # What travels: all 3 of the site's matching images, or just the first.
    stub = ip_grpc.InfoProviderStub(grpc.insecure_channel(f"127.0.0.1:{reg.grpc_server.port}"))
    meta = OwnerSigner(reg.private_pem).metadata(OWNER)
    for cap, expected in ((0, 3), (1, 1)):
        found = stub.FindCandidates(requirements_message(req, "", cap), metadata=meta, timeout=10)
        assert [len(c.images) for c in found.candidates] == [expected]
        assert found.candidates[0].images[0].id == pinned[0][0]
