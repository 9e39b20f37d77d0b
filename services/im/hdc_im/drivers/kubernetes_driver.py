"""Container nodes on Kubernetes: a Deployment + NodePort Service per instance (a Job for
batch nodes), with CPU/memory/GPU requests, environment, and exposed ports as outputs.

A node's secret environment values become a Secret (same name as the Deployment, made
before it, labelled like it) that the container reads through `valueFrom.secretKeyRef`:
the values never appear in the Deployment, and the Secret goes with the instance.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import urlparse

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from hdc_im.drivers.base import (
    TAG_INFRA,
    TAG_NODE,
    TAG_TOKEN,
    CloudError,
    Driver,
    Tagged,
    VmRequest,
    VmStatus,
)


def _api_message(exc: ApiException) -> str:
    try:
        return f"Kubernetes {exc.status}: {json.loads(exc.body)['message']}"
    except (ValueError, TypeError, KeyError):
        return f"Kubernetes {exc.status}: {exc.reason}"


def _name(req: VmRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", req.node.name.lower()).strip("-") or "node"
    return f"hdc-{req.infrastructure_id[:8]}-{base}-{req.index}"[:63].rstrip("-")


class KubernetesDriver(Driver):
    provider_type = "Kubernetes"

    def __init__(
        self, endpoint: str, credentials: dict[str, str], namespace: str = "default"
    ) -> None:
        if not endpoint:
            raise CloudError("Kubernetes site without an API server URL", bad_input=True)
        cfg = k8s.Configuration()
        cfg.host = endpoint.rstrip("/")
        cfg.verify_ssl = credentials.get("verify", "true").lower() != "false"
        if credentials.get("token"):
            cfg.api_key = {"authorization": f"Bearer {credentials['token']}"}
        self.api = k8s.ApiClient(cfg)
        self.apps = k8s.AppsV1Api(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.batch = k8s.BatchV1Api(self.api)
        self.ns = credentials.get("namespace") or namespace
        self.node_host = credentials.get("node_host") or urlparse(endpoint).hostname or ""

    def _call(self, fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise CloudError(_api_message(exc), bad_input=exc.status in (400, 422)) from None

    def close(self) -> None:
        self.api.close()

    # -- making ---------------------------------------------------------------------------

    def _container(self, req: VmRequest) -> k8s.V1Container:
        node = req.node
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if node.cpus:
            requests["cpu"] = str(node.cpus)
        if node.memory_mb:
            requests["memory"] = f"{node.memory_mb}Mi"
        if node.gpus:
            limits["nvidia.com/gpu"] = str(node.gpus)
            requests["nvidia.com/gpu"] = str(node.gpus)
        env = [k8s.V1EnvVar(name=k, value=v) for k, v in node.environment.items()]
        env += [
            k8s.V1EnvVar(
                name=k,
                value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=_name(req), key=k)
                ),
            )
            for k in node.secrets
        ]
        return k8s.V1Container(
            name="main",
            image=node.image,
            args=["/bin/sh", "-c", node.command] if node.command else None,
            env=env or None,
            ports=[
                k8s.V1ContainerPort(container_port=p["port"], protocol=p["protocol"].upper())
                for p in node.ports.values()
            ]
            or None,
            resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
        )

    def create_vm(self, req: VmRequest) -> VmStatus:
        node = req.node
        if node.kind != "container":
            raise CloudError(
                f"node '{node.name}': Kubernetes runs containers, not VMs", bad_input=True
            )
        name = _name(req)
        labels = {
            TAG_INFRA: req.infrastructure_id,
            TAG_TOKEN: req.token,
            TAG_NODE: re.sub(r"[^A-Za-z0-9_.-]", "-", node.name)[:63],
        }
        meta = k8s.V1ObjectMeta(name=name, labels={**node.labels, **labels})
        if node.secrets:
            self._make_secret(req, meta)
        pod = k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(labels={TAG_TOKEN: req.token}),
            spec=k8s.V1PodSpec(
                containers=[self._container(req)],
                restart_policy="OnFailure" if node.batch else "Always",
            ),
        )
        try:
            if node.batch:
                self.batch.create_namespaced_job(
                    self.ns,
                    k8s.V1Job(metadata=meta, spec=k8s.V1JobSpec(template=pod, backoff_limit=3)),
                )
            else:
                self.apps.create_namespaced_deployment(
                    self.ns,
                    k8s.V1Deployment(
                        metadata=meta,
                        spec=k8s.V1DeploymentSpec(
                            replicas=1,
                            template=pod,
                            selector=k8s.V1LabelSelector(match_labels={TAG_TOKEN: req.token}),
                        ),
                    ),
                )
        except ApiException as exc:
            if exc.status != 409:  # 409: made by an earlier attempt (the name is the key)
                raise CloudError(_api_message(exc), bad_input=exc.status in (400, 422)) from None
        if node.ports and not node.batch:
            svc = k8s.V1Service(
                metadata=meta,
                spec=k8s.V1ServiceSpec(
                    type="NodePort",
                    selector={TAG_TOKEN: req.token},
                    ports=[
                        k8s.V1ServicePort(
                            name=re.sub(r"[^a-z0-9-]", "-", n.lower())[:15],
                            port=p["port"],
                            target_port=p["port"],
                            protocol=p["protocol"].upper(),
                        )
                        for n, p in node.ports.items()
                    ],
                ),
            )
            try:
                self.core.create_namespaced_service(self.ns, svc)
            except ApiException as exc:
                if exc.status != 409:
                    raise CloudError(_api_message(exc)) from None
        status = self.vm_status(f"{'job' if node.batch else 'deployment'}/{name}")
        if status is None:
            raise CloudError(f"{name} vanished right after creation")
        return status

    def _make_secret(self, req: VmRequest, meta: k8s.V1ObjectMeta) -> None:
        """The Secret the container's secret environment comes from; made before the
        workload (a pod whose secret is missing does not start), recorded around the call."""
        record = req.record or (lambda *_: None)
        record("secret", meta.name, None)
        secret = k8s.V1Secret(
            metadata=meta,
            type="Opaque",
            data={k: base64.b64encode(v.encode()).decode() for k, v in req.node.secrets.items()},
        )
        try:
            self.core.create_namespaced_secret(self.ns, secret)
        except ApiException as exc:
            if exc.status != 409:  # 409: made by an earlier attempt (the name is the key)
                raise CloudError(_api_message(exc), bad_input=exc.status in (400, 422)) from None
        record("secret", meta.name, meta.name)

    # -- reading --------------------------------------------------------------------------

    def vm_status(self, provider_id: str) -> VmStatus | None:
        kind, name = provider_id.split("/", 1)
        if kind == "job":
            job = self._call(self.batch.read_namespaced_job, name, self.ns, missing_ok=True)
            if job is None:
                return None
            st = job.status
            state = (
                "off"
                if st and st.succeeded
                else "failed"
                if st and st.failed
                else "running"
                if st and st.active
                else "pending"
            )
            return VmStatus(provider_id=provider_id, state=state)
        dep = self._call(self.apps.read_namespaced_deployment, name, self.ns, missing_ok=True)
        if dep is None:
            return None
        st = dep.status
        failure = (
            next(
                (
                    c
                    for c in (st.conditions or [])
                    if c.type == "ReplicaFailure" and c.status == "True"
                ),
                None,
            )
            if st
            else None
        )
        if dep.spec.replicas == 0:
            state = "stopped"
        elif failure is not None:
            state = "failed"
        elif st and (st.ready_replicas or 0) >= (dep.spec.replicas or 1):
            state = "running"
        else:
            state = "pending"
        ports: dict[str, Any] = {}
        svc = self._call(self.core.read_namespaced_service, name, self.ns, missing_ok=True)
        if svc is not None:
            for p in svc.spec.ports or []:
                if p.node_port:
                    ports[p.name or str(p.port)] = p.node_port
            first = next((p.node_port for p in svc.spec.ports or [] if p.node_port), None)
            if first:
                ports["url"] = f"http://{self.node_host}:{first}"
        info = {"error": failure.message} if failure is not None else {}
        return VmStatus(
            provider_id=provider_id,
            state=state,
            public_ip=self.node_host or None,
            private_ip=svc.spec.cluster_ip if svc is not None else None,
            ports=ports,
            info=info,
        )

    def find_vm(self, infrastructure_id: str, token: str) -> VmStatus | None:
        sel = f"{TAG_TOKEN}={token}"
        deps = self._call(self.apps.list_namespaced_deployment, self.ns, label_selector=sel)
        if deps.items:
            return self.vm_status(f"deployment/{deps.items[0].metadata.name}")
        jobs = self._call(self.batch.list_namespaced_job, self.ns, label_selector=sel)
        if jobs.items:
            return self.vm_status(f"job/{jobs.items[0].metadata.name}")
        return None

    # -- changing -------------------------------------------------------------------------

    def destroy_vm(self, provider_id: str) -> None:
        kind, name = provider_id.split("/", 1)
        if kind == "job":
            self._call(
                self.batch.delete_namespaced_job,
                name,
                self.ns,
                missing_ok=True,
                propagation_policy="Background",
            )
        else:
            self._call(self.apps.delete_namespaced_deployment, name, self.ns, missing_ok=True)
        self._call(self.core.delete_namespaced_service, name, self.ns, missing_ok=True)
        self._call(self.core.delete_namespaced_secret, name, self.ns, missing_ok=True)

    def release(self, infrastructure_id: str, resources: list[tuple[str, str, str | None]]) -> None:
        for kind, name, _pid in resources:
            if kind == "secret":
                self._call(self.core.delete_namespaced_secret, name, self.ns, missing_ok=True)

    def _scale(self, provider_id: str, replicas: int) -> None:
        kind, name = provider_id.split("/", 1)
        if kind == "job":
            raise CloudError(
                "a batch job cannot be stopped or started; delete it instead", bad_input=True
            )
        if (
            self._call(
                self.apps.patch_namespaced_deployment,
                name,
                self.ns,
                {"spec": {"replicas": replicas}},
                missing_ok=True,
            )
            is None
        ):
            raise CloudError(f"deployment {name} does not exist")

    def alter_vm(self, provider_id: str, node: Any) -> None:
        kind, name = provider_id.split("/", 1)
        if kind == "job":
            raise CloudError("a running batch job cannot be resized", bad_input=True)
        requests: dict[str, str] = {}
        if node.cpus:
            requests["cpu"] = str(node.cpus)
        if node.memory_mb:
            requests["memory"] = f"{node.memory_mb}Mi"
        limits = {"nvidia.com/gpu": str(node.gpus)} if node.gpus else {}
        if node.gpus:
            requests["nvidia.com/gpu"] = str(node.gpus)
        patch = {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "main", "resources": {"requests": requests, "limits": limits}}
                        ]
                    }
                }
            }
        }
        if (
            self._call(self.apps.patch_namespaced_deployment, name, self.ns, patch, missing_ok=True)
            is None
        ):
            raise CloudError(f"deployment {name} does not exist")

    def stop_vm(self, provider_id: str) -> None:
        self._scale(provider_id, 0)

    def start_vm(self, provider_id: str) -> None:
        self._scale(provider_id, 1)

    def reboot_vm(self, provider_id: str) -> None:
        self._scale(provider_id, 0)
        self._scale(provider_id, 1)

    def list_tagged(self) -> list[Tagged]:
        out = []
        for kind, lister in (
            ("deployment", self.apps.list_namespaced_deployment),
            ("job", self.batch.list_namespaced_job),
        ):
            for item in self._call(lister, self.ns, label_selector=TAG_INFRA).items:
                labels = item.metadata.labels or {}
                out.append(
                    Tagged(
                        "vm",
                        f"{kind}/{item.metadata.name}",
                        labels.get(TAG_INFRA, ""),
                        labels.get(TAG_TOKEN, ""),
                    )
                )
        secrets = self._call(self.core.list_namespaced_secret, self.ns, label_selector=TAG_INFRA)
        for item in secrets.items:
            labels = item.metadata.labels or {}
            out.append(
                Tagged(
                    "secret",
                    item.metadata.name,
                    labels.get(TAG_INFRA, ""),
                    labels.get(TAG_TOKEN, ""),
                )
            )
        return out
