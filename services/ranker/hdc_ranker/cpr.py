"""INDIGO CloudProviderRanker compatibility: its `/rank` JSON in, its JSON out, its ranking.

CloudProviderRanker (v0.7, Java + Drools) ranks the services named in `preferences` and
`monitoring`: services are ordered by the user's SLA weight, then by a score that adds the
raw SLA target numbers (computing_time scaled by 0.0166) to a response-time score of the
monitoring probes (and the parent service's score). It sorts ascending and answers in that
order, best last; rank 1 = best, -1 = not ranked.

This module re-implements that documented behaviour from scratch so that existing clients
(the INDIGO PaaS Orchestrator) get the same answer, down to the bytes: Java `float`
arithmetic is reproduced with float32, numbers are printed like Java's Float.toString, and
equal entries keep the order a Java HashMap of the service ids would give them. Where the
original crashed (an unknown sla_id, a missing metric), this one answers and explains in
`error_reason`. hdc's own ranking (gRPC Rank) does not use this scheme: it normalises every
criterion instead of summing raw numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdc_ranker.errors import RankInputError

f32 = np.float32

# Scale of each SLA target type; a type not listed keeps the scale of the target before it
# (the original rule never reset its factor), starting at 1.
SLA_TARGET_FACTORS = {"computing_time": f32(0.0166), "public_ip": f32(1.0)}
SLA_RESTRICTIONS = (
    "total_guaranteed",
    "total_limit",
    "user_guaranteed",
    "user_limit",
    "instance_guaranteed",
    "instance_limit",
)
PROBE_SERVICE_TYPES = {
    "eu.indigo-datacloud.marathon",
    "eu.indigo-datacloud.chronos",
    "org.openstack.nova",
}
MESOS = "eu.indigo-datacloud.mesos"
# (probe, scale): a successful probe adds scale / response time (ms).
PROBES = (("create", 100.0), ("run", 100.0), ("delete", 10.0))


@dataclass
class CprService:
    provider: str | None
    service_id: str
    service_type: str | None = None
    parent_id: str | None = None
    targets: list[dict[str, Any]] | None = None
    metrics: dict[str, float] | None = None
    sla_weight: np.float32 | None = None
    sla_score: np.float32 | None = None
    metrics_score: np.float32 | None = None
    total: np.float32 = field(default_factory=lambda: f32(0.0))
    ranked: bool = False
    rank: int = -1
    error: str | None = None


# ---------------------------------------------------------------- validation


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RankInputError(f"{where} must be a number, got {json.dumps(value)}")
    if not math.isfinite(value) or value < 0:
        raise RankInputError(f"{where} must be a finite number >= 0, got {value}")
    return float(value)


def _list(doc: dict[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RankInputError(f"{where}{key} must be an array")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RankInputError(f"{where} must be an object")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise RankInputError(f"{where}.{key} is required (a non-empty string)")
    return value


# ---------------------------------------------------------------- building the services


def _collect(doc: dict[str, Any]) -> dict[str, CprService]:
    if not isinstance(doc, dict):
        raise RankInputError("the request body must be a JSON object")
    slas = {}
    for i, sla in enumerate(_list(doc, "sla", "")):
        sla = _obj(sla, f"sla[{i}]")
        slas[_str(sla, "id", f"sla[{i}]")] = (i, sla)
    services: dict[str, CprService] = {}  # insertion order matters (see java_hashmap_order)
    for i, pref in enumerate(_list(doc, "preferences", "")):
        pref = _obj(pref, f"preferences[{i}]")
        for j, prio in enumerate(_list(pref, "priority", f"preferences[{i}].")):
            where = f"preferences[{i}].priority[{j}]"
            prio = _obj(prio, where)
            sla_id = _str(prio, "sla_id", where)
            service_id = _str(prio, "service_id", where)
            weight = _num(prio.get("weight"), f"{where}.weight")
            svc = CprService(provider=None, service_id=service_id)
            svc.service_type = pref.get("service_type")
            svc.sla_weight = f32(weight)
            services[service_id] = svc
            if sla_id not in slas:
                svc.error = f"sla_id {sla_id} of {where} is not in the request's sla list"
                continue
            k, sla = slas[sla_id]
            svc.provider = sla.get("provider")
            for m, s in enumerate(_list(sla, "services", f"sla[{k}].")):
                s = _obj(s, f"sla[{k}].services[{m}]")
                if s.get("service_id") == service_id:
                    svc.targets = _targets(s, f"sla[{k}].services[{m}]")
                    break
            else:
                svc.error = f"sla {sla_id} has no service {service_id}"
    for i, prov in enumerate(_list(doc, "monitoring", "")):
        prov = _obj(prov, f"monitoring[{i}]")
        provider = prov.get("provider")
        for j, s in enumerate(_list(prov, "services", f"monitoring[{i}].")):
            where = f"monitoring[{i}].services[{j}]"
            s = _obj(s, where)
            service_id = _str(s, "service_id", where)
            svc = services.get(service_id) or CprService(provider=provider, service_id=service_id)
            svc.provider = provider
            svc.service_type = s.get("type")
            svc.parent_id = s.get("service_parent_id")
            svc.metrics = _metrics(s, where)
            services[service_id] = svc
    return services


def _targets(service: dict[str, Any], where: str) -> list[dict[str, Any]]:
    out = []
    for t, target in enumerate(_list(service, "targets", f"{where}.")):
        target = _obj(target, f"{where}.targets[{t}]")
        restrictions = _obj(target.get("restrictions") or {}, f"{where}.targets[{t}].restrictions")
        for key, value in restrictions.items():
            _num(value, f"{where}.targets[{t}].restrictions.{key}")
        out.append({"type": target.get("type"), "restrictions": restrictions})
    return out


def _metrics(service: dict[str, Any], where: str) -> dict[str, float]:
    out = {}
    for m, metric in enumerate(_list(service, "metrics", f"{where}.")):
        metric = _obj(metric, f"{where}.metrics[{m}]")
        name = _str(metric, "metricName", f"{where}.metrics[{m}]")
        value = metric.get("metricValue")
        if value is None:
            continue  # the original crashed on a null value; no value = no data
        out[name] = float(f32(_num(value, f"{where}.metrics[{m}].metricValue")))
    return out


# ---------------------------------------------------------------- scores (float32 like Java)


def sla_score(targets: list[dict[str, Any]]) -> np.float32:
    score = f32(0.0)
    factor = f32(1.0)
    for target in targets:
        factor = SLA_TARGET_FACTORS.get(target.get("type"), factor)
        restrictions = target["restrictions"]
        subtotal = f32(0.0)
        for key in SLA_RESTRICTIONS:
            subtotal = f32(subtotal + f32(restrictions.get(key, 0.0)))
        score = f32(score + f32(factor * subtotal))
    return score


def metrics_score(service_type: str | None, metrics: dict[str, float]) -> np.float32 | None:
    score = f32(0.0)
    if service_type in PROBE_SERVICE_TYPES:
        for probe, scale in PROBES:
            result, rt = metrics.get(f"{probe}_result"), metrics.get(f"{probe}_responseTime")
            if result == 1 and rt:
                score = f32(float(score) + 1.0 / rt * scale)
        return score
    if service_type == MESOS:
        for res, divisor in (("cpu", 1.0), ("gpu", 1.0), ("mem", 1024.0)):
            total, used = metrics.get(f"master.{res}_total"), metrics.get(f"master.{res}_used")
            if total is not None and used is not None:
                score = f32(score + f32(f32(f32(total) - f32(used)) / f32(divisor)))
        return score
    return None  # no rule for this service type


# ---------------------------------------------------------------- ordering


def java_string_hash(s: str) -> int:
    h = 0
    units = s.encode("utf-16-le")
    for k in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[k : k + 2], "little")) & 0xFFFFFFFF
    return h


def java_hashmap_order(keys: list[str]) -> list[str]:
    """The iteration order of a java.util.HashMap filled with `keys` in this order."""
    capacity = 16
    for size in range(1, len(keys) + 1):
        if size > capacity * 0.75:
            capacity *= 2

    def bucket(key: str) -> int:
        h = java_string_hash(key)
        return (h ^ (h >> 16)) & (capacity - 1)

    # Within a bucket entries keep insertion order (resizes split buckets stably).
    return [k for _, _, k in sorted((bucket(k), n, k) for n, k in enumerate(keys))]


# ---------------------------------------------------------------- ranking


def rank(doc: dict[str, Any]) -> list[CprService]:
    services = _collect(doc)
    for svc in services.values():
        if svc.targets is not None:
            svc.sla_score = sla_score(svc.targets)
        if svc.metrics is not None:
            svc.metrics_score = metrics_score(svc.service_type, svc.metrics)
    for svc in services.values():
        total = f32(f32(svc.sla_score or 0.0) + f32(svc.metrics_score or 0.0))
        parent = services.get(svc.parent_id) if svc.parent_id else None
        if parent is not None:
            total = f32(
                total + f32(f32(parent.sla_score or 0.0) + f32(parent.metrics_score or 0.0))
            )
        svc.total = total
        svc.ranked = svc.error is None and svc.sla_score is not None and total != 0
        if svc.error is None and not svc.ranked:
            svc.error = (
                "no SLA for this service (it is only in the monitoring data)"
                if svc.sla_score is None
                else "total score is 0 (SLA targets and monitoring add up to nothing)"
            )
    ordered = [services[k] for k in java_hashmap_order(list(services))]
    # Ascending by SLA weight, then score; stable, as Java's Collections.sort.
    ordered.sort(key=lambda s: (float(s.sla_weight or 0.0), float(s.total)))
    next_rank = sum(1 for s in ordered if s.ranked)
    for svc in ordered:
        if svc.ranked:
            svc.rank = next_rank
            next_rank -= 1
    return ordered


# ---------------------------------------------------------------- JSON like Jackson


def java_float(x: np.float32 | float) -> str:
    """Float.toString: shortest digits that read back as the same float32."""
    v = f32(x)
    if not np.isfinite(v):
        raise ValueError(f"{v} has no JSON form")
    if v == 0:
        return "-0.0" if np.signbit(v) else "0.0"
    a = abs(float(v))
    if 1e-3 <= a < 1e7:
        text = np.format_float_positional(v, unique=True, trim="0")
        return text if "." in text else text + ".0"
    mant, _, exp = np.format_float_scientific(v, unique=True, trim="0").partition("e")
    if "." not in mant:
        mant += ".0"
    return f"{mant}E{int(exp)}"


def to_json(results: list[CprService], error_reason: bool = True) -> str:
    """CloudProviderRanker's answer (keys sorted as it sends them), plus `error_reason`,
    the field the INDIGO orchestrator reads, unless `error_reason` is False."""
    items = []
    for s in results:
        fields = [
            ("provider", json.dumps(s.provider)),
            ("rank", str(s.rank)),
            ("ranked", "true" if s.ranked else "false"),
            ("service_id", json.dumps(s.service_id)),
            ("sla_weight", "null" if s.sla_weight is None else java_float(s.sla_weight)),
            ("total_score", java_float(s.total)),
        ]
        if error_reason:
            fields.append(("error_reason", json.dumps(None if s.ranked else s.error)))
        items.append("{" + ",".join(f'"{k}":{v}' for k, v in fields) + "}")
    return "[" + ",".join(items) + "]"
