"""REST handlers (bound to the operationIds of openapi.yaml by `RestApi.resolve`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from connexion import request
from connexion.resolver import Resolver
from google.protobuf import json_format
from google.protobuf.message import Message
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc_common.errors import Problem
from hdc_common.identity import InternalTokenVerifier, identity_from_headers
from hdc_infoprovider import models as m
from hdc_infoprovider import placement, query
from hdc_infoprovider.agent_auth import IdpUnavailable
from hdc_infoprovider.cmdb import Cmdb, CmdbNotFound
from hdc_infoprovider.ingest import Ingestor, to_utc
from hdc_infoprovider.report import site_report_schema
from sqlalchemy.orm import Session, sessionmaker

SPEC = Path(__file__).parent / "openapi.yaml"


def to_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class RestApi:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        ingestor: Ingestor,
        identity: InternalTokenVerifier,
        catalog: placement.Catalog,
        operator_role: str = "platform-admin",
    ) -> None:
        self.catalog = catalog
        self.sessions = sessions
        self.ingestor = ingestor
        self.identity = identity
        self.operator_role = operator_role
        self._schema = site_report_schema()

    def resolver(self) -> Resolver:
        return Resolver(function_resolver=lambda operation_id: _json(getattr(self, operation_id)))

    # -- hdc JSON ------------------------------------------------------------------

    def get_report_schema(self) -> Any:
        return self._schema, 200, {"Content-Type": "application/schema+json"}

    def post_report(self, body: Any) -> Any:
        authorization = request.headers.get("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "Unauthorized", "send the agent's access token as 'Bearer <token>'")
        try:
            size = int(request.headers.get("content-length") or 0)
        except ValueError:
            size = 0  # measured from the body instead
        envelope = {"access_token": token.strip(), "report": body}
        try:
            with self.sessions.begin() as s:
                result = self.ingestor.handle_envelope(
                    s, envelope, transport="http", raw_size=size or None
                )
        except IdpUnavailable as exc:
            raise Problem(
                503, "Service Unavailable", str(exc), headers={"Retry-After": "30"}
            ) from None
        if result.accepted:
            return {
                "accepted": True,
                "site_id": result.site_id,
                "status": result.status,
                "changes": result.changes,
            }, 202
        raise _refusal_problem(result.kind, result.reason)

    def list_sites(self, include_down: bool = False) -> Any:
        with self.sessions() as s:
            return to_json(query.list_sites(s, include_down))

    def get_site(self, site_id: str) -> Any:
        with self.sessions() as s:
            try:
                return to_json(query.get_site(s, site_id))
            except query.NotFound as exc:
                raise Problem(404, "Not Found", str(exc)) from None

    def get_service(self, service_id: str) -> Any:
        site_id, dot, _ = service_id.partition(".")
        if not dot:
            raise Problem(400, "Bad Request", "a service id looks like '<site_id>.<local id>'")
        with self.sessions() as s:
            try:
                site = query.get_site(s, site_id)
            except query.NotFound:
                site = None
            for svc in site.services if site else []:
                if svc.id == service_id:
                    return to_json(svc)
        raise Problem(404, "Not Found", f"no service {service_id!r}")

    def search_candidates(self, body: dict[str, Any]) -> Any:
        try:
            req = json_format.ParseDict(body, pb.Requirements())
        except json_format.ParseError as exc:
            raise Problem(400, "Bad Request", f"invalid requirements: {exc}") from None
        with self.sessions() as s:
            return to_json(placement.find_candidates(s, req, self.catalog))

    def list_rejected_reports(self, site: str | None = None, limit: int = 100) -> Any:
        who = identity_from_headers(request.headers, self.identity)
        if self.operator_role not in who.roles:
            raise Problem(
                403,
                "Forbidden",
                f"rejected reports are for operators (role {self.operator_role!r})",
            )
        stmt = sa.select(m.RejectedReport).order_by(m.RejectedReport.id.desc()).limit(limit)
        if site:
            stmt = stmt.where(
                sa.or_(
                    m.RejectedReport.claimed_site == site,
                    m.RejectedReport.authenticated_site == site,
                )
            )
        with self.sessions() as s:
            rows = s.scalars(stmt).all()
        return {
            "rejected_reports": [
                {
                    "id": r.id,
                    "received_at": to_utc(r.received_at).isoformat(),
                    "event_id": r.event_id,
                    "transport": r.transport,
                    "claimed_site": r.claimed_site,
                    "authenticated_site": r.authenticated_site,
                    "client_id": r.client_id,
                    "issuer": r.issuer,
                    "reason": r.reason,
                    "size_bytes": r.size_bytes,
                    "excerpt": r.excerpt,
                }
                for r in rows
            ]
        }

    # -- INDIGO CMDB compatible ------------------------------------------------------

    def _cmdb(self, fn: str, *args: Any) -> Any:
        with self.sessions() as s:
            try:
                return getattr(Cmdb(s), fn)(*args)
            except CmdbNotFound as exc:
                raise Problem(404, "Not Found", str(exc)) from None

    def cmdb_provider_list(
        self, include_docs: bool = False, limit: int = 1000, skip: int = 0
    ) -> Any:
        return self._cmdb("provider_list", include_docs, limit, skip)

    def cmdb_provider(self, doc_id: str, include_docs: bool = False) -> Any:
        return self._cmdb("provider", doc_id)

    def cmdb_provider_services(self, doc_id: str, include_docs: bool = False) -> Any:
        return self._cmdb("provider_services", doc_id, include_docs)

    def cmdb_service_list(
        self, include_docs: bool = False, limit: int = 1000, skip: int = 0
    ) -> Any:
        return self._cmdb("service_list", include_docs, limit, skip)

    def cmdb_service(self, doc_id: str, include_docs: bool = False) -> Any:
        return self._cmdb("service", doc_id)

    def cmdb_service_has_many(self, doc_id: str, kind: str, include_docs: bool = False) -> Any:
        return self._cmdb("service_has_many", doc_id, kind, include_docs)

    def cmdb_tenant_list(self, include_docs: bool = False, limit: int = 1000, skip: int = 0) -> Any:
        return self._cmdb("listing", "tenants", include_docs, limit, skip)

    def cmdb_tenant(self, doc_id: str, include_docs: bool = False) -> Any:
        return self._cmdb("one", "tenants", doc_id)

    def cmdb_tenant_has_many(self, doc_id: str, kind: str, include_docs: bool = False) -> Any:
        return self._cmdb("tenant_has_many", doc_id, kind, include_docs)

    def cmdb_tenants_by_organisation(self, organisation: str, include_docs: bool = False) -> Any:
        return self._cmdb("tenants_by_organisation", organisation, include_docs)

    def cmdb_image_list(self, include_docs: bool = False, limit: int = 1000, skip: int = 0) -> Any:
        return self._cmdb("listing", "images", include_docs, limit, skip)

    def cmdb_image(self, doc_id: str, include_docs: bool = False) -> Any:
        return self._cmdb("one", "images", doc_id)

    def cmdb_flavor_list(self, include_docs: bool = False, limit: int = 1000, skip: int = 0) -> Any:
        return self._cmdb("listing", "flavors", include_docs, limit, skip)

    def cmdb_flavor(self, doc_id: str, include_docs: bool = False) -> Any:
        return self._cmdb("one", "flavors", doc_id)


def _json(fn: Any) -> Any:
    """Name the content type: operations also declare problem+json, so connexion must be told."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if isinstance(result, tuple):
            if len(result) == 3:
                return result
            return result[0], result[1], {"Content-Type": "application/json"}
        return result, 200, {"Content-Type": "application/json"}

    return wrapper


REFUSAL_STATUS = {
    "invalid": (400, "Bad Request"),
    "unauthenticated": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "conflict": (409, "Conflict"),
    "too_large": (413, "Content Too Large"),
}


def _refusal_problem(kind: str, reason: str) -> Problem:
    status, title = REFUSAL_STATUS.get(kind, (400, "Bad Request"))
    return Problem(status, title, reason)
