"""Handlers of openapi.yaml (bound by connexion). Validation of shapes is the spec's job;
here: identity, visibility, template checks, state rules, and the INDIGO JSON shapes."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import sqlalchemy as sa
from connexion import request
from hdc_common.db import StaleDataError
from hdc_common.errors import Problem
from hdc_common.identity import (
    GROUP_ADMIN_PREFIX,
    Identity,
    InternalTokenVerifier,
    identity_from_headers,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import StreamingResponse

from hdc_orchestrator import __version__
from hdc_orchestrator.engine import IN_PROGRESS, Conflict, Engine
from hdc_orchestrator.hybrid import PlanError, plan_overlay
from hdc_orchestrator.loop_reads import LoopReads
from hdc_orchestrator.models import CallbackDelivery, Deployment, DeploymentEvent, Resource
from hdc_orchestrator.placement import PlacementError
from hdc_orchestrator.pools import once_more_if_disconnected, reads, writes
from hdc_orchestrator.redact import redact, redact_text
from hdc_orchestrator.settings import OrchestratorSettings
from hdc_orchestrator.tosca import TemplateError, validate_template
from hdc_orchestrator.views import (
    callback_json,
    deployment_json,
    event_json,
    fmt_precise,
    page_json,
    resource_json,
)

SORT_FIELDS = {
    "createdAt": Deployment.created_at,
    "creationTime": Deployment.created_at,
    "updatedAt": Deployment.updated_at,
    "updateTime": Deployment.updated_at,
    "status": Deployment.status,
}
# What the deployment JSON shows (and visibility needs): the hot reads (GET one, list) fetch
# just these columns as plain rows, without building ORM objects.
_SHOWN = tuple(
    getattr(Deployment, name)
    for name in (
        "uuid", "created_at", "updated_at", "physical_id", "status", "status_reason",
        "status_reasons", "outputs", "task", "callback", "user_group", "cloud_provider_name",
        "cloud_provider_endpoint", "owner_issuer", "owner_subject", "secret_values", "version",
    )
)  # fmt: skip
# GET /deployments/{id}, the hottest read (dashboards poll it): a Core statement built once,
# so a request neither builds nor ORM-compiles it (half of the handler's CPU before).
_GET_ONE = sa.select(*(Deployment.__table__.c[c.key] for c in _SHOWN)).where(
    Deployment.__table__.c.uuid == sa.bindparam("uuid")
)
SSE_POLL_S = 0.3
SSE_MAX_S = 600.0


@dataclass
class AppState:
    settings: OrchestratorSettings
    sessions: sessionmaker[Session]
    engine: Engine
    verifier: InternalTokenVerifier
    # A pool of its own for GET handlers, so that a read never waits for a connection
    # held by a worker or a write (None: share `sessions`).
    read_sessions: sessionmaker[Session] | None = None
    # The hottest reads answered on the event loop (PostgreSQL; None: in threads).
    loop_reads: LoopReads | None = None

    def read_session(self) -> Session:
        return (self.read_sessions or self.sessions)()


# Set per request by the app's middleware, so several apps can live in one process.
current_state: ContextVar[AppState] = ContextVar("orchestrator_state")


def _state() -> AppState:
    return current_state.get()


def _caller() -> Identity:
    return identity_from_headers(request.headers, _state().verifier)


def _base() -> str:
    st = _state()
    if st.settings.public_url:
        return st.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def _check_page(page: int, size: int) -> None:
    if page < 0:
        raise _bad(f"page must be 0 or more (pages are 0-based), got {page}")
    if not 1 <= size <= 1000:
        raise _bad(f"size must be between 1 and 1000, got {size}")


def _error(code: int, title: str, message: str, headers: dict[str, str] | None = None) -> Problem:
    return Problem(code, title, message, headers=headers)


def _bad(message: str) -> Problem:
    return _error(400, "Bad Request", message)


def _not_found(uuid: str) -> Problem:
    return _error(404, "Not Found", f"The requested deployment <{uuid}> doesn't exist")


def _visible(identity: Identity) -> Any:
    if identity.is_platform_admin:
        return sa.true()
    own = sa.and_(
        Deployment.owner_subject == identity.subject, Deployment.owner_issuer == identity.issuer
    )
    groups = [
        r.removeprefix(GROUP_ADMIN_PREFIX)
        for r in identity.roles
        if r.startswith(GROUP_ADMIN_PREFIX)
    ]
    return sa.or_(own, Deployment.user_group.in_(groups)) if groups else own


def _load(s: Session, identity: Identity, uuid: str) -> Deployment:
    return _visible_or_404(identity, uuid, s.get(Deployment, uuid))


def _visible_or_404(identity: Identity, uuid: str, d: Any) -> Any:
    # Someone else's deployment is "not found": its existence is not the caller's business.
    if d is None or not identity.can_see(d.owner_subject, d.owner_issuer, d.user_group):
        raise _not_found(uuid)
    return d


def _etag(d: Deployment) -> str:
    return f'"{d.version}"'


def _check_if_match(d: Deployment, if_match: str | None) -> None:
    if not if_match:
        return
    tags = [t.strip().removeprefix("W/") for t in if_match.split(",")]
    if "*" not in tags and _etag(d) not in tags:
        raise _error(
            412,
            "Precondition Failed",
            f"If-Match {if_match} does not match the deployment's current ETag {_etag(d)}; "
            "read it again and retry",
            headers={"ETag": _etag(d)},
        )


def _change(deployment_id: str, action: Any, if_match: str | None = None) -> None:
    """Run `action(session, deployment)` in a transaction, retrying when the workflow moved
    the deployment meanwhile (optimistic lock); with If-Match, such a move is a 412."""
    identity = _caller()
    st = _state()
    for attempt in range(5):
        try:
            with st.sessions.begin() as s:
                d = _load(s, identity, deployment_id)
                _check_if_match(d, if_match)
                action(s, d)
            return
        except Conflict as exc:
            raise _error(409, "Conflict", str(exc)) from None
        except StaleDataError:
            if if_match:
                raise _error(
                    412, "Precondition Failed", "the deployment changed meanwhile (ETag moved)"
                ) from None
            if attempt == 4:
                raise _error(
                    409, "Conflict", "the deployment kept changing; read it again and retry"
                ) from None


def _check_request(body: dict[str, Any], st: AppState) -> None:
    callback = body.get("callback")
    if callback is not None:
        url = urlparse(callback)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise _bad(f"callback '{callback}' must be an absolute http or https URL")
    timeout = body.get("timeoutMins") or st.settings.default_timeout_mins
    ptimeout = body.get("providerTimeoutMins")
    if ptimeout is not None and ptimeout > timeout:
        raise _bad(f"providerTimeoutMins ({ptimeout}) must not exceed timeoutMins ({timeout})")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _bad("parameters must be a JSON object")


def _validate(body: dict[str, Any]) -> Any:
    try:
        validated = validate_template(body["template"], body.get("parameters") or {})
    except TemplateError as exc:
        raise _bad(f"Invalid template: {exc}") from None
    try:
        # A hybrid template's vRouter nodes must make a valid overlay (one hub with a public
        # name, a host per router) before anything is placed.
        nodes = validated.nodes.values()
        plan_overlay(
            validated.resolved_text,
            {n.name: n.types for n in nodes},
            {n.name: n.count for n in nodes},
        )
    except PlanError as exc:
        raise _bad(f"Invalid template: {exc}") from None
    return validated


# ---------------------------------------------------------------------- service info


def root() -> Any:
    return "INDIGO-Orchestrator (hdc)", 200, {"Content-Type": "text/plain"}


def info() -> Any:
    # `build` is the INDIGO orchestrator's shape; the project* keys are what orchent's
    # `test` command reads.
    return {
        "build": {"name": "hdc-orchestrator", "version": __version__},
        "projectVersion": __version__,
        "serverHostname": socket.gethostname(),
    }


def configuration() -> Any:
    s = _state().settings
    conf = {
        "cpr_url": s.ranker_url,
        "cmdb_url": s.infoprovider_url,
        "im_url": s.im_url,
        "vrouter_url": s.vrouter_url,
        "dashboard_url": s.dashboard_url,
        "monitoring_url": s.monitoring_url or None,
    }
    return {k: v for k, v in conf.items() if v}


# ---------------------------------------------------------------------- deployments


@reads
def list_deployments(
    created_by: str | None = None,
    user_group: str | None = None,
    page: int = 0,
    size: int = 10,
    sort: str = "createdAt,desc",
) -> Any:
    identity = _caller()
    _check_page(page, size)
    field, _, direction = sort.partition(",")
    column = SORT_FIELDS.get(field.strip())
    direction = (direction or "desc").strip().lower()
    if column is None or direction not in ("asc", "desc"):
        raise _bad(f"sort '{sort}' is not valid; use <{'|'.join(SORT_FIELDS)}>[,asc|desc]")
    where = [_visible(identity)]
    if created_by:
        if created_by == "me":
            subject, issuer = identity.subject, identity.issuer
        else:
            subject, sep, issuer = created_by.rpartition("@")
            if not sep or not subject or not issuer:
                raise _bad(f"createdBy '{created_by}' must be 'me' or '<subject>@<issuer>'")
        where += [Deployment.owner_subject == subject, Deployment.owner_issuer == issuer]
    if user_group:
        where.append(Deployment.user_group == user_group)
    order = column.desc() if direction == "desc" else column.asc()
    with _state().read_session() as s:
        total = s.scalar(sa.select(sa.func.count()).select_from(Deployment).where(*where)) or 0
        rows = s.execute(
            sa.select(*_SHOWN)
            .where(*where)
            .order_by(order, Deployment.uuid)
            .offset(page * size)
            .limit(size)
        ).all()
        base = _base()
        content = [deployment_json(d, base) for d in rows]
    query = {"createdBy": created_by, "userGroup": user_group, "sort": sort}
    return page_json(
        content, total=total, page=page, size=size, url=f"{base}/deployments", query=query
    )


@writes
def create_deployment(body: dict[str, Any], dry_run: bool = False) -> Any:
    identity = _caller()
    st = _state()
    _check_request(body, st)
    group = body.get("userGroup")
    if group and group not in identity.groups and not identity.is_platform_admin:
        raise _error(403, "Forbidden", f"you are not a member of group '{group}'")
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    if key and not dry_run:
        replay = _replay(st, identity, key, digest)
        if replay is not None:
            return replay
    validated = _validate(body)
    if dry_run:
        if st.engine.placement is None:
            raise _error(503, "Service Unavailable", "no placement service is configured")
        try:
            req = {k: v for k, v in validated.requirements.items()}
            # Asked for the caller, as the deployment's placement would be for its owner.
            owner = Identity(
                subject=identity.subject, issuer=identity.issuer, groups=(group,) if group else ()
            )
            placement = st.engine.placement.place(req, "dry-run", owner)
        except PlacementError as exc:
            raise _error(503, "Service Unavailable", f"placement failed: {exc}") from None
        return {"dryRun": True, "requirements": validated.requirements, "placement": placement}, 200
    try:
        with st.sessions.begin() as s:
            d = st.engine.create(
                s,
                identity=identity,
                body=body,
                validated=validated,
                idempotency_key=key,
                request_hash=digest if key else None,
            )
        # After the commit: the row and its version exist (one round trip fewer than a flush).
        out = deployment_json(d, _base())
        etag = _etag(d)
    except IntegrityError:
        # Two requests with the same Idempotency-Key raced; the other one won.
        replay = _replay(st, identity, key or "", digest) if key else None
        if replay is None:
            raise
        return replay
    return out, 201, {"Location": out["links"][0]["href"], "ETag": etag}


def _replay(st: AppState, identity: Identity, key: str, digest: str) -> Any:
    with st.sessions() as s:
        d = s.scalars(
            sa.select(Deployment).where(
                Deployment.owner_subject == identity.subject,
                Deployment.owner_issuer == identity.issuer,
                Deployment.idempotency_key == key,
            )
        ).first()
        if d is None:
            return None
        if d.request_hash != digest:
            raise _error(
                422,
                "Unprocessable Entity",
                f"Idempotency-Key '{key}' was already used with a different request body",
            )
        out = deployment_json(d, _base())
        return (
            out,
            201,
            {"Location": out["links"][0]["href"], "ETag": _etag(d), "Idempotent-Replayed": "true"},
        )


async def get_deployment(deployment_id: str) -> Any:
    loop_reads = _state().loop_reads
    if loop_reads is None:
        return await _get_deployment_in_thread(deployment_id)
    identity = _caller()
    row = await loop_reads.one(_GET_ONE, {"uuid": deployment_id})
    d = _visible_or_404(identity, deployment_id, row)
    return deployment_json(d, _base()), 200, {"ETag": _etag(d)}


@reads
def _get_deployment_in_thread(deployment_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        row = s.connection().execute(_GET_ONE, {"uuid": deployment_id}).first()
        d = _visible_or_404(identity, deployment_id, row)
        return deployment_json(d, _base()), 200, {"ETag": _etag(d)}


@writes
def update_deployment(deployment_id: str, body: dict[str, Any]) -> Any:
    _caller()
    st = _state()
    _check_request(body, st)
    validated = _validate(body)
    _change(
        deployment_id,
        lambda s, d: st.engine.request_update(s, d, validated, body),
        request.headers.get("If-Match"),
    )
    return None, 202


@writes
def patch_deployment(deployment_id: str, body: dict[str, Any]) -> Any:
    st = _state()
    _change(
        deployment_id, lambda s, d: st.engine.reset_delete(s, d), request.headers.get("If-Match")
    )
    return None, 204


@writes
def delete_deployment(deployment_id: str, force: bool = False) -> Any:
    st = _state()
    _change(deployment_id, lambda s, d: st.engine.request_delete(s, d, force))
    return None, 204


@reads
def get_template(deployment_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        return d.template, 200, {"Content-Type": "text/plain"}


@reads
def get_log(deployment_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        rows = s.scalars(
            sa.select(DeploymentEvent)
            .where(DeploymentEvent.deployment_uuid == d.uuid)
            .order_by(DeploymentEvent.id)
        ).all()
        secrets = d.secret_values or []
        lines = [
            " ".join(
                x
                for x in (
                    fmt_precise(e.at),
                    e.kind,
                    e.status or "",
                    f"[{e.provider}]" if e.provider else "",
                    redact_text(e.message, secrets) if e.message else "",
                )
                if x
            )
            for e in rows
        ]
        return "\n".join(lines) + ("\n" if lines else ""), 200, {"Content-Type": "text/plain"}


@reads
def get_extrainfo(deployment_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        infos = [
            {
                "vmId": r.physical_id,
                "node": r.node_name,
                "state": r.state,
                "vmProperties": redact(r.meta or {}, d.secret_values or []),
            }
            for r in d.resources
            if r.physical_id
        ]
        return json.dumps(infos), 200, {"Content-Type": "text/plain"}


@reads
def get_placement(deployment_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        tried = [
            {
                "attempt": a.number,
                "siteId": a.site_id,
                "serviceId": a.service_id,
                "state": a.state,
                "error": a.error,
            }
            for a in d.attempts
        ]
        return {
            "uuid": d.uuid,
            "requirements": {k: v for k, v in d.requirements.items() if k != "compute_nodes"},
            "placement": d.placement,
            "attempts": [{k: v for k, v in t.items() if v is not None} for t in tried],
        }


@reads
def get_callbacks(deployment_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        rows = s.scalars(
            sa.select(CallbackDelivery)
            .where(CallbackDelivery.deployment_uuid == d.uuid)
            .order_by(CallbackDelivery.id)
        ).all()
        return {"callback": d.callback, "deliveries": [callback_json(c) for c in rows]}


@reads
def get_events(deployment_id: str, after: int | None = None) -> Any:
    identity = _caller()
    st = _state()
    last_id = request.headers.get("Last-Event-ID")
    start = after or 0
    if last_id:
        if not last_id.strip().isdigit():
            raise _bad(f"Last-Event-ID '{last_id}' must be an event id (an integer)")
        start = max(start, int(last_id))
    with st.read_session() as s:
        d = _load(s, identity, deployment_id)
        secrets = list(d.secret_values or [])
        if "text/event-stream" not in request.headers.get("Accept", ""):
            rows = _events_after(s, d.uuid, start)
            body = {
                "uuid": d.uuid,
                "status": d.status,
                "events": [event_json(e, secrets) for e in rows],
            }
            return body, 200, {"Content-Type": "application/json"}
    return StreamingResponse(
        _sse(st, deployment_id, start, secrets),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _poll(st: AppState, uuid: str, after: int) -> tuple[list[DeploymentEvent], str | None]:
    with st.read_session() as s:
        rows = _events_after(s, uuid, after)
        return rows, s.scalar(sa.select(Deployment.status).where(Deployment.uuid == uuid))


def _events_after(s: Session, uuid: str, after: int) -> list[DeploymentEvent]:
    return list(
        s.scalars(
            sa.select(DeploymentEvent)
            .where(DeploymentEvent.deployment_uuid == uuid, DeploymentEvent.id > after)
            .order_by(DeploymentEvent.id)
        )
    )


def _sse(st: AppState, uuid: str, after: int, secrets: list[str]) -> Iterator[bytes]:
    """Replay then follow; ends when the deployment leaves *_IN_PROGRESS or is deleted."""
    deadline = time.monotonic() + SSE_MAX_S
    while time.monotonic() < deadline:
        rows, status = once_more_if_disconnected(functools.partial(_poll, st, uuid, after))
        for e in rows:
            after = e.id
            data = json.dumps(event_json(e, secrets))
            yield f"id: {e.id}\nevent: {e.kind}\ndata: {data}\n\n".encode()
        if status is None or status not in IN_PROGRESS:
            yield f"event: end\ndata: {json.dumps({'status': status or 'DELETE_COMPLETE'})}\n\n".encode()
            return
        if not rows:
            yield b": keep-alive\n\n"
        time.sleep(SSE_POLL_S)


# ---------------------------------------------------------------------- resources


def _resources(d: Deployment, typ: str | None) -> list[Resource]:
    rows = list(d.resources)
    if typ:
        rows = [r for r in rows if typ in (r.type_chain or [r.node_type])]
    return rows


@reads
def list_resources(
    deployment_id: str, type_: str | None = None, page: int = 0, size: int = 10
) -> Any:
    identity = _caller()
    _check_page(page, size)
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        rows = _resources(d, type_)
        base = _base()
        content = [
            resource_json(r, base, d.secret_values or [])
            for r in rows[page * size : (page + 1) * size]
        ]
        return page_json(
            content,
            total=len(rows),
            page=page,
            size=size,
            url=f"{base}/deployments/{d.uuid}/resources",
            query={"type": type_},
        )


@reads
def filter_resources(deployment_id: str, type_: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        base = _base()
        return [resource_json(r, base, d.secret_values or []) for r in _resources(d, type_)]


def _resource(d: Deployment, resource_id: str) -> Resource:
    r = next((x for x in d.resources if x.uuid == resource_id), None)
    if r is None:
        raise _error(
            404,
            "Not Found",
            f"The requested resource <{resource_id}> doesn't exist in deployment <{d.uuid}>",
        )
    return r


@reads
def get_resource(deployment_id: str, resource_id: str) -> Any:
    identity = _caller()
    with _state().read_session() as s:
        d = _load(s, identity, deployment_id)
        return resource_json(_resource(d, resource_id), _base(), d.secret_values or [])


@writes
def resource_action(deployment_id: str, resource_id: str, body: dict[str, Any]) -> Any:
    st = _state()
    _change(
        deployment_id,
        lambda s, d: st.engine.resource_action(s, d, _resource(d, resource_id), body["type"]),
    )
    return None, 202
