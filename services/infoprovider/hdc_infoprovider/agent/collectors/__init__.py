"""Collectors: each turns one source of site facts into report services.

A collector raises `CollectorError` (or anything) when its source cannot be read; the report
builder then marks that component unhealthy and the registry keeps its previous records.
A collector that can read some parts but not others lists them in a service's `failed_parts`.
"""

from __future__ import annotations

from typing import Any, Protocol

from hdc_infoprovider.agent import config as c


class CollectorError(Exception):
    pass


class Collector(Protocol):
    name: str

    def collect(self) -> list[dict[str, Any]]: ...


def make_collector(cfg: c.CollectorConfig) -> Collector:
    if isinstance(cfg, c.OpenStackCollectorConfig):
        from hdc_infoprovider.agent.collectors.openstack import OpenStackCollector

        return OpenStackCollector(cfg)
    if isinstance(cfg, c.KubernetesCollectorConfig):
        from hdc_infoprovider.agent.collectors.kubernetes import KubernetesCollector

        return KubernetesCollector(cfg)
    if isinstance(cfg, c.StaticCollectorConfig):
        from hdc_infoprovider.agent.collectors.static import StaticCollector

        return StaticCollector(cfg)
    from hdc_infoprovider.agent.collectors.glue import GlueCollector

    return GlueCollector(cfg)
