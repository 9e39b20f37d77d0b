"""Where to deploy: candidates from the infoprovider, ranked by the ranker (both over gRPC).

The answer is kept as JSON on the deployment (GET /deployments/{id}/placement): every
candidate with its per-criterion scores, or why it was discarded (by the infoprovider's
matching or by a ranker filter).

Both calls carry the deployment owner's identity, signed by the orchestrator with the
gateway's key (acting_identity.py): the ranker and the infoprovider refuse calls without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from hdc.infoprovider.v1 import infoprovider_pb2 as ip_pb2
from hdc.infoprovider.v1 import infoprovider_pb2_grpc as ip_grpc
from hdc.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from hdc_common.grpc import insecure_channel
from hdc_common.identity import Identity

from hdc_orchestrator.acting_identity import OwnerSigner
from hdc_orchestrator.settings import SlaSetting

# Map the infoprovider's service types to the im's site types.
SITE_TYPES = {
    "org.openstack.nova": "openstack",
    "openstack": "openstack",
    "com.amazonaws.ec2": "ec2",
    "ec2": "ec2",
    "kubernetes": "kubernetes",
    "eu.indigo-datacloud.marathon": "marathon",
    "marathon": "marathon",
    "local": "local",
    "dummy": "dummy",
}
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class PlacementError(Exception):
    """The collaborators could not be asked; `transient` says whether retrying may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def requirements_message(
    req: dict[str, Any], tenant: str, images_per_candidate: int = 0
) -> ip_pb2.Requirements:
    gpu = req.get("gpu") or {}
    image = req.get("image") or {}
    return ip_pb2.Requirements(
        cpus=int(req.get("cpus") or 0),
        ram_mb=int(req.get("ram_mb") or 0),
        disk_gb=int(req.get("disk_gb") or 0),
        gpu=ip_pb2.GpuRequirement(
            count=int(gpu.get("count") or 0),
            vendor=gpu.get("vendor", ""),
            model=gpu.get("model", ""),
        ),
        infiniband=bool(req.get("infiniband")),
        image=ip_pb2.ImageRequirement(**image) if image else None,
        tenant=tenant,
        instances=int(req.get("instances") or 0),
        site_ids=list(req.get("site_ids") or []),
        service_types=list(req.get("service_types") or []),
        exclude_site_ids=list(req.get("exclude_site_ids") or []),
        # The ranker pins the first matching image: a site's 200 others need not travel.
        max_images_per_candidate=images_per_candidate,
    )


class PlacementClient:
    def __init__(
        self,
        infoprovider_target: str,
        ranker_target: str,
        deadline_s: float,
        tenant: str = "",
        *,
        private_key_pem: str = "",
        slas: Sequence[SlaSetting] = (),
        images_per_candidate: int = 0,
    ) -> None:
        self._deadline = deadline_s
        self._images_per_candidate = images_per_candidate
        self._tenant = tenant
        self._slas = list(slas)
        # Without a key the calls go unsigned, and a real ranker refuses them (UNAUTHENTICATED
        # names the cause; the deployment fails with it rather than retrying).
        self._signer = OwnerSigner(private_key_pem)
        self._ip_channel = insecure_channel(
            infoprovider_target, ["hdc.infoprovider.v1.InfoProvider"], deadline_s=deadline_s
        )
        self._rk_channel = insecure_channel(
            ranker_target, ["hdc.ranker.v1.Ranker"], deadline_s=deadline_s
        )
        self._infoprovider = ip_grpc.InfoProviderStub(self._ip_channel)
        self._ranker = ranker_pb2_grpc.RankerStub(self._rk_channel)

    def close(self) -> None:
        self._ip_channel.close()
        self._rk_channel.close()

    def place(
        self, requirements: dict[str, Any], deployment_id: str, owner: Identity
    ) -> dict[str, Any]:
        """Candidates ranked for `owner` (the identity the calls carry)."""
        req = requirements_message(requirements, self._tenant, self._images_per_candidate)
        # One token for both calls: it lives 60 s, far longer than the two deadlines.
        meta = self._signer.metadata(owner)
        try:
            found = self._infoprovider.FindCandidates(req, timeout=self._deadline, metadata=meta)
        except grpc.RpcError as exc:
            raise _error("infoprovider", exc) from None
        rank_req = ranker_pb2.RankRequest(
            requirements=ranker_pb2.Requirements.FromString(req.SerializeToString()),
            slas=sla_messages(self._slas, owner),
            candidates=[
                ranker_pb2.Candidate.FromString(c.SerializeToString()) for c in found.candidates
            ],
            deployment_id=deployment_id,
        )
        # Ranker-only (the infoprovider has no SLAs): the template's SlaPlacement policies.
        rank_req.requirements.sla_ids.extend(str(x) for x in requirements.get("sla_ids") or [])
        try:
            ranked = self._ranker.Rank(rank_req, timeout=self._deadline, metadata=meta)
        except grpc.RpcError as exc:
            raise _error("ranker", exc) from None
        return placement_json(found, ranked, req)


