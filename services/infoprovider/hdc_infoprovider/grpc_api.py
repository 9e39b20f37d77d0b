"""gRPC InfoProvider servicer: the placement queries the orchestrator and ranker make.

Every call must carry a gateway-signed identity (`x-hdc-identity` metadata): the
orchestrator signs its deployment owner's with the gateway's key; anything else that
reaches this port without one is refused with UNAUTHENTICATED before any work is done.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc.infoprovider.v1 import infoprovider_pb2_grpc as pb_grpc
from hdc_common.identity import InternalTokenVerifier
from hdc_common.require_identity import grpc_caller
from sqlalchemy.orm import Session, sessionmaker

from hdc_infoprovider import placement, query

log = logging.getLogger(__name__)
SERVICE_NAME = "hdc.infoprovider.v1.InfoProvider"


class InfoProviderServicer(pb_grpc.InfoProviderServicer):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        catalog: placement.Catalog,
        verifier: InternalTokenVerifier,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.verifier = verifier

    def FindCandidates(self, request: pb.Requirements, context: grpc.ServicerContext) -> Any:
        grpc_caller(self.verifier, context)
        problem = _check_requirements(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        with self.sessions() as s:
            # Already serialised: see servicer_entry.
            return placement.find_candidates_wire(s, request, self.catalog)

    def GetSite(self, request: pb.GetSiteRequest, context: grpc.ServicerContext) -> Any:
        grpc_caller(self.verifier, context)
        if not request.site_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "site_id is required")
        with self.sessions() as s:
            try:
                return query.get_site(s, request.site_id)
            except query.NotFound as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    def ListSites(self, request: pb.ListSitesRequest, context: grpc.ServicerContext) -> Any:
        grpc_caller(self.verifier, context)
        with self.sessions() as s:
            return query.list_sites(s, request.include_down)


def _check_requirements(req: pb.Requirements) -> str:
    if len(req.site_ids) > 10000 or len(req.exclude_site_ids) > 10000:
        return "at most 10000 site_ids / exclude_site_ids"
    if len(req.service_types) > 50:
        return "at most 50 service_types"
    if req.ram_mb > 2**53 or req.disk_gb > 2**53:
        return "ram_mb / disk_gb out of range"
    return ""


def _add_to_server(servicer: InfoProviderServicer, server: grpc.Server) -> None:
    """The generated registration, except that FindCandidates answers bytes it assembled
    from pre-serialised pieces (placement.find_candidates_wire): passed through as they are
    instead of building a message of up to thousands of candidates to serialise it again."""
    handlers = {
        "FindCandidates": grpc.unary_unary_rpc_method_handler(
            servicer.FindCandidates,
            request_deserializer=pb.Requirements.FromString,
            response_serializer=bytes,
        ),
        "GetSite": grpc.unary_unary_rpc_method_handler(
            servicer.GetSite,
            request_deserializer=pb.GetSiteRequest.FromString,
            response_serializer=pb.Site.SerializeToString,
        ),
        "ListSites": grpc.unary_unary_rpc_method_handler(
            servicer.ListSites,
            request_deserializer=pb.ListSitesRequest.FromString,
            response_serializer=pb.ListSitesResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def servicer_entry(
    sessions: sessionmaker[Session], catalog: placement.Catalog, verifier: InternalTokenVerifier
) -> tuple[Any, Any, str]:
    servicer = InfoProviderServicer(sessions, catalog, verifier)
    return (_add_to_server, servicer, SERVICE_NAME)
