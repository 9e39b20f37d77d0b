"""gRPC client of the vrouter controller (proto/hdc/vrouter/v1/vrouter.proto).

Identity: the vrouter authorises every call by the gateway-signed `x-hdc-identity`; the
orchestrator signs one for the deployment's owner (acting_identity.py). The overlay then
belongs to that user, who sees and manages it in the vrouter's own API.
"""

from __future__ import annotations

from typing import Any

import grpc
from hdc.vrouter.v1 import vrouter_pb2 as pb
from hdc.vrouter.v1 import vrouter_pb2_grpc as pb_grpc
from hdc_common.grpc import insecure_channel
from hdc_common.identity import Identity

from hdc_orchestrator.acting_identity import OwnerSigner
from hdc_orchestrator.hybrid import OverlayPlan

SERVICE_NAME = "hdc.vrouter.v1.VRouter"
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class VRouterError(Exception):
    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def _error(what: str, exc: grpc.RpcError) -> VRouterError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return VRouterError(f"vrouter {what}: {code.name}: {details}", code)


class VRouterClient:
    def __init__(self, target: str, deadline_s: float, private_key_pem: str) -> None:
        self._deadline = deadline_s
        self._signer = OwnerSigner(private_key_pem)
        self._channel = insecure_channel(target, [SERVICE_NAME], deadline_s=deadline_s)
        self._stub = pb_grpc.VRouterStub(self._channel)

    @property
    def can_sign(self) -> bool:
        return self._signer.can_sign

    def close(self) -> None:
        self._channel.close()

    def _call(self, what: str, method: Any, request: Any, owner: Identity) -> Any:
        if not self._signer.can_sign:
            raise VRouterError(
                "the orchestrator has no identity_private_key to call the vrouter with"
            )
        meta = self._signer.metadata(owner)
        try:
            return method(request, timeout=self._deadline, metadata=meta)
        except grpc.RpcError as exc:
            raise _error(what, exc) from None

    def create_overlay(
        self, owner: Identity, name: str, plan: OverlayPlan, group: str | None
    ) -> dict[str, Any]:
        """Overlay + hub + one site per site router; the record kept on the attempt.

        When adding a site fails the overlay is deleted again, so nothing half-made stays.
        """
        made = self._call(
            "CreateOverlay",
            self._stub.CreateOverlay,
            pb.CreateOverlayRequest(
                name=name,
                cidr=plan.cidr,
                site_prefix=plan.site_prefix,
                topology=plan.topology,
                listen_port=plan.listen_port,
                persistent_keepalive=plan.keepalive,
                hub_endpoint=plan.hub_endpoint,
                group=group or "",
            ),
            owner,
        )
        overlay_id = made.overlay.id
        sites = {
            plan.hub.node: {
                "site_id": made.hub.site.id,
                "role": "hub",
                "host": plan.hub.host,
                "subnet": made.hub.site.subnet,
            }
        }
        try:
            for r in plan.sites:
                added = self._call(
                    "AddSite",
                    self._stub.AddSite,
                    pb.AddSiteRequest(
                        overlay_id=overlay_id,
                        name=r.node,
                        private_ranges=r.private_ranges,
                        nat=r.nat,
                    ),
                    owner,
                )
                sites[r.node] = {
                    "site_id": added.site.id,
                    "role": "site",
                    "host": r.host,
                    "subnet": added.site.subnet,
                }
        except VRouterError:
            self.delete_overlay(owner, overlay_id)
            raise
        return {"overlay_id": overlay_id, "state": "active", "sites": sites}

    def user_data(self, owner: Identity, overlay_id: str, site_id: str) -> str:
        """The router's #cloud-config with a fresh one-time enrolment token."""
        answer = self._call(
            "GetRouterUserData",
            self._stub.GetRouterUserData,
            pb.GetRouterUserDataRequest(overlay_id=overlay_id, site_id=site_id),
            owner,
        )
        return answer.user_data

    def delete_overlay(self, owner: Identity, overlay_id: str) -> bool:
        """True when the overlay is gone (deleted now or already)."""
        try:
            self._call(
                "DeleteOverlay",
                self._stub.DeleteOverlay,
                pb.DeleteOverlayRequest(overlay_id=overlay_id),
                owner,
            )
        except VRouterError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        return True
