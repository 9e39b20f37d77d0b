"""gRPC front end (proto/hdc/vrouter/v1/vrouter.proto) over the same Controller as REST."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from hdc.vrouter.v1 import vrouter_pb2 as pb
from hdc.vrouter.v1 import vrouter_pb2_grpc as pb_grpc
from hdc_common.errors import Problem
from hdc_common.grpc import caller_identity_token
from hdc_common.identity import HEADER, Identity, InternalTokenVerifier, identity_from_headers

from hdc_vrouter.controller import Controller

SERVICE_NAME = "hdc.vrouter.v1.VRouter"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _msg(cls: type, data: dict[str, Any]) -> Any:
    return json_format.ParseDict(data, cls(), ignore_unknown_fields=True)


def _answers(method: Callable[..., Any]) -> Callable[..., Any]:
    """Problems become gRPC status codes with the same human-readable detail."""

    @functools.wraps(method)
    def wrapper(self: VRouterServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Problem as exc:
            code = _CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            if exc.extensions.get("reason") == "pool_exhausted":
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
            context.abort(code, exc.detail or exc.title)

    return wrapper


def _with_token(data: dict[str, Any]) -> Any:
    site = {k: v for k, v in data.items() if not k.startswith("enrolment_token")}
    return pb.SiteWithToken(
        site=_msg(pb.Site, site),
        enrolment_token=data.get("enrolment_token", ""),
        enrolment_token_expires_at=data.get("enrolment_token_expires_at") or "",
    )


class VRouterServicer(pb_grpc.VRouterServicer):
    def __init__(self, controller: Controller, verifier: InternalTokenVerifier) -> None:
        self.c = controller
        self.verifier = verifier

    def _caller(self) -> Identity:
        token = caller_identity_token.get()
        return identity_from_headers({HEADER: token} if token else {}, self.verifier)

    @_answers
    def CreateOverlay(self, request: pb.CreateOverlayRequest, context: grpc.ServicerContext) -> Any:
        data = self.c.create_overlay(
            self._caller(),
            name=request.name,
            cidr=request.cidr,
            site_prefix=request.site_prefix or 24,
            topology=request.topology or "hub-and-spoke",
            listen_port=request.listen_port or 51820,
            persistent_keepalive=(
                request.persistent_keepalive if request.HasField("persistent_keepalive") else 25
            ),
            hub_endpoint=request.hub_endpoint or None,
            group=request.group or None,
        )
        hub = data.pop("hub")
        return pb.CreateOverlayResponse(overlay=_msg(pb.Overlay, data), hub=_with_token(hub))

    @_answers
    def GetOverlay(self, request: pb.GetOverlayRequest, context: grpc.ServicerContext) -> Any:
        return _msg(pb.Overlay, self.c.get_overlay(self._caller(), request.overlay_id))

    @_answers
    def DeleteOverlay(self, request: pb.DeleteOverlayRequest, context: grpc.ServicerContext) -> Any:
        self.c.delete_overlay(self._caller(), request.overlay_id)
        return pb.DeleteOverlayResponse()

    @_answers
    def AddSite(self, request: pb.AddSiteRequest, context: grpc.ServicerContext) -> Any:
        data = self.c.add_site(
            self._caller(),
            request.overlay_id,
            name=request.name,
            private_ranges=list(request.private_ranges),
            nat=request.nat,
            endpoint=request.endpoint or None,
        )
        return _with_token(data)

    @_answers
    def RemoveSite(self, request: pb.RemoveSiteRequest, context: grpc.ServicerContext) -> Any:
        self.c.remove_site(self._caller(), request.overlay_id, request.site_id)
        return pb.RemoveSiteResponse()

    @_answers
    def ListSites(self, request: pb.ListSitesRequest, context: grpc.ServicerContext) -> Any:
        sites = self.c.list_sites(self._caller(), request.overlay_id)
        return pb.ListSitesResponse(sites=[_msg(pb.Site, s) for s in sites])

    @_answers
    def GetSiteConfig(self, request: pb.GetSiteConfigRequest, context: grpc.ServicerContext) -> Any:
        return _msg(
            pb.RouterConfig, self.c.site_config(self._caller(), request.overlay_id, request.site_id)
        )

    @_answers
    def RotateSiteKey(self, request: pb.RotateSiteKeyRequest, context: grpc.ServicerContext) -> Any:
        return _msg(
            pb.Site, self.c.request_rotation(self._caller(), request.overlay_id, request.site_id)
        )

    @_answers
    def ListHealth(self, request: pb.ListHealthRequest, context: grpc.ServicerContext) -> Any:
        return _msg(pb.OverlayHealth, self.c.health(self._caller(), request.overlay_id))

    @_answers
    def GetRouterUserData(
        self, request: pb.GetRouterUserDataRequest, context: grpc.ServicerContext
    ) -> Any:
        data = self.c.router_user_data(
            self._caller(),
            request.overlay_id,
            request.site_id,
            endpoint=request.endpoint or None,
            interface=request.interface or "hdcvr0",
        )
        return _msg(pb.RouterUserData, data)


def servicer_entry(controller: Controller, verifier: InternalTokenVerifier) -> tuple[Any, Any, str]:
    return (
        pb_grpc.add_VRouterServicer_to_server,
        VRouterServicer(controller, verifier),
        SERVICE_NAME,
    )
