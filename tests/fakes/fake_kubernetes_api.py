"""FAKE Kubernetes API server (apps/v1 Deployments, v1 Services, v1 Secrets, batch/v1 Jobs),
real HTTP.

Speaks the subset of https://kubernetes.io/docs/reference/kubernetes-api/ that the official
`kubernetes` Python client uses for those kinds: create (201; 409 AlreadyExists), read (404
NotFound `Status`), list with `labelSelector` (`k`, `k=v`, `k==v`, `k!=v`, comma = AND),
merge-patch, delete (200 `Status`), every error as a `Status` object. Secrets are validated
as the API server does (keys match `[-._a-zA-Z0-9]+`, else 422 Invalid; `data` values are
base64, else 400; `stringData` is folded into `data`; `type` defaults to Opaque). Not a
cluster: pods are not modelled; a Deployment's replicas become ready on the next read unless
the namespace's GPU quota (`requests.nvidia.com/gpu`) would be exceeded, in which case the
Deployment reports the ReplicaFailure condition with the API server's quota message, or a
container's `valueFrom.secretKeyRef` names a Secret or key that does not exist, in which
case its pod cannot start (CreateContainerConfigError) and no replica becomes ready.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

KINDS = {
    ("apps/v1", "deployments"): "Deployment",
    ("v1", "services"): "Service",
    ("v1", "secrets"): "Secret",
    ("batch/v1", "jobs"): "Job",
}
GROUP_NAMES = {
    "deployments": "deployments.apps",
    "services": "services",
    "secrets": "secrets",
    "jobs": "jobs.batch",
}
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = re.split(r"==?", term, maxsplit=1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term not in labels:
            return False
    return True


def _merge(target: dict, patch: dict) -> dict:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = v
    return target


class FakeKubernetes:
    def __init__(self, *, gpu_quota: int | None = None, token: str | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.gpu_quota = gpu_quota
        self.token = token
        self.lock = threading.Lock()
        self._rv = 0
        self._node_port = 30000
        handler = type("H", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FakeKubernetes:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def of_kind(self, plural: str) -> list[dict[str, Any]]:
        return [o for (p, _, _), o in self.objects.items() if p == plural]

    def _gpus(self, obj: dict[str, Any]) -> int:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        total = 0
        for c in spec.get("containers", []):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                if "nvidia.com/gpu" in (res.get(part) or {}):
                    total += int(res[part]["nvidia.com/gpu"])
                    break
        return total * int(obj.get("spec", {}).get("replicas", 1))

    def _secrets_resolve(self, ns: str, obj: dict[str, Any]) -> bool:
        """Every secretKeyRef of the pod template names an existing Secret and key."""
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if not ref or ref.get("optional"):
                    continue
                secret = self.objects.get(("secrets", ns, ref.get("name")))
                if secret is None or ref.get("key") not in (secret.get("data") or {}):
                    return False
        return True

    def _refresh(self, plural: str, ns: str, obj: dict[str, Any]) -> None:
        if plural == "deployments" and not self._secrets_resolve(ns, obj):
            want = int(obj["spec"].get("replicas", 1))
            obj["status"] = {
                "replicas": want,
                "readyReplicas": 0,
                "availableReplicas": 0,
                "unavailableReplicas": want,
                "updatedReplicas": want,
                "observedGeneration": 1,
            }
        elif plural == "deployments":
            want = int(obj["spec"].get("replicas", 1))
            used = sum(
                self._gpus(o)
                for (p, n, _), o in self.objects.items()
                if p == "deployments"
                and n == ns
                and o is not obj
                and o.get("status", {}).get("readyReplicas")
            )
            need = self._gpus(obj)
            if self.gpu_quota is not None and need and used + need > self.gpu_quota:
                pod = f"{obj['metadata']['name']}-{uuid.uuid4().hex[:10]}"
                obj["status"] = {
                    "replicas": 0,
                    "readyReplicas": 0,
                    "availableReplicas": 0,
                    "observedGeneration": 1,
                    "conditions": [
                        {
                            "type": "ReplicaFailure",
                            "status": "True",
                            "reason": "FailedCreate",
                            "message": (
                                f'pods "{pod}" is forbidden: exceeded quota: '
                                f"gpu-quota, requested: requests.nvidia.com/"
                                f"gpu={need}, used: requests.nvidia.com/gpu="
                                f"{used}, limited: requests.nvidia.com/gpu="
                                f"{self.gpu_quota}"
                            ),
                            "lastTransitionTime": _now(),
                            "lastUpdateTime": _now(),
                        }
                    ],
                }
            else:
                obj["status"] = {
                    "replicas": want,
                    "readyReplicas": want,
                    "availableReplicas": want,
                    "updatedReplicas": want,
                    "observedGeneration": 1,
                }
        elif plural == "jobs":
            obj["status"] = {"active": 1, "startTime": _now()}

    def _check_secret(self, name: str, body: dict[str, Any]) -> tuple[int, dict] | None:
        """The API server's validation of a Secret; folds stringData into data."""
        data = dict(body.get("data") or {})
        for key, value in data.items():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                return 400, _status(
                    400,
                    "BadRequest",
                    'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                    f"at input byte 0 (key {key})",
                )
        for key, value in (body.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        for key in data:
            if not _CONFIG_KEY.match(key):
                return 422, _status(
                    422,
                    "Invalid",
                    f'Secret "{name}" is invalid: data[{key}]: Invalid value: "{key}": a valid '
                    "config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
                    "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                    "'[-._a-zA-Z0-9]+')",
                    {"name": name, "kind": "Secret"},
                )
        body["data"] = data
        body.setdefault("type", "Opaque")
        return None

    def create(self, plural: str, ns: str, body: dict[str, Any]) -> tuple[int, dict]:
        name = (body.get("metadata") or {}).get("name")
        if not name:
            return 422, _status(
                422,
                "Invalid",
                f"{KINDS_BY_PLURAL[plural]}.metadata.name: "
                "Required value: name or generateName is required",
            )
        if plural == "secrets":
            body = copy.deepcopy(body)
            problem = self._check_secret(name, body)
            if problem is not None:
                return problem
        with self.lock:
            key = (plural, ns, name)
            if key in self.objects:
                return 409, _status(
                    409,
                    "AlreadyExists",
                    f'{GROUP_NAMES[plural]} "{name}" already exists',
                    {"name": name, "kind": plural},
                )
            self._rv += 1
            obj = copy.deepcopy(body)
            obj["metadata"].update(
                {
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self._rv),
                    "creationTimestamp": _now(),
                    "generation": 1,
                }
            )
            if plural == "services":
                spec = obj.setdefault("spec", {})
                spec["clusterIP"] = f"10.96.{self._rv // 250}.{self._rv % 250 + 1}"
                if spec.get("type") == "NodePort":
                    for port in spec.get("ports", []):
                        self._node_port += 1
                        port.setdefault("nodePort", self._node_port)
                obj["status"] = {"loadBalancer": {}}
            self.objects[key] = obj
            return 201, obj

    def read(self, plural: str, ns: str, name: str) -> tuple[int, dict]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                return 404, _status(
                    404,
                    "NotFound",
                    f'{GROUP_NAMES[plural]} "{name}" not found',
                    {"name": name, "kind": plural},
                )
            self._refresh(plural, ns, obj)
            return 200, obj

    def list(self, plural: str, ns: str | None, selector: str | None) -> tuple[int, dict]:
        with self.lock:
            items = []
            for (p, n, _), o in self.objects.items():
                if (
                    p == plural
                    and (ns is None or n == ns)
                    and _matches(o["metadata"].get("labels") or {}, selector)
                ):
                    self._refresh(p, n, o)
                    items.append(o)
            api, kind = next((a, k) for (a, p), k in KINDS.items() if p == plural)
            return 200, {
                "apiVersion": api,
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def patch(self, plural: str, ns: str, name: str, body: Any) -> tuple[int, dict]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                return 404, _status(404, "NotFound", f'{GROUP_NAMES[plural]} "{name}" not found')
            if not isinstance(body, dict):
                return 415, _status(
                    415, "UnsupportedMediaType", "only merge patches are supported by this fake"
                )
            self._rv += 1
            _merge(obj, body)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._refresh(plural, ns, obj)
            return 200, obj

    def delete(self, plural: str, ns: str, name: str) -> tuple[int, dict]:
        with self.lock:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is None:
                return 404, _status(404, "NotFound", f'{GROUP_NAMES[plural]} "{name}" not found')
        if plural == "services":  # core/v1 services answer a delete with the deleted object
            return 200, obj
        return 200, _status(200, "", "", {"name": name, "kind": plural})


KINDS_BY_PLURAL = {p: k for (_, p), k in KINDS.items()}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[\w.]+/v1))"
    r"(?:/namespaces/(?P<ns>[\w-]+))?/(?P<plural>\w+)(?:/(?P<name>[\w.-]+))?$"
)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubernetes
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

    def _dispatch(self, method: str) -> None:
        f = self.fake
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if f.token and self.headers.get("Authorization") != f"Bearer {f.token}":
            self._send(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        url = urlparse(self.path)
        m = _PATH.match(url.path.rstrip("/"))
        api = (m.group("core") or m.group("group")) if m else None
        if not m or (api, m.group("plural")) not in KINDS:
            self._send(
                404, _status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        plural, ns, name = m.group("plural"), m.group("ns"), m.group("name")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self._send(400, _status(400, "BadRequest", "invalid JSON body"))
            return
        selector = (parse_qs(url.query).get("labelSelector") or [None])[0]
        if method == "POST" and ns and not name:
            self._send(*f.create(plural, ns, body))
        elif method == "GET" and name:
            self._send(*f.read(plural, ns, name))
        elif method == "GET":
            self._send(*f.list(plural, ns, selector))
        elif method == "PATCH" and name:
            self._send(*f.patch(plural, ns, name, body))
        elif method == "DELETE" and name:
            self._send(*f.delete(plural, ns, name))
        else:
            self._send(405, _status(405, "MethodNotAllowed", f"{method} is not supported here"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")
