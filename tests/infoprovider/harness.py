"""An in-process infoprovider for tests: the real service (`build(settings)`), its bus
workers, its gRPC server on a free port and an HTTP test client; plus the OIDC and
OpenStack fakes an agent talks to.

The service answers only gateway-signed identities, so the harness holds the identity key
pair and its `stub` and `http` client present a signed caller the way the gateway (REST)
and the orchestrator (gRPC) do; `bare_stub` and `bare_http` present nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc.infoprovider.v1 import infoprovider_pb2_grpc as pb_grpc
from hdc_common.grpc import create_server
from hdc_common.identity import (
    GRPC_METADATA_KEY,
    HEADER,
    Identity,
    InternalTokenSigner,
    generate_keypair,
)
from hdc_infoprovider.agent_auth import AgentClient, TrustedIssuer
from hdc_infoprovider.service import InfoProviderSettings, build

T = TypeVar("T")


def wait_for(
    fn: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until fn() returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or fn}: last value {last!r}")


class _SignedCaller(grpc.UnaryUnaryClientInterceptor):
    """Adds a freshly signed `x-hdc-identity` to every call, like the orchestrator does."""

    def __init__(self, sign: Callable[[], str]) -> None:
        self.sign = sign

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), (GRPC_METADATA_KEY, self.sign())]
        return continuation(details._replace(metadata=metadata), request)


class Registry:
    def __init__(self, **overrides: Any) -> None:
        self.private_pem, public_pem = generate_keypair()
        self.signer = InternalTokenSigner(self.private_pem)
        self.settings = InfoProviderSettings(identity_public_key=public_pem, **overrides)
        self.components = build(self.settings)
        self.grpc_server = create_server(0, self.components.grpc_servicers)
        self.channel: grpc.Channel | None = None
        self.http: Any = None

    def start(self) -> Registry:
        for bg in self.components.background:
            bg.start()
        self.grpc_server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_server.port}")
        self.bare_stub = pb_grpc.InfoProviderStub(self.channel)
        signed = grpc.intercept_channel(self.channel, _SignedCaller(self.caller_token))
        self.stub = pb_grpc.InfoProviderStub(signed)
        self.bare_http = self.components.asgi_app.test_client()
        self.http = _SignedHttp(self.bare_http, self.caller_token)
        return self

    def caller_token(self, subject: str = "user", roles: tuple[str, ...] = ()) -> str:
        """A gateway-signed identity, as the gateway forwards it for a logged-in user."""
        return self.signer.sign(Identity(subject=subject, issuer="https://op.test", roles=roles))

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.grpc_server.stop(0)
        for bg in reversed(self.components.background):
            bg.stop()

    def operator_headers(self, roles: tuple[str, ...] = ("platform-admin",)) -> dict[str, str]:
        return {HEADER: self.caller_token("operator", roles)}

    def find(self, **req: Any) -> pb.Candidates:
        return self.stub.FindCandidates(pb.Requirements(**req), timeout=10)

    def site(self, site_id: str) -> pb.Site | None:
        try:
            return self.stub.GetSite(pb.GetSiteRequest(site_id=site_id), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def rejected(self) -> list[dict[str, Any]]:
        resp = self.http.get("/v1/rejected-reports", headers=self.operator_headers())
        assert resp.status_code == 200, resp.text
        return resp.json()["rejected_reports"]


class _SignedHttp:
    """The test client with a fresh signed identity on every request (explicit headers win)."""

    def __init__(self, client: Any, sign: Callable[[], str]) -> None:
        self.client = client
        self.sign = sign

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        kwargs["headers"] = {HEADER: self.sign(), **(kwargs.get("headers") or {})}
        return self.client.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)


def registry_settings(op: Any, sites: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Settings trusting the fake OP, with `sites` = {client_id: site_id}."""
    return {
        "trusted_issuers": [TrustedIssuer(issuer=op.issuer)],
        "agent_clients": [
            AgentClient(site_id=site, client_id=client, issuer=op.issuer)
            for client, site in sites.items()
        ],
        **extra,
    }
