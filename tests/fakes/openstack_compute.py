"""FAKE OpenStack (Keystone v3 + Nova compute v2.1 + Neutron v2.0), a real HTTP server on loopback.

Speaks the subset of the published APIs that libcloud's OpenStack driver uses:
Keystone `POST /v3/auth/tokens` (password method, service catalog with `compute` and
`network` endpoints) and Nova `/servers` (create, list detail, show, delete,
start/stop/reboot actions), `/flavors/detail`, `/images/detail`, with Nova's JSON error
bodies (`{"badRequest": {...}}`, `{"forbidden": {...}}` for quota, `{"itemNotFound": {...}}`,
`{"conflictingRequest": {...}}`) and its per-project instance/core quota. Networking is the
Neutron fake in `openstack_network.py`, served under `/networking`. Checked against
https://docs.openstack.org/api-ref/identity/v3/, https://docs.openstack.org/api-ref/compute/
and https://docs.openstack.org/api-ref/network/v2/. Not a cloud: servers are records; a
server is BUILD until read once more, then ACTIVE with a port (and its fixed address) on
each network it asked for, as Nova reports once networking is allocated. Booting without a
`networks` list picks the project's only network, or answers 409 when there are several.
A server's delete removes the ports Nova made for it; floating IPs on them stay allocated
(unassociated), as in Neutron.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

_spec = importlib.util.spec_from_file_location(
    "fake_openstack_network", Path(__file__).with_name("openstack_network.py")
)
_network = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_network)
FakeNeutron = _network.FakeNeutron

FLAVORS = {
    "1": {"id": "1", "name": "m1.tiny", "ram": 512, "vcpus": 1, "disk": 1},
    "2": {"id": "2", "name": "m1.small", "ram": 2048, "vcpus": 1, "disk": 20},
    "3": {"id": "3", "name": "m1.medium", "ram": 4096, "vcpus": 2, "disk": 40},
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeOpenStack:
    def __init__(
        self,
        *,
        username: str = "demo",
        password: str = "secret",
        project: str = "demo",
        max_instances: int = 10,
        max_cores: int = 20,
        max_floating_ips: int = 10,
        images: tuple[str, ...] = ("cirros",),
    ) -> None:
        self.username, self.password, self.project = username, password, project
        self.project_id = uuid.uuid4().hex
        self.max_instances, self.max_cores = max_instances, max_cores
        self.images = {str(uuid.uuid5(uuid.NAMESPACE_DNS, n)): n for n in images}
        self.servers: dict[str, dict[str, Any]] = {}
        self.user_data: dict[str, str] = {}
        self.tokens: set[str] = set()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.neutron = FakeNeutron(self.project_id, max_floating_ips=max_floating_ips)
        handler = type("H", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def image_id(self, name: str) -> str:
        return next(i for i, n in self.images.items() if n == name)

    def start(self) -> FakeOpenStack:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- Keystone ------------------------------------------------------------------------

    def auth(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            user = body["auth"]["identity"]["password"]["user"]
            name, password = user["name"], user["password"]
        except (KeyError, TypeError):
            return (
                400,
                {
                    "error": {
                        "code": 400,
                        "title": "Bad Request",
                        "message": "Expecting to find identity in auth.",
                    }
                },
                {},
            )
        if (name, password) != (self.username, self.password):
            return (
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
                {},
            )
        token = uuid.uuid4().hex
        self.tokens.add(token)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M:%S.000000Z"
        )
        services = (
            ("compute", "nova", f"{self.url}/v2.1/{self.project_id}"),
            ("network", "neutron", f"{self.url}/networking"),
        )
        catalog = [
            {
                "type": type_,
                "name": name,
                "id": f"c{n}",
                "endpoints": [
                    {
                        "id": f"e{n}{i}",
                        "interface": iface,
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": url,
                    }
                    for i, iface in enumerate(("public", "internal", "admin"))
                ],
            }
            for n, (type_, name, url) in enumerate(services)
        ]
        return (
            201,
            {
                "token": {
                    "methods": ["password"],
                    "expires_at": expires,
                    "issued_at": _now(),
                    "user": {
                        "id": "u1",
                        "name": name,
                        "domain": {"id": "default", "name": "Default"},
                    },
                    "project": {
                        "id": self.project_id,
                        "name": self.project,
                        "domain": {"id": "default", "name": "Default"},
                    },
                    "catalog": catalog,
                    "roles": [{"id": "r1", "name": "member"}],
                }
            },
            {"X-Subject-Token": token},
        )

    # -- Nova ----------------------------------------------------------------------------

    def _server_view(self, s: dict[str, Any]) -> dict[str, Any]:
        link = f"{self.url}/v2.1/{self.project_id}/servers/{s['id']}"
        return {
            **{k: v for k, v in s.items() if not k.startswith("_")},
            "addresses": self.neutron.server_addresses(s["id"]),
            "links": [{"rel": "self", "href": link}],
        }

    def _advance(self, s: dict[str, Any]) -> None:
        if s["status"] == "BUILD" and s["_reads"] >= 1:
            # networking is allocated as the server is scheduled: its ports appear now
            with self.neutron.lock:
                for net_id in s["_networks"]:
                    port = self.neutron.new_port(
                        net_id, s["id"], "compute:nova", security_groups=s["_sg_ids"]
                    )
                    if port is None:
                        s["status"], s["OS-EXT-STS:vm_state"] = "ERROR", "error"
                        s["fault"] = {
                            "code": 500,
                            "message": "Build of instance aborted: Failed to allocate the "
                            "network(s), not rescheduling.",
                            "created": _now(),
                        }
                        s["_reads"] += 1
                        return
            s["status"] = "ACTIVE"
            s["OS-EXT-STS:vm_state"] = "active"
            s["OS-EXT-STS:power_state"] = 1
        s["_reads"] += 1

    def create_server(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        srv = (body or {}).get("server")
        if not isinstance(srv, dict) or not srv.get("name"):
            return 400, {
                "badRequest": {
                    "code": 400,
                    "message": "Invalid input for field/attribute server. Value: None.",
                }
            }
        image = srv.get("imageRef")
        if image not in self.images:
            return 400, {"badRequest": {"code": 400, "message": "Can not find requested image"}}
        flavor = FLAVORS.get(str(srv.get("flavorRef")))
        if flavor is None:
            return 400, {"badRequest": {"code": 400, "message": "Invalid flavorRef provided."}}
        networks, refusal = self.neutron.boot_networks(srv.get("networks"), self.project_id)
        if refusal is not None:
            return refusal
        sg_ids, refusal = self.neutron.boot_security_groups(
            srv.get("security_groups"), self.project_id
        )
        if refusal is not None:
            return refusal
        with self.lock:
            live = [s for s in self.servers.values()]
            used_cores = sum(FLAVORS[s["flavor"]["id"]]["vcpus"] for s in live)
            if len(live) + 1 > self.max_instances:
                return 403, {
                    "forbidden": {
                        "code": 403,
                        "message": (
                            f"Quota exceeded for instances: Requested 1, but already used {len(live)} "
                            f"of {self.max_instances} instances"
                        ),
                    }
                }
            if used_cores + flavor["vcpus"] > self.max_cores:
                return 403, {
                    "forbidden": {
                        "code": 403,
                        "message": (
                            f"Quota exceeded for cores: Requested {flavor['vcpus']}, but already used "
                            f"{used_cores} of {self.max_cores} cores"
                        ),
                    }
                }
            sid = str(uuid.uuid4())
            now = _now()
            self.servers[sid] = {
                "id": sid,
                "name": srv["name"],
                "status": "BUILD",
                "tenant_id": self.project_id,
                "user_id": "u1",
                "metadata": {str(k): str(v) for k, v in (srv.get("metadata") or {}).items()},
                "hostId": uuid.uuid4().hex,
                "image": {"id": image, "links": []},
                "flavor": {"id": flavor["id"], "links": []},
                "created": now,
                "updated": now,
                "accessIPv4": "",
                "accessIPv6": "",
                "key_name": srv.get("key_name"),
                "config_drive": "",
                "progress": 0,
                "OS-EXT-STS:vm_state": "building",
                "OS-EXT-STS:task_state": None,
                "OS-EXT-STS:power_state": 0,
                "security_groups": srv.get("security_groups") or [{"name": "default"}],
                "os-extended-volumes:volumes_attached": [
                    {
                        "id": str(uuid.uuid4()),
                        "delete_on_termination": bool(m.get("delete_on_termination")),
                    }
                    for m in body.get("server", {}).get("block_device_mapping_v2") or []
                    if m.get("destination_type") == "volume"
                ],
                "_volumes": [dict(m) for m in srv.get("block_device_mapping_v2") or []],
                "_networks": networks,
                "_sg_ids": sg_ids,
                "_reads": 0,
            }
            if srv.get("user_data"):
                self.user_data[sid] = base64.b64decode(srv["user_data"]).decode()
        return 202, {
            "server": {
                "id": sid,
                "links": [],
                "adminPass": uuid.uuid4().hex[:12],
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": [{"name": "default"}],
            }
        }

    def show(self, sid: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            s = self.servers.get(sid)
            if s is None:
                return 404, {
                    "itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}
                }
            self._advance(s)
            return 200, {"server": self._server_view(s)}

    def list_detail(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            for s in self.servers.values():
                self._advance(s)
            return 200, {"servers": [self._server_view(s) for s in self.servers.values()]}

    def delete(self, sid: str) -> tuple[int, dict[str, Any] | None]:
        with self.lock:
            if self.servers.pop(sid, None) is None:
                return 404, {
                    "itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}
                }
        with self.neutron.lock:
            for pid in [p["id"] for p in self.neutron.ports.values() if p["device_id"] == sid]:
                self.neutron.drop_port(pid)
        return 204, None

    def action(self, sid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        with self.lock:
            s = self.servers.get(sid)
            if s is None:
                return 404, {
                    "itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}
                }
            if "os-stop" in body:
                s["status"], s["OS-EXT-STS:vm_state"] = "SHUTOFF", "stopped"
            elif "os-start" in body:
                s["status"], s["OS-EXT-STS:vm_state"] = "ACTIVE", "active"
            elif "reboot" in body:
                s["status"] = "ACTIVE"
            elif "resize" in body:
                flavor = str((body["resize"] or {}).get("flavorRef"))
                if flavor not in FLAVORS:
                    return 400, {
                        "badRequest": {"code": 400, "message": "Invalid flavorRef provided."}
                    }
                s["_old_flavor"] = s["flavor"]["id"]
                s["flavor"] = {"id": flavor, "links": []}
                s["status"], s["OS-EXT-STS:vm_state"] = "VERIFY_RESIZE", "resized"
            elif "confirmResize" in body:
                if s["status"] != "VERIFY_RESIZE":
                    return 409, {
                        "conflictingRequest": {
                            "code": 409,
                            "message": (
                                f"Cannot 'confirmResize' instance {sid} while it is in vm_state "
                                f"{s['OS-EXT-STS:vm_state']}"
                            ),
                        }
                    }
                s["status"], s["OS-EXT-STS:vm_state"] = "ACTIVE", "active"
            else:
                return 400, {"badRequest": {"code": 400, "message": "Invalid server action"}}
        return 202, None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenStack
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return {}
        try:
            return json.loads(self.rfile.read(n))
        except ValueError:
            return None

    def _route(self, method: str) -> None:
        f = self.fake
        path, _, query = self.path.partition("?")
        path = path.rstrip("/")
        f.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else {}
        if body is None:
            self._send(400, {"badRequest": {"code": 400, "message": "Malformed request body"}})
            return
        if path == "/v3/auth/tokens" and method == "POST":
            status, out, headers = f.auth(body)
            self._send(status, out, headers)
            return
        if path.startswith("/networking/"):
            if self.headers.get("X-Auth-Token") not in f.tokens:
                self._send(
                    401,
                    {
                        "NeutronError": {
                            "type": "HTTPUnauthorized",
                            "message": "The request you have made requires authentication.",
                            "detail": "",
                        }
                    },
                )
                return
            status, out = f.neutron.handle(
                method, path[len("/networking") :], parse_qs(query), body
            )
            self._send(status, out)
            return
        m = re.fullmatch(r"/v2\.1/(\w+)(/.*)", path)
        if not m or m.group(1) != f.project_id:
            self._send(404, {"itemNotFound": {"code": 404, "message": "Not found"}})
            return
        if self.headers.get("X-Auth-Token") not in f.tokens:
            self._send(
                401,
                {
                    "unauthorized": {
                        "code": 401,
                        "message": "The request you have made requires authentication.",
                    }
                },
            )
            return
        rest = m.group(2)
        if rest == "/servers" and method == "POST":
            self._send(*f.create_server(body))
        elif rest == "/servers/detail" and method == "GET":
            self._send(*f.list_detail())
        elif (sm := re.fullmatch(r"/servers/([\w-]+)", rest)) and method == "GET":
            self._send(*f.show(sm.group(1)))
        elif sm and method == "DELETE":
            self._send(*f.delete(sm.group(1)))
        elif (am := re.fullmatch(r"/servers/([\w-]+)/action", rest)) and method == "POST":
            self._send(*f.action(am.group(1), body))
        elif rest == "/flavors/detail" and method == "GET":
            # Nova's flavor detail view (microversion < 2.75: no swap is "")
            self._send(
                200,
                {
                    "flavors": [
                        {
                            **fl,
                            "swap": "",
                            "OS-FLV-EXT-DATA:ephemeral": 0,
                            "OS-FLV-DISABLED:disabled": False,
                            "os-flavor-access:is_public": True,
                            "rxtx_factor": 1.0,
                            "links": [],
                        }
                        for fl in FLAVORS.values()
                    ]
                },
            )
        elif rest == "/images/detail" and method == "GET":
            self._send(
                200,
                {
                    "images": [
                        {
                            "id": i,
                            "name": n,
                            "status": "ACTIVE",
                            "created": _now(),
                            "updated": _now(),
                            "minDisk": 0,
                            "minRam": 0,
                            "progress": 100,
                            "metadata": {},
                            "links": [],
                        }
                        for i, n in f.images.items()
                    ]
                },
            )
        else:
            self._send(404, {"itemNotFound": {"code": 404, "message": f"{rest} not found"}})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")
