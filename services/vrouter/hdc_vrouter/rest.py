"""REST front end: connexion handlers bound to one Controller (spec: openapi.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connexion import request
from connexion.lifecycle import ConnexionResponse
from connexion.resolver import Resolver
from hdc_common.http import create_openapi_app
from hdc_common.identity import Identity, InternalTokenVerifier, identity_from_headers

from hdc_vrouter.controller import Controller

SPEC = Path(__file__).with_name("openapi.yaml")


def _bearer() -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _no_content() -> ConnexionResponse:
    return ConnexionResponse(status_code=204)


def _json(body: Any, status: int = 200) -> ConnexionResponse:
    # The spec lists problem+json for errors too, so connexion wants the type spelled out.
    return ConnexionResponse(
        status_code=status, mimetype="application/json", content_type="application/json", body=body
    )


class Handlers:
    """One method per operationId; operator calls need the gateway-signed identity."""

    def __init__(self, controller: Controller, verifier: InternalTokenVerifier) -> None:
        self.c = controller
        self.verifier = verifier

    def _caller(self) -> Identity:
        return identity_from_headers(request.headers, self.verifier)

    # operators
    def list_overlays(self) -> Any:
        return _json(self.c.list_overlays(self._caller()))

    def create_overlay(self, body: dict[str, Any]) -> Any:
        return _json(self.c.create_overlay(self._caller(), **body), 201)

    def get_overlay(self, overlay_id: str) -> Any:
        return _json(self.c.get_overlay(self._caller(), overlay_id))

    def delete_overlay(self, overlay_id: str) -> Any:
        self.c.delete_overlay(self._caller(), overlay_id)
        return _no_content()

    def list_sites(self, overlay_id: str) -> Any:
        return _json(self.c.list_sites(self._caller(), overlay_id))

    def add_site(self, overlay_id: str, body: dict[str, Any]) -> Any:
        return _json(self.c.add_site(self._caller(), overlay_id, **body), 201)

    def get_site(self, overlay_id: str, site_id: str) -> Any:
        return _json(self.c.get_site(self._caller(), overlay_id, site_id))

    def remove_site(self, overlay_id: str, site_id: str) -> Any:
        self.c.remove_site(self._caller(), overlay_id, site_id)
        return _no_content()

    def site_config(self, overlay_id: str, site_id: str) -> Any:
        return _json(self.c.site_config(self._caller(), overlay_id, site_id))

    def new_enrolment_token(self, overlay_id: str, site_id: str) -> Any:
        return _json(self.c.new_enrolment_token(self._caller(), overlay_id, site_id), 201)

    def router_user_data(
        self, overlay_id: str, site_id: str, body: dict[str, Any] | None = None
    ) -> Any:
        body = body or {}
        return _json(self.c.router_user_data(self._caller(), overlay_id, site_id, **body), 201)

    def request_rotation(self, overlay_id: str, site_id: str) -> Any:
        return _json(self.c.request_rotation(self._caller(), overlay_id, site_id), 202)

    def health(self, overlay_id: str) -> Any:
        return _json(self.c.health(self._caller(), overlay_id))

    # agents
    def agent_enrol(self, body: dict[str, Any]) -> Any:
        return _json(self.c.enrol(body["token"], body["public_key"], body.get("endpoint")), 201)

    def agent_config(self) -> Any:
        return _json(self.c.agent_config(_bearer()))

    def agent_rotate_key(self, body: dict[str, Any]) -> Any:
        return _json(self.c.agent_rotate_key(_bearer(), body["public_key"]))

    def agent_heartbeat(self, body: dict[str, Any]) -> Any:
        return _json(self.c.heartbeat(_bearer(), body["peers"], body.get("config_version")))


def create_app(
    controller: Controller, verifier: InternalTokenVerifier, readiness: list | None = None
) -> Any:
    handlers = Handlers(controller, verifier)
    return create_openapi_app(
        SPEC,
        service="vrouter",
        resolver=Resolver(function_resolver=lambda op: getattr(handlers, op.rsplit(".", 1)[-1])),
        readiness=readiness or [],
    )
