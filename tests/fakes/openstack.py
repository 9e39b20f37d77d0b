"""FAKE OpenStack for tests: one real HTTP server speaking the APIs an info agent reads.

Protocol-faithful for the calls it implements (request shapes, status codes, headers,
pagination links), nothing more:

- Keystone v3: `POST /identity/v3/auth/tokens` (password or application_credential method,
  project scope) -> 201 with `X-Subject-Token` and a service catalog;
- Nova v2.1: `GET /flavors/detail` (microversion >= 2.61 returns `extra_specs` inline;
  `limit`/`marker` pagination with `flavors_links`), `GET /flavors/{id}/os-extra_specs`,
  `GET /os-quota-sets/{project_id}[/detail]`, `GET /limits`, `GET /servers/detail`, and the
  version document at `GET /compute/v2.1` (what novaclient's `versions.get_current` reads);
- Glance v2: `GET /v2/images` (`status` filter, `limit`/`marker`, `next` link) and
  `GET /v2/schemas/image` (glanceclient builds its image model from it);
- Neutron v2.0: `GET /v2.0/networks`.

Every call but token issue needs a valid `X-Auth-Token` (401 otherwise). Tests change the
cloud through the public attributes, make one API fail with `fail[...]`, or stop it.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Project:
    id: str
    name: str
    domain: str = "Default"
    quota: dict[str, dict[str, int]] = field(default_factory=dict)


class FakeOpenStack:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "RegionOne") -> None:
        self.region = region
        self.users: dict[tuple[str, str], str] = {}  # (domain, name) -> password
        self.app_credentials: dict[str, tuple[str, str]] = {}  # id -> (secret, project id)
        self.projects: dict[str, Project] = {}
        self.flavors: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        # Nova server documents (id, name, status, tenant_id); a project lists its own.
        self.servers: list[dict[str, Any]] = []
        # API name ("keystone", "nova", "glance", "neutron", "quotas") -> HTTP status to answer.
        self.fail: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self._tokens: dict[str, str] = {}  # token -> project id
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeOpenStack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    # -- cloud content ------------------------------------------------------------------

    def add_user(self, name: str, password: str, domain: str = "Default") -> None:
        self.users[(domain, name)] = password

    def add_project(self, name: str, quota: dict[str, dict[str, int]] | None = None) -> Project:
        project = Project(id=secrets.token_hex(16), name=name, quota=quota or {})
        self.projects[project.id] = project
        return project

    def add_flavor(
        self,
        fid: str,
        name: str,
        vcpus: int,
        ram: int,
        disk: int,
        extra_specs: dict[str, str] | None = None,
        public: bool = True,
    ) -> None:
        self.flavors[fid] = {
            "id": fid,
            "name": name,
            "vcpus": vcpus,
            "ram": ram,
            "disk": disk,
            "OS-FLV-EXT-DATA:ephemeral": 0,
            "swap": "",
            "rxtx_factor": 1.0,
            "os-flavor-access:is_public": public,
            "OS-FLV-DISABLED:disabled": False,
            "description": None,
            "extra_specs": dict(extra_specs or {}),
            "links": [],
        }

    def add_image(self, iid: str, name: str, status: str = "active", **props: Any) -> None:
        self.images[iid] = {
            "id": iid,
            "name": name,
            "status": status,
            "visibility": "public",
            "container_format": "bare",
            "disk_format": "qcow2",
            "min_disk": 0,
            "min_ram": 0,
            "protected": False,
            "tags": [],
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "self": f"/v2/images/{iid}",
            "file": f"/v2/images/{iid}/file",
            "schema": "/v2/schemas/image",
            **props,
        }

    def add_network(
        self, nid: str, name: str, external: bool = False, shared: bool = False
    ) -> None:
        self.networks[nid] = {
            "id": nid,
            "name": name,
            "router:external": external,
            "shared": shared,
            "status": "ACTIVE",
            "admin_state_up": True,
            "subnets": [],
        }

    # -- HTTP -----------------------------------------------------------------------

    def _catalog(self) -> list[dict[str, Any]]:
        def entry(kind: str, name: str, path: str) -> dict[str, Any]:
            return {
                "type": kind,
                "name": name,
                "id": secrets.token_hex(8),
                "endpoints": [
                    {
                        "id": secrets.token_hex(8),
                        "interface": iface,
                        "region": self.region,
                        "region_id": self.region,
                        "url": f"{self.url}{path}",
                    }
                    for iface in ("public", "internal", "admin")
                ],
            }

        return [
            entry("identity", "keystone", "/identity/v3"),
            entry("compute", "nova", "/compute/v2.1"),
            entry("image", "glance", "/image"),
            entry("network", "neutron", "/network"),
        ]

    def _issue(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        try:
            identity = body["auth"]["identity"]
            methods = identity["methods"]
        except (KeyError, TypeError):
            return (
                400,
                {"error": {"code": 400, "message": "Expecting to find auth in request body"}},
                None,
            )
        project: Project | None = None
        if "application_credential" in methods:
            cred = identity.get("application_credential", {})
            stored = self.app_credentials.get(cred.get("id", ""))
            if stored is None or stored[0] != cred.get("secret"):
                return 401, _unauth(), None
            project = self.projects.get(stored[1])
        elif "password" in methods:
            user = identity.get("password", {}).get("user", {})
            domain = (user.get("domain") or {}).get("name", "Default")
            if self.users.get((domain, user.get("name", ""))) != user.get("password"):
                return 401, _unauth(), None
            scope = (body["auth"].get("scope") or {}).get("project") or {}
            for p in self.projects.values():
                if scope.get("id") == p.id or (
                    scope.get("name") == p.name
                    and (scope.get("domain") or {}).get("name", "Default") == p.domain
                ):
                    project = p
            if scope and project is None:
                return 401, _unauth(), None
        else:
            return 401, _unauth(), None
        token = secrets.token_hex(24)
        self._tokens[token] = project.id if project else ""
        payload = {
            "token": {
                "methods": methods,
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": "2026-01-01T00:00:00.000000Z",
                "user": {
                    "id": "u1",
                    "name": "agent",
                    "domain": {"id": "default", "name": "Default"},
                },
                "catalog": self._catalog() if project else [],
                **(
                    {
                        "project": {
                            "id": project.id,
                            "name": project.name,
                            "domain": {"id": "default", "name": project.domain},
                        }
                    }
                    if project
                    else {}
                ),
            }
        }
        return 201, payload, token

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                path = urlparse(self.path).path
                cloud.requests.append(("POST", path))
                if path != "/identity/v3/auth/tokens":
                    self._send(404, {"itemNotFound": {"code": 404, "message": "Not found"}})
                    return
                if "keystone" in cloud.fail:
                    self._send(
                        cloud.fail["keystone"], {"error": {"message": "Service Unavailable"}}
                    )
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"error": {"code": 400, "message": "Malformed JSON"}})
                    return
                status, payload, token = cloud._issue(body)
                self._send(status, payload, {"X-Subject-Token": token} if token else None)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                path, qs = url.path, parse_qs(url.query)
                cloud.requests.append(("GET", path))
                project = cloud._tokens.get(self.headers.get("X-Auth-Token", ""))
                if project is None:
                    self._send(401, _unauth())
                    return
                api = _api_of(path)
                if api in cloud.fail or (
                    api == "nova" and "/os-quota-sets" in path and "quotas" in cloud.fail
                ):
                    status = cloud.fail.get(api) or cloud.fail["quotas"]
                    self._send(status, {"message": "fake failure"})
                    return
                route = {
                    "/compute/v2.1": self._compute_version,
                    "/compute/v2.1/flavors/detail": self._flavors,
                    "/compute/v2.1/limits": self._limits,
                    "/compute/v2.1/servers/detail": self._servers,
                    "/image/v2/images": self._images,
                    "/image/v2/schemas/image": self._image_schema,
                    "/network/v2.0/networks": self._networks,
                }.get(path.rstrip("/"))
                if route is not None:
                    route(qs, project)
                elif path.startswith("/compute/v2.1/flavors/") and path.endswith("/os-extra_specs"):
                    fid = path.split("/")[4]
                    flavor = cloud.flavors.get(fid)
                    if flavor is None:
                        self._send(
                            404,
                            {
                                "itemNotFound": {
                                    "code": 404,
                                    "message": f"Flavor {fid} could not be found.",
                                }
                            },
                        )
                    else:
                        self._send(200, {"extra_specs": flavor["extra_specs"]})
                elif path.startswith("/compute/v2.1/os-quota-sets/"):
                    pid = path.split("/")[4]
                    if pid != project:
                        self._send(
                            403, {"forbidden": {"code": 403, "message": "Policy doesn't allow"}}
                        )
                    else:
                        self._quota(cloud.projects[pid], detail=path.endswith("/detail"))
                else:
                    self._send(404, {"itemNotFound": {"code": 404, "message": "Not found"}})

            def _microversion(self) -> tuple[int, int]:
                raw = self.headers.get("OpenStack-API-Version", "") or ""
                raw = raw.replace("compute", "").strip() or self.headers.get(
                    "X-OpenStack-Nova-API-Version", "2.1"
                )
                if raw == "latest":
                    return (2, 96)
                major, _, minor = raw.partition(".")
                try:
                    return int(major), int(minor or 0)
                except ValueError:
                    return (2, 1)

            def _flavors(self, qs: dict[str, list[str]], _project: str) -> None:
                rows = sorted(cloud.flavors.values(), key=lambda f: f["id"])
                if qs.get("is_public", ["true"])[0].lower() == "true":
                    rows = [f for f in rows if f["os-flavor-access:is_public"]]
                marker = qs.get("marker", [None])[0]
                if marker:
                    ids = [f["id"] for f in rows]
                    rows = rows[ids.index(marker) + 1 :] if marker in ids else []
                limit = int(qs.get("limit", ["1000"])[0])
                page, more = rows[:limit], len(rows) > limit
                inline = self._microversion() >= (2, 61)
                out = []
                for f in page:
                    f = dict(f)
                    if not inline:
                        f.pop("extra_specs")
                    out.append(f)
                body: dict[str, Any] = {"flavors": out}
                if more:
                    body["flavors_links"] = [
                        {
                            "rel": "next",
                            "href": f"{cloud.url}/compute/v2.1/flavors/detail?is_public="
                            f"{qs.get('is_public', ['true'])[0]}&limit={limit}&marker={page[-1]['id']}",
                        }
                    ]
                self._send(200, body)

            def _quota(self, project: Project, detail: bool = True) -> None:
                # Without /detail Nova answers the limits alone, not {limit, in_use, reserved}.
                quota = (
                    project.quota
                    if detail
                    else {k: v.get("limit", -1) for k, v in project.quota.items()}
                )
                self._send(200, {"quota_set": {"id": project.id, **quota}})

            def _compute_version(self, _qs: dict[str, list[str]], _project: str) -> None:
                self._send(
                    200,
                    {
                        "version": {
                            "id": "v2.1",
                            "status": "CURRENT",
                            "version": "2.96",
                            "min_version": "2.1",
                            "updated": "2013-07-23T11:33:21Z",
                            "links": [{"rel": "self", "href": f"{cloud.url}/compute/v2.1/"}],
                            "media-types": [
                                {
                                    "base": "application/json",
                                    "type": "application/vnd.openstack.compute+json;version=2.1",
                                }
                            ],
                        }
                    },
                )

            def _servers(self, _qs: dict[str, list[str]], project: str) -> None:
                mine = [v for v in cloud.servers if v.get("tenant_id") == project]
                self._send(200, {"servers": mine})

            def _image_schema(self, _qs: dict[str, list[str]], _project: str) -> None:
                # Glance's image schema, reduced to the core properties; like Glance it lets
                # any other (custom) property through as a string.
                core = {
                    name: {"type": kind}
                    for name, kind in (
                        ("id", "string"), ("name", ["null", "string"]), ("status", "string"),
                        ("visibility", "string"), ("protected", "boolean"),
                        ("os_hidden", "boolean"), ("checksum", ["null", "string"]),
                        ("owner", ["null", "string"]), ("size", ["null", "integer"]),
                        ("min_ram", "integer"), ("min_disk", "integer"),
                        ("disk_format", ["null", "string"]),
                        ("container_format", ["null", "string"]), ("created_at", "string"),
                        ("updated_at", "string"), ("tags", "array"), ("file", "string"),
                        ("self", "string"), ("schema", "string"),
                    )
                }  # fmt: skip
                self._send(
                    200,
                    {
                        "name": "image",
                        "properties": core,
                        "additionalProperties": {"type": "string"},
                        "links": [
                            {"rel": "self", "href": "{self}"},
                            {"rel": "enclosure", "href": "{file}"},
                            {"rel": "describedby", "href": "{schema}"},
                        ],
                    },
                )

            def _limits(self, _qs: dict[str, list[str]], project_id: str) -> None:
                q = cloud.projects[project_id].quota

                def lim(key: str) -> int:
                    return q.get(key, {}).get("limit", -1)

                def used(key: str) -> int:
                    return q.get(key, {}).get("in_use", 0)

                self._send(
                    200,
                    {
                        "limits": {
                            "rate": [],
                            "absolute": {
                                "maxTotalInstances": lim("instances"),
                                "totalInstancesUsed": used("instances"),
                                "maxTotalCores": lim("cores"),
                                "totalCoresUsed": used("cores"),
                                "maxTotalRAMSize": lim("ram"),
                                "totalRAMUsed": used("ram"),
                                "maxServerMeta": 128,
                                "maxPersonality": 5,
                            },
                        }
                    },
                )

            def _images(self, qs: dict[str, list[str]], _project: str) -> None:
                rows = sorted(cloud.images.values(), key=lambda i: i["id"])
                if "status" in qs:
                    rows = [i for i in rows if i["status"] == qs["status"][0]]
                marker = qs.get("marker", [None])[0]
                if marker:
                    ids = [i["id"] for i in rows]
                    rows = rows[ids.index(marker) + 1 :] if marker in ids else []
                limit = int(qs.get("limit", ["25"])[0])
                page = rows[:limit]
                body: dict[str, Any] = {
                    "images": page,
                    "first": "/v2/images",
                    "schema": "/v2/schemas/images",
                }
                if len(rows) > limit:
                    status = f"status={qs['status'][0]}&" if "status" in qs else ""
                    body["next"] = f"/v2/images?{status}limit={limit}&marker={page[-1]['id']}"
                self._send(200, body)

            def _networks(self, _qs: dict[str, list[str]], _project: str) -> None:
                self._send(200, {"networks": list(cloud.networks.values())})

        return Handler


def _api_of(path: str) -> str:
    return {"compute": "nova", "image": "glance", "network": "neutron", "identity": "keystone"}.get(
        path.split("/")[1], ""
    )


def _unauth() -> dict[str, Any]:
    return {
        "error": {
            "code": 401,
            "title": "Unauthorized",
            "message": "The request you have made requires authentication.",
        }
    }
