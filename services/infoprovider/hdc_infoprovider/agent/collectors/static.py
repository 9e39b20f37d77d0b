"""Static collector: services written by hand in YAML (for sites with nothing to query).

The file (or the inline `services` list) holds services in the report's own shape, e.g.

    services:
      - id: slurm
        type: org.hpc.slurm
        endpoint: https://hpc.example.org
        flavors: [{id: gpu-node, cpus: 64, ram_mb: 515000, gpus: 4, gpu_vendor: nvidia,
                   gpu_model: A100, infiniband: true}]
"""

from __future__ import annotations

from typing import Any

import yaml

from hdc_infoprovider.agent.collectors import CollectorError
from hdc_infoprovider.agent.config import StaticCollectorConfig


class StaticCollector:
    def __init__(self, cfg: StaticCollectorConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    def collect(self) -> list[dict[str, Any]]:
        services = list(self.cfg.services)
        if self.cfg.file is not None:
            try:
                doc = yaml.safe_load(self.cfg.file.read_text())
            except OSError as exc:
                raise CollectorError(f"{self.cfg.file}: {exc.strerror}") from None
            except yaml.YAMLError as exc:
                raise CollectorError(f"{self.cfg.file}: not valid YAML ({exc})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("services"), list):
                raise CollectorError(f"{self.cfg.file}: expected a mapping with a services list")
            services.extend(doc["services"])
        for s in services:
            if not isinstance(s, dict):
                raise CollectorError("every static service must be a mapping")
        # Copies: the builder adds fields and must not change the configuration.
        return [dict(s) for s in services]
