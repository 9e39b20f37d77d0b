"""gRPC InfoProvider servicer: the placement queries the orchestrator and ranker make."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from hdc.infoprovider.v1 import infoprovider_pb2 as pb
from hdc.infoprovider.v1 import infoprovider_pb2_grpc as pb_grpc
from hdc_infoprovider import placement, query
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
SERVICE_NAME = "hdc.infoprovider.v1.InfoProvider"


class InfoProviderServicer(pb_grpc.InfoProviderServicer):
    def __init__(self, sessions: sessionmaker[Session], catalog: placement.Catalog) -> None:
        self.sessions = sessions
        self.catalog = catalog

    def FindCandidates(self, request: pb.Requirements, context: grpc.ServicerContext) -> Any:
        problem = _check_requirements(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        with self.sessions() as s:
            return placement.find_candidates(s, request, self.catalog)

    def GetSite(self, request: pb.GetSiteRequest, context: grpc.ServicerContext) -> Any:
        if not request.site_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "site_id is required")
        with self.sessions() as s:
            try:
                return query.get_site(s, request.site_id)
            except query.NotFound as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    def ListSites(self, request: pb.ListSitesRequest, context: grpc.ServicerContext) -> Any:
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


def servicer_entry(
    sessions: sessionmaker[Session], catalog: placement.Catalog
) -> tuple[Any, Any, str]:
    servicer = InfoProviderServicer(sessions, catalog)
    return (pb_grpc.add_InfoProviderServicer_to_server, servicer, SERVICE_NAME)
