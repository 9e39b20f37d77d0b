"""JSON shapes of the INDIGO PaaS Orchestrator API: deployments, resources, pages, dates."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from hdc_orchestrator.models import Attempt, CallbackDelivery, Deployment, DeploymentEvent, Resource
from hdc_orchestrator.redact import redact, redact_text

IAAS_TYPES = {
    "openstack": "OPENSTACK", "ec2": "AWS", "kubernetes": "KUBERNETES", "marathon": "MARATHON",
    "local": "LOCAL", "dummy": "DUMMY",
}  # fmt: skip


def fmt_date(value: datetime | None) -> str | None:
    """INDIGO's date format: minute precision, numeric offset, e.g. 2023-10-27T13:24+0000."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M+0000")


def fmt_precise(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def deployment_json(d: Deployment | Any, base: str) -> dict[str, Any]:
    """`d`: a Deployment, or a row with (at least) the same names (api._SHOWN)."""
    href = f"{base}/deployments/{d.uuid}"
    secrets = d.secret_values or []
    return _compact(
        {
            "uuid": d.uuid,
            "creationTime": fmt_date(d.created_at),
            "updateTime": fmt_date(d.updated_at),
            "physicalId": d.physical_id,
            "status": d.status,
            "statusReason": redact_text(d.status_reason, secrets) if d.status_reason else None,
            "statusReasons": redact(d.status_reasons, secrets) or None,
            "outputs": redact(d.outputs or {}, secrets),
            "task": d.task,
            "callback": d.callback,
            "userGroup": d.user_group,
            "cloudProviderName": d.cloud_provider_name,
            "cloudProviderEndpoint": d.cloud_provider_endpoint,
            "createdBy": {"issuer": d.owner_issuer, "subject": d.owner_subject},
            "links": [
                {"rel": "self", "href": href},
                {"rel": "resources", "href": f"{href}/resources"},
                {"rel": "template", "href": f"{href}/template"},
            ],
        }
    )


def endpoint_json(attempt: Attempt) -> dict[str, Any]:
    site = attempt.site or {}
    return _compact(
        {
            "cpEndpoint": site.get("endpoint") or None,
            "cpComputeServiceId": site.get("service_id") or None,
            "region": site.get("region") or None,
            "iaasType": IAAS_TYPES.get(str(site.get("type")), str(site.get("type") or "").upper())
            or None,
        }
    )


def resource_json(r: Resource, base: str, secrets: list[str]) -> dict[str, Any]:
    dep = f"{base}/deployments/{r.deployment_uuid}"
    return _compact(
        {
            "uuid": r.uuid,
            "creationTime": fmt_date(r.created_at),
            "updateTime": fmt_date(r.updated_at),
            "physicalId": r.physical_id,
            "state": r.state,
            "toscaNodeType": r.node_type,
            "toscaNodeName": r.node_name,
            "requiredBy": r.required_by,
            "metadata": redact(r.meta, secrets) if r.meta else None,
            "links": [
                {"rel": "self", "href": f"{dep}/resources/{r.uuid}"},
                {"rel": "deployment", "href": dep},
            ],
        }
    )


def event_json(e: DeploymentEvent, secrets: list[str]) -> dict[str, Any]:
    return _compact(
        {
            "id": e.id,
            "time": fmt_precise(e.at),
            "kind": e.kind,
            "status": e.status,
            "provider": e.provider,
            "message": redact_text(e.message, secrets) if e.message else None,
        }
    )


def callback_json(c: CallbackDelivery) -> dict[str, Any]:
    return _compact(
        {
            "id": c.id,
            "url": c.url,
            "status": c.status,
            "createdAt": fmt_precise(c.created_at),
            "attempts": c.attempts,
            "delivered": c.delivered_at is not None,
            "deliveredAt": fmt_precise(c.delivered_at),
            "pending": c.next_at is not None,
            "lastCode": c.last_code,
            "lastError": c.last_error,
        }
    )


def page_json(
    content: list[dict[str, Any]],
    *,
    total: int,
    page: int,
    size: int,
    url: str,
    query: dict[str, Any],
) -> dict[str, Any]:
    """Spring-HATEOAS paged envelope, as INDIGO returns it."""
    pages = math.ceil(total / size) if size else 0
    last = max(pages - 1, 0)

    def link(rel: str, number: int) -> dict[str, str]:
        q = {k: v for k, v in query.items() if v is not None} | {"page": number, "size": size}
        return {"rel": rel, "href": f"{url}?{urlencode(q)}"}

    links = [link("first", 0)]
    if page > 0:
        links.append(link("prev", min(page - 1, last)))
    links.append(link("self", page))
    if page < last:
        links.append(link("next", page + 1))
    links.append(link("last", last))
    return {
        "links": links,
        "content": content,
        "page": {"size": size, "totalElements": total, "totalPages": pages, "number": page},
    }
