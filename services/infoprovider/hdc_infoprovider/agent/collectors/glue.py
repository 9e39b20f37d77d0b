"""Import of cloud-info-provider's GLUE 2.1 JSON (`cloud-info-provider-service --format glue21json`).

A site already running cloud-info-provider points this collector at its output file and
joins without other changes. The document maps GLUE class names to lists of objects
(`ID`, `Name`, `CreationTime`, `Validity`, `Associations`, `OtherInfo`, class fields):

- CloudComputingEndpoint (URL, InterfaceName, HealthState) -> the service;
- CloudComputingInstanceType (CPU, RAM MB, Disk GB) -> flavors, with the
  CloudComputingVirtualAccelerator associated to it (Type GPU, Number, Vendor, Model);
- CloudComputingImage (OSName, OSVersion, OSPlatform, MarketplaceURL; CUDA facts in
  OtherInfo when a site puts them there: cloud-info-provider 1.x does not publish them) ->
  images;
- Share (ProjectID, MaxVM, OtherInfo.quotas) + the MappingPolicy's PolicyUserDomain (the VO)
  -> per-tenant quotas.

Records keep their own GLUE CreationTime/Validity. Both shapes seen in real output are
read: cloud-info-provider 1.x (GLUE21Json formatter: every class a list, associations lists,
one copy of each image/instance type/accelerator per share) and the 0.x JSON template
(CloudComputingManager a single object, associations single ids, MarketPlaceURL).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from hdc_infoprovider.agent.collectors import CollectorError
from hdc_infoprovider.agent.config import GlueCollectorConfig

ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def _objs(doc: dict[str, Any], cls: str) -> list[dict[str, Any]]:
    value = doc.get(cls) or []
    if isinstance(value, dict):  # some producers emit a single object, not a list
        value = [value]
    return [o for o in value if isinstance(o, dict) and o.get("ID")]


def _assoc(obj: dict[str, Any], cls: str) -> list[str]:
    value = (obj.get("Associations") or {}).get(cls) or []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _known(value: Any) -> str:
    text = "" if value is None else str(value)
    return "" if text.upper() == "UNKNOWN" else text


def _fresh(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw = obj.get("CreationTime")
    if isinstance(raw, str) and raw:
        try:
            ct = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            ct = None
        if ct is not None:
            # cloud-info-provider writes naive UTC timestamps.
            out["creationTime"] = (ct if ct.tzinfo else ct.replace(tzinfo=UTC)).isoformat()
    validity = obj.get("Validity")
    if isinstance(validity, int) and validity >= 60:
        out["validity"] = min(validity, 7 * 24 * 3600)
    return out


def _slug(text: str) -> str:
    host = re.sub(r"^[a-z]+://", "", text).split("/")[0].split(":")[0]
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip("-.") or "glue"
    return f"{base[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def parse_glue21(doc: Any, cfg: GlueCollectorConfig) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise CollectorError("GLUE 2.1 JSON must be an object of GLUE class names")
    endpoints = _objs(doc, "CloudComputingEndpoint")
    if not endpoints:
        raise CollectorError("no CloudComputingEndpoint in the GLUE document")
    services = _objs(doc, "CloudComputingService")
    accelerators = {a["ID"]: a for a in _objs(doc, "CloudComputingVirtualAccelerator")}
    policies = _objs(doc, "MappingPolicy")
    out = []
    for ept in endpoints:
        ept_id = str(ept["ID"])

        def belongs(obj: dict[str, Any], ept_id: str = ept_id) -> bool:
            linked = _assoc(obj, "CloudComputingEndpoint")
            return not linked or ept_id in linked or len(endpoints) == 1

        flavors: dict[str, dict[str, Any]] = {}
        for it in _objs(doc, "CloudComputingInstanceType"):
            if not belongs(it) or str(it["ID"]) in flavors:
                continue
            gpus, vendor, model = 0, "", ""
            accs = [
                accelerators[a]
                for a in _assoc(it, "CloudComputingVirtualAccelerator")
                if a in accelerators
            ]
            accs += [
                a
                for a in accelerators.values()
                if str(it["ID"]) in _assoc(a, "CloudComputingInstanceType") and a not in accs
            ]
            for acc in accs:
                if str(acc.get("Type", "GPU")).upper() == "GPU":
                    gpus += int(acc.get("Number") or 0)
                    vendor = vendor or _known(acc.get("Vendor"))
                    model = model or _known(acc.get("Model"))
            other = it.get("OtherInfo") or {}
            flavors[str(it["ID"])] = {
                "id": str(it["ID"]),
                "name": str(it.get("Name") or ""),
                "cpus": int(it.get("CPU") or 0),
                "ram_mb": int(it.get("RAM") or 0),
                "disk_gb": int(it.get("Disk") or 0),
                "gpus": gpus,
                "gpu_vendor": vendor,
                "gpu_model": model,
                "infiniband": str(other.get("infiniband", "")).lower() == "true",
                **_fresh(it),
            }
        images: dict[str, dict[str, Any]] = {}
        for img in _objs(doc, "CloudComputingImage"):
            if not belongs(img) or str(img["ID"]) in images:
                continue
            other = img.get("OtherInfo") or {}
            cuda = _known(other.get("gpu_cuda") or other.get("cuda_version"))
            arch = _known(img.get("OSPlatform")).lower()
            # 1.x spells it MarketplaceURL, the 0.x templates MarketPlaceURL.
            marketplace = _known(img.get("MarketplaceURL") or img.get("MarketPlaceURL"))
            props = {
                k: str(v)[:1024]
                for k, v in list(other.items())[:199]
                if isinstance(v, str | int | float | bool)
            }
            if marketplace:
                props["marketplace_url"] = marketplace[:1024]
            images[str(img["ID"])] = {
                "id": str(img["ID"]),
                "name": str(img.get("Name") or "")[:255],
                "os_type": "linux" if _known(img.get("OSName")) else "",
                "os_distribution": _known(img.get("OSName")).lower(),
                "os_version": _known(img.get("OSVersion")),
                "architecture": ARCH.get(arch, arch),
                "cuda": bool(cuda),
                "cuda_version": cuda,
                "cudnn_version": _known(other.get("gpu_cudnn")),
                "gpu_driver": _known(other.get("gpu_driver")),
                "description": _known(img.get("Description"))[:1024],
                "properties": props,
                **_fresh(img),
            }
        quotas: dict[str, dict[str, Any]] = {}
        for share in _objs(doc, "Share"):
            if not belongs(share):
                continue
            vo = next(
                (
                    _assoc(p, "PolicyUserDomain")[0]
                    for p in policies
                    if share["ID"] in _assoc(p, "Share") and _assoc(p, "PolicyUserDomain")
                ),
                None,
            )
            other = share.get("OtherInfo") or {}
            tenant = vo or str(other.get("project_name") or share.get("ProjectID") or share["ID"])
            q = other.get("quotas") or {}
            limits = {
                k2: int(q[k1])
                for k1, k2 in (
                    ("instances", "instances"),
                    ("cores", "cores"),
                    ("ram", "ram_mb"),
                    ("floating_ips", "floating_ips"),
                )  # fmt: skip
                if isinstance(q.get(k1), int)
            }
            if "instances" not in limits and isinstance(share.get("MaxVM"), int):
                limits["instances"] = share["MaxVM"]
            usage = {"instances": share["TotalVM"]} if isinstance(share.get("TotalVM"), int) else {}
            quotas[tenant] = {
                "tenant": tenant,
                "project_id": _known(share.get("ProjectID")),
                "project_name": str(other.get("project_name") or ""),
                "limits": limits,
                "usage": usage,
                **_fresh(share),
            }
        svc_obj = next(
            (s for s in services if s["ID"] in _assoc(ept, "CloudComputingService")),
            services[0] if services else {},
        )
        health = str(ept.get("HealthState", "ok")).lower()
        properties = {"glue_endpoint_id": ept_id[:1024]}
        admin = _assoc(svc_obj, "AdminDomain") if svc_obj else []
        if admin:
            properties["glue_admin_domain"] = admin[0]
        if health != "ok":
            properties["glue_health_state_info"] = str(ept.get("HealthStateInfo") or health)[:1024]
        out.append(
            {
                "id": cfg.service_id or _slug(ept_id),
                "type": str(ept.get("InterfaceName") or svc_obj.get("Type") or "org.cloud.iaas"),
                "endpoint": str(ept.get("URL") or ""),
                "api_version": _known(ept.get("InterfaceVersion")),
                "healthy": health == "ok",
                "identity_providers": [i.model_dump() for i in cfg.identity_providers],
                "properties": properties,
                "flavors": list(flavors.values()),
                "images": list(images.values()),
                "quotas": list(quotas.values()),
                **_fresh(ept),
            }
        )
    if cfg.service_id and len(out) > 1:
        raise CollectorError("service_id is set but the document has several endpoints")
    return out


class GlueCollector:
    def __init__(self, cfg: GlueCollectorConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    def collect(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self.cfg.file.read_text())
        except OSError as exc:
            raise CollectorError(f"{self.cfg.file}: {exc.strerror}") from None
        except ValueError as exc:
            raise CollectorError(f"{self.cfg.file}: not JSON ({exc})") from None
        return parse_glue21(doc, self.cfg)
