"""Assemble one complete site report from every collector; a failing collector is reported
as an unhealthy component instead of sinking the whole report."""

from __future__ import annotations

import logging
import socket
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import ValidationError

from hdc_infoprovider.agent.collectors import Collector
from hdc_infoprovider.agent.config import AgentConfig
from hdc_infoprovider.report import Service, SiteReport, dump_report, utcnow

log = logging.getLogger(__name__)


def _agent_version() -> str:
    try:
        return version("hdc-infoprovider")
    except PackageNotFoundError:
        return "dev"


def build_report(cfg: AgentConfig, collectors: list[Collector]) -> dict[str, Any]:
    created = utcnow()
    health = []
    services: list[dict[str, Any]] = []
    for col in collectors:
        try:
            found = col.collect()
            checked = []
            for svc in found:
                svc = {**svc, "component": col.name}
                # Each service is checked on its own, so one bad record names its collector.
                checked.append(dump_service(Service.model_validate(svc)))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = f"produced an invalid service: {where}: {err['msg']}"
            health.append({"component": col.name, "healthy": False, "message": msg[:1024]})
            log.warning("collector %s failed: %s", col.name, msg)
            continue
        except Exception as exc:  # any failure of a source marks only that part unhealthy
            msg = f"{type(exc).__name__}: {exc}"
            health.append({"component": col.name, "healthy": False, "message": msg[:1024]})
            log.warning("collector %s failed: %s", col.name, msg)
            continue
        partial = sorted({p for s in checked for p in s.get("failed_parts", [])})
        message = f"could not read: {', '.join(partial)}" if partial else ""
        health.append({"component": col.name, "healthy": True, "message": message})
        services.extend(checked)
    report = SiteReport.model_validate(
        {
            "site": cfg.site.model_dump(),
            "creationTime": created.isoformat(),
            "validity": cfg.validity,
            "agent": {"version": _agent_version(), "hostname": socket.gethostname()[:255]},
            "health": health,
            "services": services,
        }
    )
    return dump_report(report)


def dump_service(svc: Service) -> dict[str, Any]:
    return svc.model_dump(mode="json", exclude_none=True)
