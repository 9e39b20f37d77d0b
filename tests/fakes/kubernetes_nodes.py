"""FAKE Kubernetes API server for tests: `GET /api/v1/nodes` only, as a real HTTP server.

Answers a `v1 NodeList` the way kube-apiserver does (apiVersion/kind/metadata/items with
`status.allocatable` quantities and labels), requires the bearer token it was given, and
answers 401 `Status` otherwise. Everything else is a 404 `Status`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeKubernetesNodes:
    def __init__(self, token: str, host: str = "127.0.0.1") -> None:
        self.token = token
        self.nodes: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKubernetesNodes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_node(
        self,
        name: str,
        cpu: str,
        memory: str,
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        unschedulable: bool = False,
    ) -> None:
        allocatable = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Gi", "pods": "110"}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        self.nodes.append(
            {
                "metadata": {
                    "name": name,
                    "uid": f"uid-{name}",
                    "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                               **(labels or {})},
                },
                "spec": {"unschedulable": True} if unschedulable else {},
                "status": {"capacity": dict(allocatable), "allocatable": allocatable},
            }
        )  # fmt: skip

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Failure", "message": message, "reason": reason,
                                  "code": code})  # fmt: skip

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._status(401, "Unauthorized", "Unauthorized")
                elif self.path.split("?")[0] == "/api/v1/nodes":
                    self._send(200, {"kind": "NodeList", "apiVersion": "v1",
                                     "metadata": {"resourceVersion": "1"}, "items": fake.nodes})  # fmt: skip
                else:
                    self._status(
                        404, "NotFound", "the server could not find the requested resource"
                    )

        return Handler
