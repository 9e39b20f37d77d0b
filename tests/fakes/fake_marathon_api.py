"""FAKE Marathon (Mesos) REST API v2, a real HTTP server on loopback.

Speaks the subset of https://mesosphere.github.io/marathon/api-console/index.html that the
`marathon` Python client's app calls use: `POST /v2/apps` (201; 409 "An app with id [...]
already exists."), `GET /v2/apps[?label=...]`, `GET /v2/apps/{id}`, `PUT /v2/apps/{id}`
(scale), `DELETE /v2/apps/{id}`, with Marathon's `{"message": ...}` errors and label
selectors (`key`, `key==value`). Not a scheduler: every instance becomes one running task on
agent `agent-1.fake` with a host port from 31000 upwards, checked against the agents'
offered resources (cpus, mem, gpus), and apps that do not fit stay staged (as Marathon does).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeMarathon:
    def __init__(self, *, cpus: float = 8.0, mem: float = 16384.0, gpus: int = 1) -> None:
        self.capacity = {"cpus": cpus, "mem": mem, "gpus": gpus}
        self.apps: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self._port = 31000
        handler = type("H", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FakeMarathon:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _used(self, exclude: str | None = None) -> dict[str, float]:
        used = {"cpus": 0.0, "mem": 0.0, "gpus": 0.0}
        for aid, app in self.apps.items():
            if aid == exclude:
                continue
            n = len(app["tasks"])
            for k in used:
                used[k] += float(app.get(k) or 0) * n
        return used

    def _schedule(self, app: dict[str, Any]) -> None:
        """Start tasks up to `instances` while the agent has room; stop surplus tasks."""
        while len(app["tasks"]) > app["instances"]:
            app["tasks"].pop()
        used = self._used(exclude=app["id"])
        while len(app["tasks"]) < app["instances"]:
            need = {k: float(app.get(k) or 0) * (len(app["tasks"]) + 1) for k in used}
            if any(used[k] + need[k] > self.capacity[k] for k in used):
                break
            mappings = ((app.get("container") or {}).get("docker") or {}).get("portMappings") or []
            ports = []
            for _ in mappings or [None]:
                self._port += 1
                ports.append(self._port)
            app["tasks"].append(
                {
                    "id": f"{app['id'].strip('/').replace('/', '_')}.{uuid.uuid4()}",
                    "appId": app["id"],
                    "host": "agent-1.fake",
                    "ports": ports,
                    "state": "TASK_RUNNING",
                    "stagedAt": _now(),
                    "startedAt": _now(),
                    "version": app["version"],
                    "slaveId": "agent-1",
                }
            )
        app["tasksRunning"] = len(app["tasks"])
        app["tasksStaged"] = app["instances"] - len(app["tasks"])
        app["tasksHealthy"] = 0
        app["tasksUnhealthy"] = 0

    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        aid = "/" + str(body.get("id", "")).strip("/")
        if not re.fullmatch(r"(/[a-z0-9]([a-z0-9.-]*[a-z0-9])?)+", aid):
            return 422, {
                "message": "Object is not valid",
                "details": [
                    {
                        "path": "/id",
                        "errors": [
                            "must fully match regular expression "
                            "'^(([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])\\.)*"
                            "([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])|"
                            "(\\.|\\.\\.)$'"
                        ],
                    }
                ],
            }
        if not body.get("cmd") and not (body.get("container") or {}).get("docker"):
            return 422, {
                "message": "Object is not valid",
                "details": [
                    {
                        "path": "/",
                        "errors": [
                            "AppDefinition must either contain one of 'cmd' or "
                            "'args', and/or a 'container'."
                        ],
                    }
                ],
            }
        with self.lock:
            if aid in self.apps:
                return 409, {"message": f"An app with id [{aid}] already exists."}
            app = {
                **body,
                "id": aid,
                "instances": int(body.get("instances", 1)),
                "version": _now(),
                "tasks": [],
                "deployments": [{"id": str(uuid.uuid4())}],
            }
            self.apps[aid] = app
            self._schedule(app)
            return 201, self._view(app, tasks=False)

    def _view(self, app: dict[str, Any], tasks: bool = True) -> dict[str, Any]:
        out = {k: v for k, v in app.items() if k != "tasks"}
        if tasks:
            out["tasks"] = list(app["tasks"])
        return out

    @staticmethod
    def _matches(app: dict[str, Any], selector: str | None) -> bool:
        if not selector:
            return True
        labels = app.get("labels") or {}
        for term in selector.split(","):
            if "==" in term:
                k, v = term.split("==", 1)
                if labels.get(k.strip()) != v.strip():
                    return False
            elif term.strip() not in labels:
                return False
        return True

    def list(self, selector: str | None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            return 200, {
                "apps": [
                    self._view(a, tasks=False)
                    for a in self.apps.values()
                    if self._matches(a, selector)
                ]
            }

    def get(self, aid: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            app = self.apps.get(aid)
            if app is None:
                return 404, {"message": f"App '{aid}' does not exist"}
            self._schedule(app)
            return 200, {"app": self._view(app)}

    def update(self, aid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            app = self.apps.get(aid)
            if app is None:
                return 404, {"message": f"App '{aid}' does not exist"}
            for key in ("instances", "cpus", "mem", "gpus", "env", "labels", "cmd"):
                if key in body:
                    app[key] = int(body[key]) if key == "instances" else body[key]
            if any(k in body for k in ("cpus", "mem", "gpus", "env", "cmd")):
                app["tasks"] = []  # a changed definition restarts the tasks
            app["version"] = _now()
            self._schedule(app)
            return 200, {"version": app["version"], "deploymentId": str(uuid.uuid4())}

    def restart(self, aid: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            app = self.apps.get(aid)
            if app is None:
                return 404, {"message": f"App '{aid}' does not exist"}
            app["tasks"] = []
            app["version"] = _now()
            self._schedule(app)
            return 200, {"version": app["version"], "deploymentId": str(uuid.uuid4())}

    def delete(self, aid: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if self.apps.pop(aid, None) is None:
                return 404, {"message": f"App '{aid}' does not exist"}
            for app in self.apps.values():  # freed resources go to staged apps
                self._schedule(app)
        return 200, {"version": _now(), "deploymentId": str(uuid.uuid4())}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeMarathon
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(n)) if n else {}
        except ValueError:
            return None

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        path = url.path.rstrip("/")
        body = self._body() if method in ("POST", "PUT") else {}
        if body is None:
            self._send(400, {"message": "Invalid JSON"})
            return
        f = self.fake
        if path == "/v2/apps" and method == "POST":
            self._send(*f.create(body))
        elif path == "/v2/apps" and method == "GET":
            self._send(*f.list((query.get("label") or [None])[0]))
        elif path.startswith("/v2/apps/") and path.endswith("/restart") and method == "POST":
            self._send(*f.restart("/" + path[len("/v2/apps/") : -len("/restart")].strip("/")))
        elif path.startswith("/v2/apps/"):
            aid = "/" + path[len("/v2/apps/") :].strip("/")
            if method == "GET":
                self._send(*f.get(aid))
            elif method == "PUT":
                self._send(*f.update(aid, body))
            elif method == "DELETE":
                self._send(*f.delete(aid))
            else:
                self._send(405, {"message": "Method not allowed"})
        else:
            self._send(404, {"message": f"{path} not found"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")
