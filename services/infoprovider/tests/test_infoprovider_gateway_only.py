"""Gateway-only: every REST operation and every gRPC method of the registry refuses a caller
without a valid gateway-signed identity (missing, forged with another key, expired, garbage),
and answers one that has it. Probes, metrics and the OpenAPI document stay open."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_common.identity import (
    GRPC_METADATA_KEY,
    HEADER,
    Identity,
    InternalTokenSigner,
    generate_keypair,
)
from hdc_infoprovider.report import utcnow
from hdc_infoprovider.rest import SPEC

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.infoprovider.harness import Registry, registry_settings

# One call per OpenAPI operation, with the status a signed caller gets (data: one site).
CALLS: dict[str, tuple[str, str, Any, int]] = {
    "get_report_schema": ("GET", "/v1/schemas/site-report.json", None, 200),
    "post_report": ("POST", "/v1/reports", "REPORT", 202),
    "list_sites": ("GET", "/v1/sites", None, 200),
    "get_site": ("GET", "/v1/sites/site-a", None, 200),
    "get_service": ("GET", "/v1/services/site-a.nova", None, 200),
    "search_candidates": ("POST", "/v1/candidates/search", {"cpus": 1}, 200),
    "list_rejected_reports": ("GET", "/v1/rejected-reports", None, 200),
    "cmdb_provider_list": ("GET", "/cmdb/v1/provider/list", None, 200),
    "cmdb_provider": ("GET", "/cmdb/v1/provider/id/site-a", None, 200),
    "cmdb_provider_services": ("GET", "/cmdb/v1/provider/id/site-a/has_many/services", None, 200),
    "cmdb_service_list": ("GET", "/cmdb/v1/service/list", None, 200),
    "cmdb_service": ("GET", "/cmdb/v1/service/id/site-a.nova", None, 200),
    "cmdb_service_has_many": (
        "GET",
        "/cmdb/v1/service/id/site-a.nova/has_many/flavors",
        None,
        200,
    ),
    "cmdb_tenant_list": ("GET", "/cmdb/v1/tenant/list", None, 200),
    "cmdb_tenant": ("GET", "/cmdb/v1/tenant/id/TENANT", None, 200),
    "cmdb_tenant_has_many": ("GET", "/cmdb/v1/tenant/id/TENANT/has_many/flavors", None, 200),
    "cmdb_tenants_by_organisation": (
        "GET",
        "/cmdb/v1/tenant/filters/iam_organisation/vo.example.eu",
        None,
        200,
    ),
    "cmdb_image_list": ("GET", "/cmdb/v1/image/list", None, 200),
    "cmdb_image": ("GET", "/cmdb/v1/image/id/IMAGE", None, 200),
    "cmdb_flavor_list": ("GET", "/cmdb/v1/flavor/list", None, 200),
    "cmdb_flavor": ("GET", "/cmdb/v1/flavor/id/FLAVOR", None, 200),
}


def _forged() -> str:
    """Shaped exactly like the gateway's header, but signed with a key nobody trusts."""
    other_private, _ = generate_keypair()
    return InternalTokenSigner(other_private).sign(
        Identity(subject="mallory", issuer="https://op.test", roles=("platform-admin",))
    )


def _expired(reg: Registry) -> str:
    # Signed with the right key but past exp (beyond the verifier's 5 s leeway).
    return InternalTokenSigner(reg.private_pem, ttl_s=-120).sign(
        Identity(subject="user", issuer="https://op.test")
    )


BAD = {
    "missing": lambda reg: None,
    "forged": lambda reg: _forged(),
    "expired": _expired,
    "garbage": lambda reg: "not-a-jwt",
}


@pytest.fixture(scope="module")
def op():
    with FakeOIDCProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def reg(op, tmp_path_factory):
    db = tmp_path_factory.mktemp("gateway-only") / "ip.db"
    registry = Registry(
        **registry_settings(
            op,
            {"agent-a": "site-a"},
            database_url=f"sqlite:///{db}",
            bus_url=f"memory:///ip-{uuid.uuid4().hex[:8]}",
        )
    ).start()
    resp = registry.http.post(
        "/v1/reports",
        json=_report(),
        headers={"Authorization": f"Bearer {op.issue_token('agent-a')}"},
    )
    assert resp.status_code == 202, resp.text
    yield registry
    registry.stop()


def _report() -> dict[str, Any]:
    return {
        "site": {"id": "site-a", "name": "Site A"},
        "creationTime": utcnow().isoformat(),
        "validity": 3600,
        "services": [
            {
                "id": "nova",
                "type": "org.openstack.nova",
                "endpoint": "https://keystone.site-a.example.org:5000/v3",
                "component": "openstack",
                "flavors": [{"id": "1", "name": "small", "cpus": 2, "ram_mb": 4096}],
                "images": [{"id": "img-1", "name": "ubuntu-22.04", "os_distribution": "ubuntu"}],
                "quotas": [{"tenant": "vo.example.eu", "project_id": "p1", "limits": {}}],
            }
        ],
    }


