"""Kubernetes collector: node shapes (allocatable CPU, memory, GPUs, GPU labels) as flavors.

A cluster is one service of type `kubernetes`; each distinct node shape becomes a flavor
whose `properties.nodes` says how many nodes have it, so placement can ask "a node with
2 NVIDIA GPUs" the same way it asks an OpenStack site for a flavor.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from hdc_infoprovider.agent.collectors import CollectorError
from hdc_infoprovider.agent.config import KubernetesCollectorConfig


class KubernetesCollector:
    def __init__(self, cfg: KubernetesCollectorConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.cfg.host:
            conf = client.Configuration()
            conf.host = self.cfg.host
            token = self.cfg.token or (
                self.cfg.token_file.read_text().strip() if self.cfg.token_file else ""
            )
            if token:
                conf.api_key = {"authorization": f"Bearer {token}"}
            conf.verify_ssl = self.cfg.verify_ssl
            return client.CoreV1Api(client.ApiClient(conf))
        try:
            api_client = config.new_client_from_config(
                config_file=str(self.cfg.kubeconfig) if self.cfg.kubeconfig else None
            )
        except Exception as exc:
            raise CollectorError(f"kubeconfig: {exc}") from None
        return client.CoreV1Api(api_client)

    def collect(self) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.utils import parse_quantity
        from urllib3.exceptions import HTTPError

        api = self._api()
        try:
            nodes = api.list_node(_request_timeout=20).items
        except (ApiException, HTTPError, OSError) as exc:
            raise CollectorError(f"listing nodes failed: {exc}") from None
        shapes: dict[tuple[Any, ...], dict[str, Any]] = {}
        for node in nodes:
            spec = node.spec
            if spec is not None and spec.unschedulable:
                continue
            alloc = (node.status.allocatable if node.status else None) or {}
            labels = node.metadata.labels or {}
            try:
                cpus = math.floor(parse_quantity(alloc.get("cpu", "0")))
                ram_mb = int(parse_quantity(alloc.get("memory", "0")) // (1024 * 1024))
                disk_gb = int(parse_quantity(alloc.get("ephemeral-storage", "0")) // 1024**3)
                gpus = int(parse_quantity(alloc.get(self.cfg.gpu_resource, "0")))
            except ValueError as exc:
                raise CollectorError(f"node {node.metadata.name}: {exc}") from None
            vendor = labels.get(self.cfg.gpu_vendor_label, "nvidia" if gpus else "")
            model = labels.get(self.cfg.gpu_model_label, "")
            arch = labels.get("kubernetes.io/arch", "")
            key = (cpus, ram_mb, disk_gb, gpus, vendor, model, arch)
            shape = shapes.get(key)
            if shape is None:
                digest = hashlib.sha1(repr(key).encode()).hexdigest()[:10]
                shape = shapes[key] = {
                    "id": f"node-shape-{digest}",
                    "name": f"{cpus}cpu-{ram_mb // 1024}gb"
                    + (f"-{gpus}x{model or 'gpu'}" if gpus else ""),
                    "cpus": cpus,
                    "ram_mb": ram_mb,
                    "disk_gb": disk_gb,
                    "gpus": gpus,
                    "gpu_vendor": vendor if gpus else "",
                    "gpu_model": model if gpus else "",
                    "properties": {"nodes": "0", "architecture": arch},
                }
            shape["properties"]["nodes"] = str(int(shape["properties"]["nodes"]) + 1)
        host = api.api_client.configuration.host
        return [
            {
                "id": self.cfg.service_id,
                "type": "kubernetes",
                "endpoint": self.cfg.endpoint or host,
                "identity_providers": [i.model_dump() for i in self.cfg.identity_providers],
                "flavors": sorted(shapes.values(), key=lambda f: f["id"]),
            }
        ]
