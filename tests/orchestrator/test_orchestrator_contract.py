"""The INDIGO-compatible REST contract of the orchestrator, endpoint by endpoint, with every
4xx path, on the real PostgreSQL and RabbitMQ. The infoprovider, ranker and im are TEST
DOUBLES (orch_doubles.py): real gRPC servers / a real AMQP consumer of their contracts,
answering from data the tests set, because those services are built concurrently."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from orch_doubles import TEMPLATE, Site, user, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d\+0000$")
SITES = [
    Site("site-a", 0.9),
    Site("site-b", 0.7),
    Site("site-c", 0.5),
    Site("site-x", 0.99, rejected="needs 1 nvidia GPU; largest flavor has 0"),
]


@pytest.fixture(autouse=True)
def _sites(grpc_doubles, im_double) -> None:
    grpc_doubles.set_sites(SITES)
    im_double.behaviour.clear()
    im_double.default = "ok"


class Api:
    def __init__(self, client: Any, headers: dict[str, str]) -> None:
        self.c, self.h = client, headers

    def get(self, path: str, **kw: Any) -> Any:
        return self.c.get(path, headers=self.h | kw.pop("headers", {}), **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.c.post(path, json=body, headers=self.h | kw.pop("headers", {}), **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.c.put(path, json=body, headers=self.h | kw.pop("headers", {}), **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.c.patch(path, json=body, headers=self.h | kw.pop("headers", {}), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.c.delete(path, headers=self.h | kw.pop("headers", {}), **kw)

    def create(self, **body: Any) -> dict[str, Any]:
        r = self.post("/deployments", {"template": TEMPLATE} | body)
        assert r.status_code == 201, r.text
        return r.json()

    def wait_status(self, uuid: str, *, timeout: float = 30) -> dict[str, Any]:
        def done() -> Any:
            j = self.get(f"/deployments/{uuid}").json()
            return j if not j["status"].endswith("_IN_PROGRESS") else None

        return wait_for(done, timeout, what=f"deployment {uuid} to settle")


def api(stack: Any, signer: Any, who: Any) -> Api:
    return Api(stack.client, signer.headers(who))


def assert_indigo_error(r: Any, code: int, *words: str) -> dict[str, Any]:
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"code", "title", "message"}, body
    assert body["code"] == code
    for w in words:
        assert w.lower() in body["message"].lower(), body
    return body


# ---------------------------------------------------------------------- service endpoints


def test_root_info_configuration(stack) -> None:
    r = stack.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "Orchestrator" in r.text
    assert stack.client.get("/info").json()["build"]["version"]
    conf = stack.client.get("/configuration").json()
    assert conf and all(k.endswith("_url") for k in conf)
    assert {"cpr_url", "cmdb_url", "im_url"} <= set(conf)


def test_identity_is_required(stack) -> None:
    assert_indigo_error(stack.client.get("/deployments"), 401, "gateway")
    r = stack.client.get("/deployments", headers={"X-HDC-Identity": "not-a-token"})
    assert_indigo_error(r, 401)


# ---------------------------------------------------------------------- create


def test_create_shape_and_complete(stack, signer) -> None:
    a = api(stack, signer, user("alice"))
    r = a.post("/deployments", {"template": TEMPLATE, "parameters": {"num_cpus": 2}})
    assert r.status_code == 201
    d = r.json()
    assert r.headers["Location"].endswith(f"/deployments/{d['uuid']}")
    assert r.headers["ETag"]
    assert d["status"] == "CREATE_IN_PROGRESS"
    assert DATE.match(d["creationTime"]) and DATE.match(d["updateTime"])
    assert d["createdBy"] == {"issuer": "https://iam.test/", "subject": "alice"}
    assert [x["rel"] for x in d["links"]] == ["self", "resources", "template"]
    assert all(v is not None for v in d.values())
    done = a.wait_status(d["uuid"])
    assert done["status"] == "CREATE_COMPLETE"
    assert done["cloudProviderName"] == "site-a"  # the best-ranked candidate
    assert done["physicalId"]
    assert done["cloudProviderEndpoint"]["cpEndpoint"] == "http://site-a.invalid:5000"
    assert done["outputs"]["node_ip"] == "192.0.2.10"
    assert "s3cr3t-pa55" not in json.dumps(done)  # secrets never shown
    assert done["task"] == "NONE"
    # The server's own time, for clients to tell it from the network's (W3C Server-Timing).
    timing = a.get(f"/deployments/{d['uuid']}").headers["Server-Timing"]
    assert re.fullmatch(r"app;dur=\d+\.\d\d", timing), timing


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({}, 400, ["template"]),
        ({"template": TEMPLATE, "colour": "red"}, 400, ["colour"]),
        ({"template": TEMPLATE, "timeoutMins": 0}, 400, ["timeoutMins"]),
        ({"template": TEMPLATE, "providerTimeoutMins": 0}, 400, ["providerTimeoutMins"]),
        (
            {"template": TEMPLATE, "timeoutMins": 5, "providerTimeoutMins": 6},
            400,
            ["providerTimeoutMins", "timeoutMins"],
        ),
        ({"template": TEMPLATE, "maxProvidersRetry": 0}, 400, ["maxProvidersRetry"]),
        ({"template": TEMPLATE, "keepLastAttempt": "yes"}, 400, ["keepLastAttempt"]),
        ({"template": TEMPLATE, "callback": "ftp://x.test/cb"}, 400, ["callback"]),
        ({"template": TEMPLATE, "parameters": []}, 400, ["parameters"]),
        ({"template": TEMPLATE, "userGroup": "physics"}, 403, ["physics"]),
    ],
)
def test_create_rejects(stack, signer, body, code, words) -> None:
    r = api(stack, signer, user("bob")).post("/deployments", body)
    assert_indigo_error(r, code, *words)


def test_create_rejects_non_json(stack, signer) -> None:
    r = stack.client.post(
        "/deployments",
        content=b"template: x",
        headers=signer.headers(user("bob")) | {"Content-Type": "text/yaml"},
    )
    assert 400 <= r.status_code < 500


def test_idempotency_key(stack, signer) -> None:
    a = api(stack, signer, user("idem"))
    first = a.post("/deployments", {"template": TEMPLATE}, headers={"Idempotency-Key": "k1"})
    again = a.post("/deployments", {"template": TEMPLATE}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["uuid"] == again.json()["uuid"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = a.post(
        "/deployments", {"template": TEMPLATE, "timeoutMins": 9}, headers={"Idempotency-Key": "k1"}
    )
    assert_indigo_error(other, 422, "Idempotency-Key")
    # Keys are per user: the same key from someone else is a new deployment.
    b = api(stack, signer, user("idem2"))
    assert (
        b.post("/deployments", {"template": TEMPLATE}, headers={"Idempotency-Key": "k1"}).json()[
            "uuid"
        ]
        != first.json()["uuid"]
    )
    assert a.get("/deployments?createdBy=me").json()["page"]["totalElements"] == 1


def test_dry_run_returns_placement_without_deploying(stack, signer) -> None:
    a = api(stack, signer, user("dry"))
    r = a.post("/deployments?dryRun=true", {"template": TEMPLATE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dryRun"] is True
    cands = body["placement"]["candidates"]
    assert [c["siteId"] for c in cands if c["rank"] > 0] == ["site-a", "site-b", "site-c"]
    x = next(c for c in cands if c["siteId"] == "site-x")
    assert x["rank"] == -1 and "GPU" in x["discarded"][0]["message"]
    assert body["requirements"]["cpus"] == 1 and body["requirements"]["ram_mb"] == 1000
    assert a.get("/deployments?createdBy=me").json()["page"]["totalElements"] == 0
    assert_indigo_error(a.post("/deployments?dryRun=true", {"template": "a: ["}), 400, "YAML")


# ---------------------------------------------------------------------- list / get / visibility


def test_list_paging_sorting_and_filters(stack, signer) -> None:
    me = user("pager", groups=("lab",))
    a = api(stack, signer, me)
    ids = [a.create(userGroup="lab" if i == 0 else None)["uuid"] for i in range(3)]
    page0 = a.get("/deployments?createdBy=me&size=2").json()
    assert page0["page"] == {"size": 2, "totalElements": 3, "totalPages": 2, "number": 0}
    assert [d["uuid"] for d in page0["content"]] == [ids[2], ids[1]]  # newest first
    assert [link["rel"] for link in page0["links"]] == ["first", "self", "next", "last"]
    page1 = a.get("/deployments?createdBy=me&size=2&page=1").json()
    assert [d["uuid"] for d in page1["content"]] == [ids[0]]
    assert [link["rel"] for link in page1["links"]] == ["first", "prev", "self", "last"]
    asc = a.get("/deployments?createdBy=me&sort=createdAt,asc").json()
    assert [d["uuid"] for d in asc["content"]] == ids
    assert a.get("/deployments").json()["page"]["size"] == 10  # default size
    full = a.get("/deployments?createdBy=pager@https://iam.test/").json()
    assert full["page"]["totalElements"] == 3
    assert a.get("/deployments?userGroup=lab").json()["page"]["totalElements"] == 1
    assert_indigo_error(a.get("/deployments?createdBy=nobody"), 400, "createdBy")
    assert_indigo_error(a.get("/deployments?sort=colour,desc"), 400, "sort")
    assert_indigo_error(a.get("/deployments?sort=createdAt,sideways"), 400, "sort")
    assert_indigo_error(a.get("/deployments?size=0"), 400, "size")
    assert_indigo_error(a.get("/deployments?page=-1"), 400, "page")
    assert_indigo_error(a.get("/deployments?colour=red"), 400, "colour")


def test_visibility_owner_group_admin_and_others(stack, signer) -> None:
    owner = api(stack, signer, user("owner", groups=("physics",)))
    d = owner.create(userGroup="physics")
    private = owner.create()
    stranger = api(stack, signer, user("stranger", groups=("physics",)))
    admin = api(stack, signer, user("boss", roles=("group-admin:physics",)))
    for path in (
        "",
        "/template",
        "/log",
        "/extrainfo",
        "/events",
        "/placement",
        "/resources",
        "/callbacks",
    ):
        assert_indigo_error(stranger.get(f"/deployments/{d['uuid']}{path}"), 404, d["uuid"])
        assert admin.get(f"/deployments/{d['uuid']}{path}").status_code == 200
        assert_indigo_error(admin.get(f"/deployments/{private['uuid']}{path}"), 404)
    assert_indigo_error(stranger.delete(f"/deployments/{d['uuid']}"), 404)
    assert_indigo_error(stranger.put(f"/deployments/{d['uuid']}", {"template": TEMPLATE}), 404)
    assert_indigo_error(
        stranger.patch(f"/deployments/{d['uuid']}", {"status": "DELETE_FAILED"}), 404
    )
    assert stranger.get("/deployments").json()["page"]["totalElements"] == 0
    listed = {x["uuid"] for x in admin.get("/deployments?size=100").json()["content"]}
    assert d["uuid"] in listed and private["uuid"] not in listed


def test_get_unknown_deployment(stack, signer) -> None:
    a = api(stack, signer, user("carol"))
    body = assert_indigo_error(a.get("/deployments/nope"), 404, "nope")
    assert body["title"] == "Not Found"
    assert_indigo_error(a.delete("/deployments/nope"), 404)
    assert_indigo_error(a.get("/deployments/nope/resources"), 404)


def test_template_log_extrainfo(stack, signer) -> None:
    a = api(stack, signer, user("dave"))
    d = a.create()
    a.wait_status(d["uuid"])
    t = a.get(f"/deployments/{d['uuid']}/template")
    assert t.status_code == 200 and t.headers["content-type"].startswith("text/plain")
    assert t.text == TEMPLATE
    log = a.get(f"/deployments/{d['uuid']}/log")
    assert log.headers["content-type"].startswith("text/plain")
    assert "CREATE_COMPLETE" in log.text and "site-a" in log.text
    extra = json.loads(a.get(f"/deployments/{d['uuid']}/extrainfo").text)
    assert isinstance(extra, list) and extra[0]["vmProperties"]["public_ip"] == "192.0.2.10"


# ---------------------------------------------------------------------- resources


def test_resources(stack, signer, im_double) -> None:
    a = api(stack, signer, user("erin"))
    d = a.create()
    a.wait_status(d["uuid"])
    base = f"/deployments/{d['uuid']}/resources"
    page = a.get(base).json()
    assert page["page"]["totalElements"] == 2
    by_node = {r["toscaNodeName"]: r for r in page["content"]}
    server, app = by_node["server"], by_node["app"]
    assert server["toscaNodeType"] == "tosca.nodes.indigo.Compute"
    assert server["requiredBy"] == [app["uuid"]]
    assert server["state"] == "STARTED" and server["physicalId"].startswith("vm-")
    assert DATE.match(server["creationTime"])
    # ?type= matches subtypes: tosca.nodes.indigo.Compute derives from tosca.nodes.Compute
    computes = a.get(f"{base}?type=tosca.nodes.Compute").json()
    assert [r["uuid"] for r in computes["content"]] == [server["uuid"]]
    flt = a.get(f"{base}/filter?type=tosca.nodes.SoftwareComponent").json()
    assert [r["uuid"] for r in flt] == [app["uuid"]]
    assert a.get(f"{base}/filter?type=tosca.nodes.Root").status_code == 200
    assert_indigo_error(a.get(f"{base}/filter"), 400, "type")
    assert a.get(f"{base}/{server['uuid']}").json()["uuid"] == server["uuid"]
    assert_indigo_error(a.get(f"{base}/nope"), 404, "nope")
    act = a.post(f"{base}/{server['uuid']}/actions", {"type": "stop"})
    assert act.status_code == 202, act.text
    wait_for(lambda: a.get(f"{base}/{server['uuid']}").json()["state"] == "STOPPED", 20)
    assert a.post(f"{base}/{server['uuid']}/actions", {"type": "start"}).status_code == 202
    wait_for(lambda: a.get(f"{base}/{server['uuid']}").json()["state"] == "STARTED", 20)
    assert_indigo_error(
        a.post(f"{base}/{server['uuid']}/actions", {"type": "reboot"}), 400, "reboot"
    )
    assert_indigo_error(a.post(f"{base}/{server['uuid']}/actions", {"type": "stop", "x": 1}), 400)
    assert_indigo_error(
        a.post(f"{base}/{app['uuid']}/actions", {"type": "stop"}), 409, "virtual machine"
    )
    assert_indigo_error(a.post(f"{base}/nope/actions", {"type": "stop"}), 404)


def test_scalable_count_expands_resources(stack, signer) -> None:
    a = api(stack, signer, user("frank"))
    d = a.create(template=TEMPLATE.replace("count: 1", "count: 3"))
    page = a.get(f"/deployments/{d['uuid']}/resources?size=100").json()
    assert [r["toscaNodeName"] for r in page["content"]].count("server") == 3


# ---------------------------------------------------------------------- update / patch / delete


def test_update_with_etag(stack, signer, im_double) -> None:
    a = api(stack, signer, user("gina"))
    d = a.create()
    a.wait_status(d["uuid"])
    path = f"/deployments/{d['uuid']}"
    etag = a.get(path).headers["ETag"]
    scaled = TEMPLATE.replace("count: 1", "count: 2")
    assert_indigo_error(
        a.put(path, {"template": scaled}, headers={"If-Match": '"999"'}), 412, "If-Match"
    )
    assert_indigo_error(a.put(path, {"template": "a: ["}), 400, "YAML")
    assert_indigo_error(a.put(path, {"template": scaled, "bogus": 1}), 400, "bogus")
    r = a.put(path, {"template": scaled}, headers={"If-Match": etag})
    assert r.status_code == 202, r.text
    assert a.get(path).json()["status"] in ("UPDATE_IN_PROGRESS", "UPDATE_COMPLETE")
    done = a.wait_status(d["uuid"])
    assert done["status"] == "UPDATE_COMPLETE", done
    assert done["outputs"]["node_ip"] == "192.0.2.11"
    assert a.get(f"{path}/template").text == scaled
    servers = [
        r for r in a.get(f"{path}/resources").json()["content"] if r["toscaNodeName"] == "server"
    ]
    assert len(servers) == 2


def test_update_conflicts_while_in_progress(stack, signer, im_double) -> None:
    im_double.behaviour["site-a"] = "hang"
    a = api(stack, signer, user("hank"))
    d = a.create(providerTimeoutMins=60, timeoutMins=60)
    assert_indigo_error(
        a.put(f"/deployments/{d['uuid']}", {"template": TEMPLATE}), 409, "CREATE_IN_PROGRESS"
    )
    assert_indigo_error(
        a.patch(f"/deployments/{d['uuid']}", {"status": "DELETE_FAILED"}), 409, "DELETE_IN_PROGRESS"
    )
    assert a.delete(f"/deployments/{d['uuid']}").status_code == 204  # delete aborts a create
    wait_for(lambda: a.get(f"/deployments/{d['uuid']}").status_code == 404, 30)
    assert im_double.alive_for(d["uuid"]) == []


def test_stuck_delete_reset_and_force(stack, signer, im_double) -> None:
    im_double.behaviour["site-a"] = "ok-nodelete"
    a = api(stack, signer, user("ivan"))
    d = a.create()
    a.wait_status(d["uuid"])
    path = f"/deployments/{d['uuid']}"
    assert a.delete(path).status_code == 204
    assert a.get(path).json()["status"] == "DELETE_IN_PROGRESS"
    assert_indigo_error(a.delete(path), 409, "already being deleted")
    assert_indigo_error(a.patch(path, {"status": "CREATE_COMPLETE"}), 400, "status")
    assert_indigo_error(
        a.patch(path, {"status": "DELETE_FAILED"}, headers={"If-Match": '"0"'}), 412
    )
    r = a.patch(
        path, {"status": "DELETE_FAILED"}, headers={"If-Match": a.get(path).headers["ETag"]}
    )
    assert r.status_code == 204, r.text
    assert a.get(path).json()["status"] == "DELETE_FAILED"
    assert a.delete(f"{path}?force=true").status_code == 204
    assert_indigo_error(a.get(path), 404)


# ---------------------------------------------------------------------- beyond INDIGO


def test_events_json_and_sse(stack, signer) -> None:
    a = api(stack, signer, user("judy"))
    d = a.create()
    a.wait_status(d["uuid"])
    ev = a.get(f"/deployments/{d['uuid']}/events").json()
    kinds = [e["kind"] for e in ev["events"]]
    assert kinds[0] == "status" and "placement" in kinds and "attempt.started" in kinds
    assert ev["events"][-1]["status"] == "CREATE_COMPLETE"
    ids = [e["id"] for e in ev["events"]]
    assert ids == sorted(ids)
    later = a.get(f"/deployments/{d['uuid']}/events?after={ids[1]}").json()["events"]
    assert [e["id"] for e in later] == ids[2:]
    sse = a.get(f"/deployments/{d['uuid']}/events", headers={"Accept": "text/event-stream"})
    assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
    assert sse.text.count("\nevent: ") + sse.text.startswith("event: ") >= len(ids)
    assert f"id: {ids[-1]}" in sse.text and "event: end" in sse.text
    resumed = a.get(
        f"/deployments/{d['uuid']}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(ids[-2])},
    )
    assert f"id: {ids[-2]}\n" not in resumed.text and f"id: {ids[-1]}\n" in resumed.text
    bad = a.get(
        f"/deployments/{d['uuid']}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "x"},
    )
    assert_indigo_error(bad, 400, "Last-Event-ID")


def test_placement_endpoint(stack, signer) -> None:
    a = api(stack, signer, user("kim"))
    d = a.create()
    a.wait_status(d["uuid"])
    p = a.get(f"/deployments/{d['uuid']}/placement").json()
    cands = p["placement"]["candidates"]
    assert cands[0]["siteId"] == "site-a" and cands[0]["rank"] == 1
    assert cands[0]["scores"] == {"sla": 0.9, "monitoring": 1.0}
    assert cands[0]["flavor"] == {"id": "f1", "name": "small"}
    rejected = next(c for c in cands if c["siteId"] == "site-x")
    assert rejected["discarded"][0] == {
        "code": "NO_GPU",
        "filter": "gpu",
        "message": "needs 1 nvidia GPU; largest flavor has 0",
    }
    assert p["attempts"] == [
        {"attempt": 1, "siteId": "site-a", "serviceId": "site-a/compute", "state": "SUCCEEDED"}
    ]


def test_no_provider_fits(stack, signer, grpc_doubles) -> None:
    grpc_doubles.set_sites([Site("site-x", 0.9, rejected="no GPU")])
    a = api(stack, signer, user("lou"))
    d = a.create()
    done = a.wait_status(d["uuid"])
    assert done["status"] == "CREATE_FAILED"
    assert "No cloud provider" in done["statusReason"]


def test_placement_outage_is_retried_then_given_up(stack, signer, grpc_doubles) -> None:
    a = api(stack, signer, user("outage"))
    grpc_doubles.info.fail_next = 10_000  # the registry is down...
    try:
        d = a.create()
        events = f"/deployments/{d['uuid']}/events"
        wait_for(
            lambda: any(e["kind"] == "placement.error" for e in a.get(events).json()["events"]),
            20,
        )
    finally:
        grpc_doubles.info.fail_next = 0  # ...and comes back: the next try places it
    done = a.wait_status(d["uuid"])
    assert done["status"] == "CREATE_COMPLETE", done
    errors = [e for e in a.get(events).json()["events"] if e["kind"] == "placement.error"]
    assert 1 <= len(errors) < 4 and "UNAVAILABLE" in errors[0]["message"]
    grpc_doubles.info.fail_next = 10_000
    try:
        failed = a.wait_status(a.create()["uuid"])
    finally:
        grpc_doubles.info.fail_next = 0
    assert failed["status"] == "CREATE_FAILED"
    assert "Placement failed after 4 tries" in failed["statusReason"]
    assert "UNAVAILABLE" in failed["statusReason"]


def test_placement_bad_request_fails_at_once(stack, signer, grpc_doubles) -> None:
    import grpc

    grpc_doubles.info.fail_next, grpc_doubles.info.fail_code = 1, grpc.StatusCode.INVALID_ARGUMENT
    try:
        done = api(stack, signer, user("badreq")).create()
        done = api(stack, signer, user("badreq")).wait_status(done["uuid"])
    finally:
        grpc_doubles.info.fail_next, grpc_doubles.info.fail_code = 0, grpc.StatusCode.UNAVAILABLE
    assert done["status"] == "CREATE_FAILED"
    assert "INVALID_ARGUMENT" in done["statusReason"] and "1 tries" in done["statusReason"]


def test_status_events_are_emitted_for_the_ranker(stack, signer) -> None:
    a = api(stack, signer, user("mia"))
    d = a.create()
    a.wait_status(d["uuid"])
    engine = sa.create_engine(stack.settings.database_url)
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "SELECT event_type, body FROM hdc_bus_outbox WHERE event_type LIKE 'orchestrator.deployment.%' ORDER BY id"
            )
        ).all()
    engine.dispose()
    mine = [
        (t, json.loads(b)["data"]) for t, b in rows if json.loads(b)["data"]["uuid"] == d["uuid"]
    ]
    types = [t for t, _ in mine]
    assert types[0] == "orchestrator.deployment.create_in_progress"
    done = next(data for t, data in mine if t == "orchestrator.deployment.create_complete")
    assert done["status"] == "CREATE_COMPLETE" and done["cloudProviderName"] == "site-a"
    assert done["siteId"] == "site-a"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(500)
        else:
            cls.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_callbacks_signed_retried_and_logged(stack, signer) -> None:
    _Receiver.received, _Receiver.fail_first = [], 1
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        a = api(stack, signer, user("ned"))
        d = a.create(callback=url)
        a.wait_status(d["uuid"])
        wait_for(
            lambda: any(
                json.loads(b)["status"] == "CREATE_COMPLETE" for _, b in _Receiver.received
            ),
            30,
        )
        headers, body = next(
            (h, b) for h, b in _Receiver.received if json.loads(b)["status"] == "CREATE_COMPLETE"
        )
        sig = dict(p.split("=", 1) for p in headers["X-HDC-Signature"].split(","))
        expected = hmac.new(
            b"test-callback-secret", f"{sig['t']}.".encode() + body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(sig["v1"], expected)
        assert json.loads(body)["uuid"] == d["uuid"]
        log = a.get(f"/deployments/{d['uuid']}/callbacks").json()
        assert log["callback"] == url
        done = next(x for x in log["deliveries"] if x["status"] == "CREATE_COMPLETE")
        assert done["delivered"] is True and done["lastCode"] == 204
        assert any(x["attempts"] >= 2 for x in log["deliveries"])  # the 500 was retried
    finally:
        server.shutdown()


def test_secrets_are_encrypted_at_rest(stack, signer) -> None:
    a = api(stack, signer, user("vault"))
    d = a.create(parameters={"admin_password": "at-rest-Pa55word"})
    a.wait_status(d["uuid"])
    engine = sa.create_engine(stack.settings.database_url)
    with engine.connect() as c:
        row = (
            c.execute(sa.text("SELECT * FROM orch_deployments WHERE uuid = :u"), {"u": d["uuid"]})
            .mappings()
            .one()
        )
        events = (
            c.execute(
                sa.text("SELECT message FROM orch_events WHERE deployment_uuid = :u"),
                {"u": d["uuid"]},
            )
            .scalars()
            .all()
        )
    engine.dispose()
    dump = json.dumps({k: str(v) for k, v in row.items()}) + json.dumps(events)
    assert "at-rest-Pa55word" not in dump and "s3cr3t-pa55" not in dump
    assert row["resolved_template"].startswith("fernet:")
    # ...while the API still hands the owner the template they submitted.
    assert a.get(f"/deployments/{d['uuid']}/template").text == TEMPLATE


def test_sse_follows_a_deployment_live(stack, signer, im_double) -> None:
    im_double.behaviour["site-a"] = "hang"  # the first provider times out: a live fail-over
    a = api(stack, signer, user("watcher"))
    d = a.create(providerTimeoutMins=2, timeoutMins=60)
    seen: list[str] = []
    with stack.client.stream(
        "GET", f"/deployments/{d['uuid']}/events", headers=a.h | {"Accept": "text/event-stream"}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if line.startswith("data: ") and seen and seen[-1] == "end":
                assert json.loads(line.removeprefix("data: "))["status"] == "CREATE_COMPLETE"
                break
    assert seen.count("attempt.started") == 2 and "attempt.timed_out" in seen
    assert seen[-1] == "end"