def _operation_ids() -> set[str]:
    spec = yaml.safe_load(Path(SPEC).read_text())
    return {op["operationId"] for item in spec["paths"].values() for op in item.values()}


def _concrete(reg: Registry, op_id: str, op) -> tuple[str, str, dict[str, Any]]:
    method, path, body, _ = CALLS[op_id]
    if "TENANT" in path or "IMAGE" in path or "FLAVOR" in path:
        ids = {
            kind.upper(): reg.http.get(f"/cmdb/v1/{kind.lower()}/list").json()["rows"][0]["id"]
            for kind in ("TENANT", "IMAGE", "FLAVOR")
        }
        for key, value in ids.items():
            path = path.replace(key, value)
    kwargs: dict[str, Any] = {}
    if body == "REPORT":
        kwargs["json"] = _report()
        kwargs["headers"] = {"Authorization": f"Bearer {op.issue_token('agent-a')}"}
    elif body is not None:
        kwargs["json"] = body
    return method, path, kwargs


def test_every_operation_has_a_case():
    assert _operation_ids() == set(CALLS)


@pytest.mark.parametrize("how", sorted(BAD))
@pytest.mark.parametrize("op_id", sorted(CALLS))
def test_rest_refuses_callers_without_a_valid_identity(reg, op, op_id, how):
    method, path, kwargs = _concrete(reg, op_id, op)
    token = BAD[how](reg)
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers[HEADER] = token
    resp = reg.bare_http.request(method, path, headers=headers, **kwargs)
    assert resp.status_code == 401, (op_id, resp.text)
    assert resp.headers["content-type"] == "application/problem+json"
    detail = resp.json()["detail"]
    assert ("through the hdc gateway" in detail) if how == "missing" else ("invalid" in detail)


def test_rest_answers_a_signed_caller(reg, op):
    for op_id in sorted(CALLS):
        method, path, kwargs = _concrete(reg, op_id, op)
        headers = kwargs.pop("headers", {})
        if op_id == "list_rejected_reports":
            headers.update(reg.operator_headers())
        resp = reg.http.request(method, path, headers=headers, **kwargs)
        assert resp.status_code == CALLS[op_id][3], (op_id, resp.text)


def test_a_report_without_identity_is_not_applied(reg, op):
    # A valid agent token alone does not reach the registry: it must come through the gateway.
    before = reg.http.get("/v1/sites/site-a").json()["summary"]["last_report_time"]
    doc = _report()
    doc["services"][0]["flavors"].append({"id": "2", "name": "big", "cpus": 64, "ram_mb": 1})
    resp = reg.bare_http.post(
        "/v1/reports", json=doc, headers={"Authorization": f"Bearer {op.issue_token('agent-a')}"}
    )
    assert resp.status_code == 401
    site = reg.http.get("/v1/sites/site-a").json()
    assert site["summary"]["last_report_time"] == before
    assert {f["id"] for f in site["services"][0]["flavors"]} == {"1"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_probes_metrics_and_docs_stay_open(reg, path):
    assert reg.bare_http.get(path).status_code == 200


GRPC_CALLS = {
    "FindCandidates": lambda stub: stub.FindCandidates,
    "GetSite": lambda stub: stub.GetSite,
    "ListSites": lambda stub: stub.ListSites,
}
GRPC_REQUESTS = {
    "FindCandidates": pb.Requirements(cpus=1),
    "GetSite": pb.GetSiteRequest(site_id="site-a"),
    "ListSites": pb.ListSitesRequest(),
}


@pytest.mark.parametrize("how", sorted(BAD))
@pytest.mark.parametrize("method", sorted(GRPC_CALLS))
def test_grpc_refuses_callers_without_a_valid_identity(reg, method, how):
    token = BAD[how](reg)
    metadata = [(GRPC_METADATA_KEY, token)] if token is not None else []
    call = GRPC_CALLS[method](reg.bare_stub)
    with pytest.raises(grpc.RpcError) as err:
        call(GRPC_REQUESTS[method], timeout=10, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    expected = "through the hdc gateway" if how == "missing" else "invalid X-HDC-Identity"
    assert expected in err.value.details()


def test_grpc_identity_is_checked_before_the_request(reg):
    # A caller without identity learns nothing, not even that its request is invalid.
    with pytest.raises(grpc.RpcError) as err:
        reg.bare_stub.GetSite(pb.GetSiteRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_answers_a_signed_caller(reg):
    found = reg.stub.FindCandidates(GRPC_REQUESTS["FindCandidates"], timeout=10)
    assert [c.service_id for c in found.candidates] == ["site-a.nova"]
    assert reg.stub.GetSite(GRPC_REQUESTS["GetSite"], timeout=10).summary.id == "site-a"
    assert [s.id for s in reg.stub.ListSites(GRPC_REQUESTS["ListSites"], timeout=10).sites] == [
        "site-a"
    ]
