"""FAKE Kubernetes cluster for tests: ONE API server that a site's info agent (which lists
nodes) and the im's Kubernetes driver (which makes Deployments, Services and Jobs) both use.

It is tests/fakes/fake_kubernetes_api.py plus `GET /api/v1/nodes`, answered as
kube-apiserver does (a `v1 NodeList` with `status.allocatable` quantities and labels), behind
the same bearer token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from tests.fakes.fake_kubernetes_api import FakeKubernetes, _Handler


class FakeKubernetesCluster(FakeKubernetes):
    def __init__(self, *, token: str, gpu_quota: int | None = None) -> None:
        super().__init__(gpu_quota=gpu_quota, token=token)
        self.nodes: list[dict[str, Any]] = []
        self.httpd.RequestHandlerClass = type("H", (_ClusterHandler,), {"fake": self})

    def add_node(self, name: str, cpu: str, memory: str, gpus: int = 0) -> None:
        allocatable = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Gi", "pods": "110"}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name}
        self.nodes.append(
            {
                "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
                "spec": {},
                "status": {"capacity": dict(allocatable), "allocatable": allocatable},
            }
        )


class _ClusterHandler(_Handler):
    fake: FakeKubernetesCluster

    def do_GET(self) -> None:
        if urlparse(self.path).path.rstrip("/") != "/api/v1/nodes":
            self._dispatch("GET")
        elif self.fake.token and self.headers.get("Authorization") != f"Bearer {self.fake.token}":
            self._send(401, _unauthorized())
        else:
            self._send(
                200,
                {
                    "kind": "NodeList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.fake._rv)},
                    "items": self.fake.nodes,
                },
            )


def _unauthorized() -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
