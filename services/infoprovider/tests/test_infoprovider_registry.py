"""Registry semantics over HTTP (POST /v1/reports) and the INDIGO CMDB-compatible views."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_infoprovider.liveness import DownDetector
from hdc_infoprovider.report import utcnow

from tests.fakes.oidc_provider import FakeOIDCProvider
from tests.infoprovider.harness import Registry, registry_settings


@pytest.fixture
def op():
    with FakeOIDCProvider() as provider:
        yield provider


@pytest.fixture(params=["sqlite", "postgres"])
def reg(request, op):
    # Both databases: ingestion writes rows differently on each (bulk JSON on PostgreSQL).
    url = request.getfixturevalue(f"{request.param}_url")
    registry = Registry(
        **registry_settings(
            op,
            {"agent-a": "site-a"},
            database_url=url,
            bus_url=f"memory:///ip-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
    ).start()
    yield registry
    registry.stop()


def report(created_ago_s: float = 5, validity: int = 600, **svc: Any) -> dict[str, Any]:
    service = {
        "id": "nova",
        "type": "org.openstack.nova",
        "endpoint": "https://keystone.site-a.example.org:5000/v3",
        "component": "openstack",
        "identity_providers": [{"issuer": "https://iam.example.org/", "name": "iam"}],
        "flavors": [
            {"id": "1", "name": "small", "cpus": 2, "ram_mb": 4096, "disk_gb": 20},
            {
                "id": "2",
                "name": "gpu",
                "cpus": 8,
                "ram_mb": 32768,
                "gpus": 1,
                "gpu_vendor": "nvidia",
                "gpu_model": "T4",
            },
        ],  # fmt: skip
        "images": [
            {
                "id": "img-1",
                "name": "ubuntu-22.04",
                "os_type": "linux",
                "os_distribution": "ubuntu",
                "os_version": "22.04",
                "architecture": "x86_64",
            },
        ],  # fmt: skip
        "networks": [{"id": "net-1", "name": "public", "public": True}],
        "quotas": [
            {
                "tenant": "vo.example.eu",
                "project_id": "p1",
                "project_name": "vo-example",
                "limits": {"instances": 10, "cores": 20},
                "usage": {"instances": 1, "cores": 2},
            },
        ],  # fmt: skip
    }
    service.update(svc)
    return {
        "site": {"id": "site-a", "name": "Site A", "country": "IT"},
        "creationTime": (utcnow() - timedelta(seconds=created_ago_s)).isoformat(),
        "validity": validity,
        "services": [service],
    }


def post(reg: Registry, op, doc: dict[str, Any]) -> Any:
    return reg.http.post(
        "/v1/reports", json=doc, headers={"Authorization": f"Bearer {op.issue_token('agent-a')}"}
    )


def test_upsert_delete_and_order_of_reports(reg, op):
    assert post(reg, op, report(created_ago_s=30)).status_code == 202
    doc = report(created_ago_s=20)
    doc["services"][0]["flavors"].pop(0)
    doc["services"][0]["flavors"][0]["gpu_model"] = "Tesla T4"
    body = post(reg, op, doc).json()
    assert body["changes"]["flavors"] == {"added": 0, "updated": 1, "removed": 1}
    assert body["changes"]["images"] == {"added": 0, "updated": 0, "removed": 0}
    site = reg.site("site-a")
    assert [(f.id, f.gpu_model) for f in site.services[0].flavors] == [("2", "Tesla T4")]
    # Every record carries its freshness.
    fl = site.services[0].flavors[0]
    assert fl.freshness.validity_s == 600 and not fl.freshness.stale
    # A report older than the one held is refused (out-of-order delivery).
    resp = post(reg, op, report(created_ago_s=25))
    assert resp.status_code == 409
    # A vanished service goes with its records.
    doc = report(created_ago_s=10)
    doc["services"] = []
    assert post(reg, op, doc).json()["changes"]["services"]["removed"] == 1
    assert not reg.site("site-a").services


def test_many_records_stored_verbatim_and_diffed_exactly(reg, op):
    # Many records, with values that need escaping on their way to the database, stored as
    # sent; the next report must find every stored digest equal to its own.
    tricky = {"tab": "a\tb", "newline": "x\ny", "backslash": "C:\\path", "quote": 'say "hi"',
              "unicode": "snø ☃", "null-ish": "\\N", "empty": ""}  # fmt: skip
    flavors = [
        {"id": f"f{n}", "name": f"m{n}\t\\N\\", "cpus": 1 + n, "ram_mb": 1024 * n, "disk_gb": n,
         "properties": tricky if n % 2 else {"z": "1", "a": str(n)}}
        for n in range(40)
    ]  # fmt: skip
    images = [
        {"id": f"img-{n}", "name": f"ubuntu-{n}", "os_distribution": "ubuntu", "cuda": n % 3 == 0,
         "description": "line\\one\ttwo", "properties": {"k": f"v{n}\n"}}
        for n in range(40)
    ]  # fmt: skip
    images[7]["creationTime"] = (utcnow() - timedelta(seconds=30)).isoformat()
    images[7]["validity"] = 300
    doc = report(created_ago_s=30, flavors=flavors, images=images)
    assert post(reg, op, doc).json()["changes"]["images"]["added"] == 40
    svc = reg.site("site-a").services[0]
    got = {f.id: f for f in svc.flavors}
    assert set(got) == {f["id"] for f in flavors}
    for f in flavors:
        g = got[f["id"]]
        assert (g.name, g.cpus, g.ram_mb) == (f["name"], f["cpus"], f["ram_mb"])
        assert dict(g.properties) == f["properties"]
    imgs = {i.id: i for i in svc.images}
    assert dict(imgs["img-3"].properties) == {"k": "v3\n"} and imgs["img-3"].cuda
    assert imgs["img-7"].freshness.validity_s == 300 and imgs["img-8"].freshness.validity_s == 600
    # Same records again, one changed, one gone: nothing else counts as changed.
    doc = report(created_ago_s=20, flavors=flavors[1:], images=images)
    doc["services"][0]["images"][5] = {**images[5], "name": "renamed"}
    changes = post(reg, op, doc).json()["changes"]
    assert changes["flavors"] == {"added": 0, "updated": 0, "removed": 1}
    assert changes["images"] == {"added": 0, "updated": 1, "removed": 0}


def test_records_dated_by_the_site_expire_on_their_own(reg, op):
    doc = report()
    # One image carries its own, short validity that has already run out.
    doc["services"][0]["images"].append(
        {"id": "img-old", "name": "ubuntu-22.04-old", "os_distribution": "ubuntu",
         "os_version": "22.04", "creationTime": (utcnow() - timedelta(seconds=400)).isoformat(),
         "validity": 300}
    )  # fmt: skip
    assert post(reg, op, doc).status_code == 202
    res = reg.find(image=pb.ImageRequirement(os_distribution="ubuntu"))
    assert [i.id for i in res.candidates[0].images] == ["img-1"]
    images = {i.id: i for i in reg.site("site-a").services[0].images}
    assert images["img-old"].freshness.stale and images["img-old"].freshness.validity_s == 300
    assert not images["img-1"].freshness.stale


def test_failed_part_keeps_rows_and_their_freshness(reg, op):
    assert post(reg, op, report(created_ago_s=100)).status_code == 202
    before = reg.site("site-a").services[0].images[0].freshness.creation_time.ToDatetime()
    doc = report(created_ago_s=5, images=[], failed_parts=["images"])
    assert post(reg, op, doc).status_code == 202
    svc = reg.site("site-a").services[0]
    assert [i.id for i in svc.images] == ["img-1"]
    assert svc.images[0].freshness.creation_time.ToDatetime() == before
    assert reg.site("site-a").summary.status == pb.STATUS_DEGRADED


def test_down_detector_marks_and_announces_once(reg, op):
    assert post(reg, op, report(created_ago_s=55, validity=60)).status_code == 202
    events: list[tuple[str, dict]] = []
    detector = DownDetector(
        reg.components.background[0].sessions, lambda s, t, d, sub: events.append((t, d))
    )
    assert detector.sweep() == []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not detector.sweep():
        time.sleep(0.2)
    assert events and events[0][0] == "infoprovider.site.changed"
    assert events[0][1]["status"] == "down" and events[0][1]["previous_status"] == "up"
    assert detector.sweep() == []  # announced once
    assert reg.site("site-a").summary.status == pb.STATUS_DOWN


def test_cmdb_compatible_documents(reg, op):
    assert post(reg, op, report()).status_code == 202
    http = reg.http
    prov = http.get("/cmdb/v1/provider/id/site-a?include_docs=true").json()
    assert prov["_id"] == "site-a" and prov["type"] == "provider"
    assert prov["data"]["name"] == "Site A" and prov["data"]["country"] == "IT"

    services = http.get("/cmdb/v1/provider/id/site-a/has_many/services?include_docs=true").json()
    (row,) = services["rows"]
    assert row["id"] == "site-a.nova" and row["key"] == ["site-a", "services"]
    data = row["doc"]["data"]
    assert data["service_type"] == "org.openstack.nova" and data["type"] == "compute"
    assert data["provider_id"] == "site-a" and data["hostname"] == "keystone.site-a.example.org"
    assert data["iam_enabled"] is True and "creationTime" in data

    assert http.get("/cmdb/v1/service/id/site-a.nova").json()["data"]["endpoint"].endswith("/v3")
    flavors = http.get("/cmdb/v1/service/id/site-a.nova/has_many/flavors?include_docs=true").json()
    gpu = next(r["doc"]["data"] for r in flavors["rows"] if r["doc"]["data"]["flavor_id"] == "2")
    assert (gpu["num_vcpus"], gpu["ram"], gpu["num_gpus"], gpu["gpu_model"]) == (8, 32768, 1, "T4")
    assert gpu["service"] == "site-a.nova" and gpu["infiniband_support"] is False
    images = http.get("/cmdb/v1/service/id/site-a.nova/has_many/images?include_docs=true").json()
    img = images["rows"][0]
    assert img["doc"]["data"]["image_name"] == "ubuntu-22.04"
    assert (
        img["doc"]["data"]["distribution"] == "ubuntu" and img["doc"]["data"]["version"] == "22.04"
    )
    assert http.get(f"/cmdb/v1/image/id/{img['id']}").json()["data"]["image_id"] == "img-1"
    no_docs = http.get("/cmdb/v1/service/id/site-a.nova/has_many/images").json()
    assert (
        "doc" not in no_docs["rows"][0]
        and no_docs["rows"][0]["value"]["image_name"] == "ubuntu-22.04"
    )

    tenants = http.get("/cmdb/v1/service/id/site-a.nova/has_many/tenants?include_docs=true").json()
    tenant = tenants["rows"][0]["doc"]["data"]
    assert tenant["tenant_id"] == "p1" and tenant["tenant_name"] == "vo-example"
    assert (
        tenant["iam_organisation"] == "vo.example.eu" and tenant["public_network_name"] == "public"
    )
    by_org = http.get(
        "/cmdb/v1/tenant/filters/iam_organisation/vo.example.eu?include_docs=true"
    ).json()
    assert by_org["rows"][0]["id"] == tenants["rows"][0]["id"]
    tenant_flavors = http.get(
        f"/cmdb/v1/tenant/id/{by_org['rows'][0]['id']}/has_many/flavors"
    ).json()
    assert len(tenant_flavors["rows"]) == 2

    listing = http.get("/cmdb/v1/flavor/list?limit=1&skip=1&include_docs=true").json()
    assert listing["total_rows"] == 2 and listing["offset"] == 1 and len(listing["rows"]) == 1
    assert http.get("/cmdb/v1/provider/list").json()["rows"][0]["id"] == "site-a"
    assert http.get("/cmdb/v1/service/list").json()["total_rows"] == 1
    assert http.get("/cmdb/v1/image/list").json()["total_rows"] == 1
    assert http.get("/cmdb/v1/tenant/list").json()["total_rows"] == 1

    for path in ("/cmdb/v1/provider/id/nope", "/cmdb/v1/service/id/nope",
                 "/cmdb/v1/image/id/nope", "/cmdb/v1/flavor/id/nope"):  # fmt: skip
        resp = http.get(path)
        assert (
            resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"
        )
    assert http.get("/cmdb/v1/service/id/site-a.nova/has_many/disks").status_code == 400

    # hdc's own JSON for the same data.
    site = http.get("/v1/sites/site-a").json()
    assert site["summary"]["status"] == "STATUS_UP" and site["summary"]["flavor_count"] == 2
    svc = http.get("/v1/services/site-a.nova").json()
    assert svc["quotas"][0]["limits"]["instances"] == "10"  # int64 as a JSON string (proto3 JSON)
    found = http.post(
        "/v1/candidates/search", json={"gpu": {"count": 1}, "tenant": "vo.example.eu"}
    ).json()
    assert found["candidates"][0]["flavors"][0]["id"] == "2"
    assert http.get("/v1/sites").json()["sites"][0]["id"] == "site-a"


def _no_freshness(msgs: Any) -> list[Any]:
    out = []
    for msg in msgs:
        copy = type(msg)()
        copy.CopyFrom(msg)
        copy.ClearField("freshness")
        out.append(copy)
    return out


def test_candidate_reply_matches_the_site_view(reg, op):
    # Placement assembles its reply from pre-serialised pieces; the site view builds the same
    # facts as messages field by field. Both must agree on every field of a candidate.
    doc = report(
        region="RegionOne",
        cost={"per_cpu_hour": 0.02, "currency": "EUR"},
        properties={"tier": "gold"},
    )
    doc["health"] = [{"component": "openstack", "healthy": True, "message": "ok"}]
    assert post(reg, op, doc).status_code == 202
    res = reg.find(cpus=1, tenant="vo.example.eu")
    site = reg.site("site-a")
    svc = site.services[0]
    (cand,) = res.candidates
    assert (cand.site_id, cand.site_name, cand.country) == ("site-a", "Site A", "IT")
    assert (cand.service_id, cand.service_type, cand.endpoint, cand.region) == (
        svc.id,
        svc.type,
        svc.endpoint,
        "RegionOne",
    )
    assert list(cand.identity_providers) == list(svc.identity_providers)
    assert cand.cost == svc.cost and dict(cand.properties) == {"tier": "gold"}
    # Smallest first (GPUs, then CPUs, ...), as the site view lists them by id.
    assert [f.id for f in cand.flavors] == ["1", "2"]
    assert list(cand.flavors) == _no_freshness(sorted(svc.flavors, key=lambda f: f.gpus))
    assert list(cand.images) == _no_freshness(svc.images)
    assert list(cand.quotas) == _no_freshness(svc.quotas)
    assert cand.status == site.summary.status == pb.STATUS_UP
    assert list(cand.health) == list(site.summary.health) and cand.health[0].message == "ok"
    assert cand.freshness == svc.freshness and not cand.freshness.stale
    # instances 10 - 1 = 9, cores (20 - 2) // 2 = 9 for the smallest flavor (2 CPUs).
    assert cand.free_instances == 9
    assert reg.find(cpus=1).candidates[0].free_instances == -1  # no tenant: not checked
    # What was assembled is a canonical message: it survives a round trip unchanged.
    assert pb.Candidates.FromString(res.SerializeToString(deterministic=True)) == res

    # Exclusions carry the reason, and a tenant without room is told how much it has.
    none = reg.find(cpus=64)
    assert not none.candidates
    assert [(x.service_id, x.reason) for x in none.excluded] == [
        ("site-a.nova", "no current flavor with >= 64 CPUs")
    ]
    full = reg.find(cpus=8, tenant="vo.example.eu", instances=5)
    assert [x.reason for x in full.excluded] == [
        "quota: tenant 'vo.example.eu' has room for 2 instance(s) of flavor gpu, 5 needed"
    ]


def test_placement_state_kept_in_step_with_reports(op, request):
    """A replica's placement state is patched site by site as reports arrive; after every
    report it answers exactly what a replica that loads everything afresh answers."""
    from hdc_infoprovider import placement

    url = request.getfixturevalue("postgres_url")
    registry = Registry(
        **registry_settings(
            op,
            {"agent-a": "site-a", "agent-b": "site-b"},
            database_url=url,
            bus_url=f"memory:///ip-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
    ).start()
    sessions = registry.components.background[0].sessions
    kept = placement.Catalog()
    queries = [
        pb.Requirements(cpus=1, tenant="vo.example.eu"),
        pb.Requirements(gpu=pb.GpuRequirement(count=1), image=pb.ImageRequirement(os_distribution="ubuntu")),
        pb.Requirements(include_unhealthy=True, max_flavors_per_candidate=1),
    ]  # fmt: skip

    def same_answers() -> None:
        for req in queries:
            with sessions() as s:
                mine = placement.find_candidates(s, req, kept)
                fresh = placement.find_candidates(s, req, placement.Catalog())
            mine.ClearField("evaluated_at")
            fresh.ClearField("evaluated_at")
            assert mine == fresh, req

    def send(agent: str, site: str, ago: float, **changes: Any) -> frozenset[str] | None:
        """Report, compare; what the kept state re-read (None: everything)."""
        doc = report(created_ago_s=ago, validity=changes.pop("validity", 600))
        doc["site"]["id"] = site
        doc["services"][0].update(changes.pop("service", {}))
        doc.update(changes)
        resp = registry.http.post(
            "/v1/reports", json=doc, headers={"Authorization": f"Bearer {op.issue_token(agent)}"}
        )
        assert resp.status_code == 202, resp.text
        same_answers()
        return kept._live.changed if kept._live is not None else None

    try:
        send("agent-a", "site-a", 60)
        assert send("agent-b", "site-b", 60) is None  # a new site: everything reloaded
        quotas = report()["services"][0]["quotas"]
        quotas[0]["usage"] = {"instances": 9, "cores": 19}  # usage only: the site is patched
        assert send("agent-a", "site-a", 50, service={"quotas": quotas}) == {"site-a.nova"}
        assert send("agent-b", "site-b", 40, validity=120) == {"site-b.nova"}  # freshness
        unhealthy = [{"component": "openstack", "healthy": False}]
        assert send("agent-a", "site-a", 30, health=unhealthy) == {"site-a.nova"}
        assert send("agent-a", "site-a", 20, service={"flavors": []}) is None  # catalog moved
        # A service's own content (here its health flag) is catalog too: reloaded.
        assert send("agent-b", "site-b", 10, service={"healthy": False}) is None
        quotas[0]["usage"] = {"instances": 3}
        changed = send("agent-a", "site-a", 5, service={"flavors": [], "quotas": quotas})
        assert changed == {"site-a.nova"}
    finally:
        registry.stop()