def sla_messages(slas: Sequence[SlaSetting], owner: Identity) -> list[ranker_pb2.Sla]:
    """The catalogue's SLAs that apply to `owner` (signed for everyone or for their group)."""
    groups = set(owner.groups)
    out = []
    for sla in slas:
        if sla.user_groups and not groups.intersection(sla.user_groups):
            continue
        msg = ranker_pb2.Sla(
            id=sla.id, site_id=sla.site_id, service_id=sla.service_id, targets=sla.targets
        )
        if sla.start is not None:
            msg.start.FromDatetime(_utc(sla.start))
        if sla.end is not None:
            msg.end.FromDatetime(_utc(sla.end))
        out.append(msg)
    return out


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _error(who: str, exc: grpc.RpcError) -> PlacementError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return PlacementError(f"{who} answered {code.name}: {details}", transient=code in TRANSIENT)


def smallest_flavor(flavors: Any, req: ip_pb2.Requirements) -> Any:
    """INDIGO's rule: the smallest flavor (cpus, then memory, disk, GPUs) that fits."""
    fitting = [
        f
        for f in flavors
        if f.cpus >= req.cpus
        and f.ram_mb >= req.ram_mb
        and f.disk_gb >= req.disk_gb
        and f.gpus >= req.gpu.count
        and (not req.gpu.vendor or f.gpu_vendor.lower() == req.gpu.vendor.lower())
        and (not req.gpu.model or req.gpu.model.lower() in f.gpu_model.lower())
        and (f.infiniband or not req.infiniband)
    ]
    return min(fitting, key=lambda f: (f.cpus, f.ram_mb, f.disk_gb, f.gpus), default=None)


def placement_json(
    found: ip_pb2.Candidates,
    ranked: ranker_pb2.RankResponse,
    req: ip_pb2.Requirements | None = None,
) -> dict[str, Any]:
    by_index = {r.index: r for r in ranked.results}
    criteria = list(ranked.criteria)
    candidates = []
    for i, c in enumerate(found.candidates):
        r = by_index.get(i)
        entry: dict[str, Any] = {
            "siteId": c.site_id,
            "siteName": c.site_name or None,
            "serviceId": c.service_id,
            "serviceType": c.service_type,
            "siteType": SITE_TYPES.get(c.service_type, c.service_type),
            "endpoint": c.endpoint,
            "region": c.region or None,
            "rank": r.rank if r else -1,
            "totalScore": r.total_score if r else 0.0,
        }
        if r and r.rank > 0:
            entry["scores"] = dict(zip(criteria, r.criterion_scores, strict=False))
            if r.flavor_id or r.flavor_name:
                entry["flavor"] = {"id": r.flavor_id, "name": r.flavor_name}
            elif req is not None and (flavor := smallest_flavor(c.flavors, req)) is not None:
                # The ranker did not pick one (e.g. sizes were not among its criteria).
                entry["flavor"] = {"id": flavor.id, "name": flavor.name}
            if r.image_id:
                entry["imageId"] = r.image_id
        else:
            entry["discarded"] = [
                {"code": j.code, "filter": j.filter, "message": j.message}
                for j in (r.rejections if r else [])
            ] or [
                {"code": "NOT_RANKED", "filter": "ranker", "message": "the ranker did not rank it"}
            ]
        candidates.append({k: v for k, v in entry.items() if v is not None})
    candidates.sort(key=lambda e: (e["rank"] < 1, e["rank"] if e["rank"] > 0 else 0))
    for x in found.excluded:
        candidates.append(
            {
                "siteId": x.site_id,
                "serviceId": x.service_id or None,
                "rank": -1,
                "totalScore": 0.0,
                "discarded": [{"code": "EXCLUDED", "filter": "infoprovider", "message": x.reason}],
            }
        )
    return {
        "evaluatedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": ranked.summary,
        "criteria": criteria,
        "weights": list(ranked.weights),
        "candidates": [{k: v for k, v in c.items() if v is not None} for c in candidates],
    }


def ranked_candidates(placement: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [c for c in (placement or {}).get("candidates", []) if c.get("rank", -1) > 0]


def site_of(candidate: dict[str, Any]) -> dict[str, Any]:
    """The `site` object of the im's create command."""
    site = {
        "id": candidate["siteId"],
        "service_id": candidate.get("serviceId", ""),
        "type": candidate.get("siteType") or "dummy",
        "endpoint": candidate.get("endpoint", ""),
    }
    if candidate.get("region"):
        site["region"] = candidate["region"]
    return site
