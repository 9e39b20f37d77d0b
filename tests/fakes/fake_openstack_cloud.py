"""FAKE OpenStack cloud for tests: ONE real HTTP server that both a site's info agent and the
im's libcloud driver talk to, so what the registry publishes is what the im provisions on.

It is the info agent's fake (tests/fakes/openstack.py: Keystone v3 with a service catalog,
Nova flavors with extra specs, quotas and limits, Glance v2) with, for its one project:

- Neutron v2.0 under the catalog's `network` endpoint: the fake in openstack_network.py
  (networks, subnets, ports, routers, floating IPs, security groups);
- the Nova server API libcloud's OpenStack driver uses
  (https://docs.openstack.org/api-ref/compute/): `POST /servers` (202; `imageRef` must be an
  active Glance image and `flavorRef` a flavor id or link, else 400 `badRequest`; the
  networks and security groups asked for must exist, else 400/409 as Nova answers; the
  project's instance/core/RAM quota is enforced with Nova's 403 `forbidden` message and its
  `in_use` counters follow), `GET /servers/detail`, `GET|DELETE /servers/{id}` (404
  `itemNotFound`), `POST /servers/{id}/action` (`os-stop`, `os-start`, `reboot`).

Servers are records: BUILD on create; on the next read ACTIVE with a port (and its fixed
address) on each network they asked for, as Nova reports once networking is allocated. A
server's delete removes its ports; floating IPs on them stay allocated, as in Neutron.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import threading
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakes.openstack import FakeOpenStack, Project
from tests.fakes.openstack_network import FakeNeutron

SERVERS = re.compile(r"^/compute/v2\.1/servers(?:/(?P<id>[\w-]+)(?P<action>/action)?)?/?$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fault(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {kind: {"code": status, "message": message}}


class FakeOpenStackCloud(FakeOpenStack):
    """One project's cloud (add_project once), served on one port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "RegionOne") -> None:
        super().__init__(host, port, region)
        self.instances: dict[str, dict[str, Any]] = {}  # Nova servers by id
        self.user_data: dict[str, str] = {}  # server id -> decoded cloud-init user data
        self.neutron: FakeNeutron | None = None
        self._lock = threading.Lock()

    def add_project(self, name: str, quota: dict[str, dict[str, int]] | None = None) -> Project:
        assert self.neutron is None, "this fake cloud holds one project"
        project = super().add_project(name, quota)
        self.neutron = FakeNeutron(project.id)
        return project

    def servers_view(self) -> list[dict[str, Any]]:
        """Every server as `GET /servers/detail` shows it."""
        with self._lock:
            return [self._view(s, advance=False) for s in self.instances.values()]

    # -- Nova servers ---------------------------------------------------------------------

    def _use(self, project_id: str, flavor: dict[str, Any], sign: int) -> str | None:
        """Count a server in (or out of) the project's quota; Nova's message if it won't fit."""
        quota = self.projects[project_id].quota
        need = {"instances": 1, "cores": flavor["vcpus"], "ram": flavor["ram"]}
        if sign > 0:
            for key, amount in need.items():
                q = quota.get(key)
                if q and q.get("limit", -1) >= 0 and q.get("in_use", 0) + amount > q["limit"]:
                    return (
                        f"Quota exceeded for {key}: Requested {amount}, but already used "
                        f"{q.get('in_use', 0)} of {q['limit']} {key}"
                    )
        for key, amount in need.items():
            if key in quota:
                quota[key]["in_use"] = max(0, quota[key].get("in_use", 0) + sign * amount)
        return None

    def create_server(self, project_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        srv = body.get("server") if isinstance(body, dict) else None
        if not isinstance(srv, dict) or not srv.get("name"):
            return _fault(
                400, "badRequest", "Invalid input for field/attribute server. Value: None."
            )
        image = self.images.get(str(srv.get("imageRef") or "").rsplit("/", 1)[-1])
        if image is None or image["status"] != "active":
            return _fault(400, "badRequest", f"Image {srv.get('imageRef')} could not be found.")
        flavor = self.flavors.get(str(srv.get("flavorRef") or "").rsplit("/", 1)[-1])
        if flavor is None:
            return _fault(400, "badRequest", f"Flavor {srv.get('flavorRef')} could not be found.")
        user_data = ""
        if srv.get("user_data"):
            try:
                user_data = base64.b64decode(srv["user_data"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return _fault(400, "badRequest", "User data needs to be valid base 64.")
        net = self.neutron
        assert net is not None
        networks, refusal = net.boot_networks(srv.get("networks"), net.project_id)
        if refusal is not None:
            return refusal
        groups, refusal = net.boot_security_groups(srv.get("security_groups"), net.project_id)
        if refusal is not None:
            return refusal
        with self._lock:
            refused = self._use(project_id, flavor, +1)
            if refused:
                return _fault(403, "forbidden", refused)
            sid = str(uuid.uuid4())
            self.instances[sid] = {
                "id": sid,
                "name": srv["name"],
                "status": "BUILD",
                "tenant_id": project_id,
                "user_id": "u1",
                "metadata": {str(k): str(v) for k, v in (srv.get("metadata") or {}).items()},
                "hostId": uuid.uuid4().hex,
                "image": {"id": image["id"], "links": []},
                "flavor": {"id": flavor["id"], "links": []},
                "created": _now(),
                "updated": _now(),
                "accessIPv4": "",
                "accessIPv6": "",
                "key_name": srv.get("key_name"),
                "config_drive": "",
                "progress": 0,
                "OS-EXT-STS:vm_state": "building",
                "OS-EXT-STS:task_state": None,
                "OS-EXT-STS:power_state": 0,
                "security_groups": [{"name": g} for g in groups],
                "os-extended-volumes:volumes_attached": [],
                "_networks": networks,
                "_groups": groups,
                "_reads": 0,
            }
            if user_data:
                self.user_data[sid] = user_data
        return 202, {
            "server": {
                "id": sid,
                "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/servers/{sid}"}],
                "adminPass": uuid.uuid4().hex[:12],
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": [{"name": g} for g in groups],
            }
        }

    def _advance(self, s: dict[str, Any]) -> None:
        net = self.neutron
        assert net is not None
        if s["status"] == "BUILD" and s["_reads"] >= 1:
            # networking is allocated as the server is scheduled: its ports appear now
            with net.lock:
                for nid in s["_networks"]:
                    port = net.new_port(nid, s["id"], "compute:nova", security_groups=s["_groups"])
                    if port is None:
                        s.update(status="ERROR", **{"OS-EXT-STS:vm_state": "error"})
                        s["fault"] = {
                            "code": 500,
                            "message": "Build of instance aborted: Failed to allocate the "
                            "network(s), not rescheduling.",
                            "created": _now(),
                        }
                        return
            s.update(
                {"status": "ACTIVE", "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:power_state": 1}
            )
        s["_reads"] += 1

    def _view(self, s: dict[str, Any], advance: bool = True) -> dict[str, Any]:
        if advance:
            self._advance(s)
        link = f"{self.url}/compute/v2.1/servers/{s['id']}"
        return {k: v for k, v in s.items() if not k.startswith("_")} | {
            "addresses": self.neutron.server_addresses(s["id"]) if self.neutron else {},
            "links": [{"rel": "self", "href": link}],
        }

    def server_call(
        self, method: str, project_id: str, sid: str | None, action: bool, body: Any
    ) -> tuple[int, dict[str, Any] | None]:
        if sid is None and method == "POST":
            return self.create_server(project_id, body)
        if sid in (None, "detail") and method == "GET":
            with self._lock:
                mine = [s for s in self.instances.values() if s["tenant_id"] == project_id]
                return 200, {"servers": [self._view(s) for s in mine]}
        with self._lock:
            s = self.instances.get(str(sid))
            if s is None or s["tenant_id"] != project_id:
                return _fault(404, "itemNotFound", f"Instance {sid} could not be found.")
            if method == "GET" and not action:
                return 200, {"server": self._view(s)}
            if method == "DELETE" and not action:
                del self.instances[s["id"]]
                self.user_data.pop(s["id"], None)
                self._use(project_id, self.flavors[s["flavor"]["id"]], -1)
                net = self.neutron
                assert net is not None
                with net.lock:
                    for pid in [p["id"] for p in net.ports.values() if p["device_id"] == s["id"]]:
                        net.drop_port(pid)
                return 204, None
            if method == "POST" and action and isinstance(body, dict):
                if "os-stop" in body:
                    s.update(status="SHUTOFF", **{"OS-EXT-STS:vm_state": "stopped"})
                    return 202, None
                if "os-start" in body or "reboot" in body:
                    s.update(status="ACTIVE", **{"OS-EXT-STS:vm_state": "active"})
                    return 202, None
        return _fault(400, "badRequest", "Invalid server action or method")

    # -- HTTP -----------------------------------------------------------------------------

    def _handler(self) -> type:
        base = super()._handler()
        cloud = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def _mine(self, method: str) -> bool:
                """Serve Nova servers and Neutron here; False: the info agent's fake answers."""
                url = urlparse(self.path)
                servers = SERVERS.match(url.path)
                if servers is None and not url.path.startswith("/network/"):
                    return False
                cloud.requests.append((method, url.path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                project = cloud._tokens.get(self.headers.get("X-Auth-Token", ""))
                if not project:
                    self._send(401, {"error": {"code": 401, "message": "Unauthorized"}})
                    return True
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    self._send(400, {"badRequest": {"code": 400, "message": "Malformed body"}})
                    return True
                if servers is None:
                    assert cloud.neutron is not None
                    path = url.path[len("/network") :]
                    status, out = cloud.neutron.handle(method, path, parse_qs(url.query), body)
                else:
                    status, out = cloud.server_call(
                        method, project, servers.group("id"), bool(servers.group("action")), body
                    )
                if out is None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(status, out)
                return True

            def do_GET(self) -> None:
                if not self._mine("GET"):
                    super().do_GET()

            def do_POST(self) -> None:
                if not self._mine("POST"):
                    super().do_POST()

            def do_PUT(self) -> None:
                if not self._mine("PUT"):
                    self._send(404, {"itemNotFound": {"code": 404, "message": "Not found"}})

            def do_DELETE(self) -> None:
                if not self._mine("DELETE"):
                    self._send(404, {"itemNotFound": {"code": 404, "message": "Not found"}})

        return Handler
