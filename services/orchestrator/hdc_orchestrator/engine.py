"""The deployment workflow: every transition is one DB transaction plus the messages it sends.

Functions here run inside a session opened by the API, a bus handler or the sweeper. Each
transition changes the deployment row (so optimistic locking arbitrates between replicas),
appends to the event history, and writes its commands/events/callbacks through the outbox in
the same transaction, so a crash at any point either keeps the step whole or loses it whole.
"""

from __future__ import annotations

import json
import logging
import uuid as uuidlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import yaml
from hdc_common.identity import Identity
from sqlalchemy.orm import Session, joinedload, undefer

from hdc_orchestrator.hybrid import HUB_TYPES, SITE_TYPES, PlanError, plan_overlay, router_script
from hdc_orchestrator.models import Attempt, CallbackDelivery, Deployment, DeploymentEvent, Resource
from hdc_orchestrator.placement import PlacementClient, PlacementError, ranked_candidates, site_of
from hdc_orchestrator.redact import redact, redact_text
from hdc_orchestrator.settings import OrchestratorSettings
from hdc_orchestrator.site_groups import group_of, group_tosca, merge_outputs, overlay_outputs
from hdc_orchestrator.tosca import ValidatedTemplate
from hdc_orchestrator.views import deployment_json, endpoint_json
from hdc_orchestrator.vrouter_client import VRouterClient, VRouterError

log = logging.getLogger(__name__)

CREATE_IN_PROGRESS = "CREATE_IN_PROGRESS"
CREATE_COMPLETE = "CREATE_COMPLETE"
CREATE_FAILED = "CREATE_FAILED"
UPDATE_IN_PROGRESS = "UPDATE_IN_PROGRESS"
UPDATE_COMPLETE = "UPDATE_COMPLETE"
UPDATE_FAILED = "UPDATE_FAILED"
DELETE_IN_PROGRESS = "DELETE_IN_PROGRESS"
DELETE_COMPLETE = "DELETE_COMPLETE"
DELETE_FAILED = "DELETE_FAILED"
# The orchestrator lost track of what exists at the site (see Engine._lost_track).
UNKNOWN = "UNKNOWN"
IN_PROGRESS = (CREATE_IN_PROGRESS, UPDATE_IN_PROGRESS, DELETE_IN_PROGRESS)
# Statuses of a deployment that runs and has nothing in flight.
SETTLED = (CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_FAILED)
# Infrastructure states the im reports (`im.infrastructure.state`) that are not "unknown".
KNOWN_INFRA_STATES = frozenset(
    {"pending", "running", "configured", "unconfigured", "stopped", "off", "failed"}
)

PLACE_COMMAND = "orchestrator.deployment.place"
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# im VM states -> TOSCA node states (as INDIGO shows them on resources)
VM_STATES = {
    "pending": "CREATING",
    "running": "CONFIGURING",
    "unconfigured": "ERROR",
    "configured": "STARTED",
    "started": "STARTED",
    "stopped": "STOPPED",
    "off": "STOPPED",
    "failed": "ERROR",
    "deleting": "DELETING",
    "deleted": "DELETED",
}


class Conflict(Exception):
    """The request does not fit the deployment's current state (409)."""


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Engine:
    def __init__(
        self,
        bus: Any,
        settings: OrchestratorSettings,
        placement: PlacementClient | None,
        base_url: Callable[[], str],
        vrouter: VRouterClient | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.placement = placement
        self.base_url = base_url
        self.vrouter = vrouter

    def minutes(self, n: int) -> timedelta:
        return timedelta(seconds=n * self.settings.minute_s)

    # ------------------------------------------------------------------ bookkeeping

    def record(
        self,
        s: Session,
        d: Deployment,
        kind: str,
        message: str | None = None,
        provider: str | None = None,
    ) -> None:
        s.add(self._event(d, kind, message, provider))

    def _event(
        self, d: Deployment, kind: str, message: str | None, provider: str | None = None
    ) -> DeploymentEvent:
        return DeploymentEvent(
            deployment_uuid=d.uuid,
            at=now(),
            kind=kind,
            status=d.status,
            provider=provider,
            message=redact_text(message, d.secret_values or []) if message else None,
        )

    def set_status(
        self,
        s: Session,
        d: Deployment,
        status: str,
        reason: str | None = None,
        provider: str | None = None,
    ) -> None:
        d.status = status
        d.status_reason = reason
        d.updated_at = now()
        if status not in IN_PROGRESS:
            d.task = "NONE"
        self.record(s, d, "status", reason, provider)
        self.bus.emit(
            s,
            f"orchestrator.deployment.{status.lower()}",
            {
                "uuid": d.uuid,
                "status": status,
                "statusReason": redact_text(reason, d.secret_values or []) if reason else None,
                "cloudProviderName": d.cloud_provider_name or provider,
                "siteId": provider or d.cloud_provider_name,
                "serviceId": (d.cloud_provider_endpoint or {}).get("cpComputeServiceId"),
                "attempts": len(d.attempts),
                "owner": {"subject": d.owner_subject, "issuer": d.owner_issuer},
            },
            subject=d.uuid,
        )
        if d.callback:
            body = deployment_json(d, self.base_url())
            s.add(
                CallbackDelivery(
                    deployment_uuid=d.uuid,
                    owner_subject=d.owner_subject,
                    owner_issuer=d.owner_issuer,
                    user_group=d.user_group,
                    url=d.callback,
                    status=status,
                    body=json.dumps(body),
                    created_at=now(),
                    next_at=now(),
                    attempts=0,
                )
            )

    def touch(self, d: Deployment) -> None:
        # Every workflow step bumps the row so concurrent steps conflict (optimistic lock).
        d.updated_at = now()

    # ------------------------------------------------------------------ create

    def create(
        self,
        s: Session,
        *,
        identity: Any,
        body: dict[str, Any],
        validated: ValidatedTemplate,
        idempotency_key: str | None,
        request_hash: str | None,
    ) -> Deployment:
        t = now()
        timeout = body.get("timeoutMins") or self.settings.default_timeout_mins
        d = Deployment(
            uuid=str(uuidlib.uuid4()),
            created_at=t,
            updated_at=t,
            status=CREATE_IN_PROGRESS,
            status_reasons=[],
            task="NONE",
            operation="create",
            owner_subject=identity.subject,
            owner_issuer=identity.issuer,
            user_group=body.get("userGroup"),
            callback=body.get("callback"),
            template=validated.text,
            resolved_template=validated.resolved_text,
            secret_values=validated.secret_values,
            requirements=validated.requirements | {"compute_nodes": _compute_nodes(validated)},
            timeout_mins=timeout,
            provider_timeout_mins=body.get("providerTimeoutMins") or timeout,
            max_providers_retry=body.get("maxProvidersRetry"),
            keep_last_attempt=bool(body.get("keepLastAttempt", False)),
            deadline_at=t + self.minutes(timeout),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        _build_resources(d, validated, t)
        _insert_new(s, d, self._event(d, "status", "deployment accepted"))
        self.bus.emit(
            s,
            "orchestrator.deployment.create_in_progress",
            {"uuid": d.uuid, "status": d.status, "cloudProviderName": None, "siteId": None},
            subject=d.uuid,
        )
        self.bus.send(s, "orchestrator", PLACE_COMMAND, {"uuid": d.uuid})
        return d

    def on_place(self, s: Session, uuid: str) -> None:
        d = s.get(
            Deployment,
            uuid,
            options=[
                joinedload(Deployment.attempts),
                joinedload(Deployment.resources),
                # The first attempt's command needs it: one query instead of two.
                undefer(Deployment.resolved_template),
            ],
        )
        if d is None or d.status != CREATE_IN_PROGRESS or d.attempts or d.placement:
            return  # already placed (a redelivery) or deleted meanwhile
        d.task = "CLOUD_PROVIDER_RANKER"
        self.touch(d)
        if self.placement is None:
            self.set_status(s, d, CREATE_FAILED, "no placement service is configured")
            return
        d.retry_at = None
        try:
            placement = self.placement.place(
                _proto_requirements(d.requirements), d.uuid, owner_identity(d)
            )
        except PlacementError as exc:
            tries = 1 + (
                s.scalar(
                    sa.select(sa.func.count())
                    .select_from(DeploymentEvent)
                    .where(
                        DeploymentEvent.deployment_uuid == d.uuid,
                        DeploymentEvent.kind == "placement.error",
                    )
                )
                or 0
            )
            self.record(s, d, "placement.error", f"try {tries}: {exc}")
            retry_at = now() + timedelta(seconds=self.settings.placement_retry_s)
            if (
                exc.transient
                and tries < self.settings.placement_max_tries
                and retry_at < aware(d.deadline_at)
            ):
                d.retry_at = retry_at  # the sweeper sends the place command again then
                return
            self.set_status(s, d, CREATE_FAILED, f"Placement failed after {tries} tries: {exc}")
            return
        d.placement = placement
        self.record(s, d, "placement", placement.get("summary") or "providers ranked")
        if not ranked_candidates(placement):
            summary = placement.get("summary") or "no candidate"
            self.set_status(
                s, d, CREATE_FAILED, f"No cloud provider can host the deployment ({summary})"
            )
            return
        self.start_attempt(s, d, 0)

    def start_attempt(self, s: Session, d: Deployment, index: int) -> None:
        if d.requirements.get("site_groups"):
            self._start_site_groups(s, d)
            return
        cand = ranked_candidates(d.placement)[index]
        t = now()
        site = site_of(cand)
        attempt = Attempt(
            deployment_uuid=d.uuid,
            number=index + 1,
            infrastructure_id=str(uuidlib.uuid4()),
            site_id=site["id"],
            service_id=site.get("service_id", ""),
            site=site,
            started_at=t,
            deadline_at=t + self.minutes(d.provider_timeout_mins),
            state="RUNNING",
            infra_state="active",
        )
        d.attempts.append(attempt)
        d.task = "DEPLOYER"
        self.touch(d)
        for r in d.resources:
            r.state, r.updated_at = "CREATING", t
        self.record(
            s, d, "attempt.started", f"attempt {attempt.number} on {site['id']}", site["id"]
        )
        command = {
            "infrastructure_id": attempt.infrastructure_id,
            "deployment_id": d.uuid,
            "site": site,
            "tosca": customise_tosca(d.resolved_template, cand, d.requirements),
            "owner": {"subject": d.owner_subject, "issuer": d.owner_issuer},
        }
        if is_hybrid(d):
            try:
                command["user_data_extra"] = self._prepare_overlay(s, d, attempt)
            except PlanError as exc:
                attempt.state, attempt.finished_at, attempt.infra_state = "FAILED", t, "deleted"
                attempt.error = str(exc)
                for r in d.resources:
                    r.state, r.updated_at = "ERROR", t
                self.set_status(s, d, CREATE_FAILED, f"Hybrid template: {exc}", site["id"])
                return
            except VRouterError as exc:
                # Nothing was sent to the im yet; the next provider (if any) gets a new try.
                self.attempt_failed(s, d, attempt, str(exc))
                return
        self.bus.send(s, "im", "im.infrastructure.create", command)

    def _start_site_groups(self, s: Session, d: Deployment) -> None:
        """A template spread over several sites (site_groups.py): its one attempt makes one
        infrastructure per site, all at once, each with its part of the template."""
        groups = d.requirements["site_groups"]
        ranked = ranked_candidates(d.placement)
        chosen = []
        for g in groups:
            cand = next((c for c in ranked if c["siteId"] == g["site"]), None)
            if cand is None:
                why = "; ".join(
                    x["message"]
                    for c in (d.placement or {}).get("candidates", [])
                    if c.get("siteId") == g["site"]
                    for x in c.get("discarded", [])
                )
                reason = f"Site {g['site']} cannot host its part of the deployment"
                self.set_status(s, d, CREATE_FAILED, f"{reason} ({why or 'no service found'})")
                return
            chosen.append((g, cand))
        t = now()
        d.task = "DEPLOYER"
        self.touch(d)
        attempts = []
        for number, (g, cand) in enumerate(chosen, start=1):
            site = site_of(cand)
            a = Attempt(
                deployment_uuid=d.uuid,
                number=number,
                infrastructure_id=str(uuidlib.uuid4()),
                site_id=site["id"],
                service_id=site.get("service_id", ""),
                site=site,
                started_at=t,
                deadline_at=t + self.minutes(d.provider_timeout_mins),
                state="RUNNING",
                infra_state="active",
            )
            d.attempts.append(a)
            attempts.append((a, g, cand))
            nodes = ", ".join(g["nodes"])
            self.record(
                s, d, "attempt.started", f"attempt {number} on {site['id']}: {nodes}", a.site_id
            )
        for r in d.resources:
            r.state, r.updated_at = "CREATING", t
        extra = None
        if is_hybrid(d):
            try:  # one overlay for every site's routers, kept on the first site's attempt
                extra = self._prepare_overlay(s, d, attempts[0][0])
            except (PlanError, VRouterError) as exc:
                self.attempt_failed(s, d, attempts[0][0], f"vRouter overlay: {exc}")
                return
        for a, g, cand in attempts:
            part = d.requirements | {
                "compute_nodes": [n for n in d.requirements["compute_nodes"] if n in g["nodes"]]
            }
            command = {
                "infrastructure_id": a.infrastructure_id,
                "deployment_id": d.uuid,
                "site": a.site,
                "tosca": customise_tosca(group_tosca(d.resolved_template, g["nodes"]), cand, part),
                "owner": {"subject": d.owner_subject, "issuer": d.owner_issuer},
            }
            if extra:
                command["user_data_extra"] = extra
            self.bus.send(s, "im", "im.infrastructure.create", command)

    def _abandon_site_groups(self, s: Session, d: Deployment, a: Attempt) -> None:
        """One site of a multi-site deployment failed: the others go too (no fail-over: the
        template named its sites)."""
        t = now()
        for x in d.attempts:
            if x.state == "RUNNING":
                x.state, x.finished_at = "ABORTED", t
            if d.keep_last_attempt:
                x.infra_state = "kept"
            else:
                self.delete_infrastructure(s, d, x)
        for r in d.resources:
            r.state, r.updated_at = "ERROR", t
        sites = ", ".join(x.site_id for x in d.attempts)
        self.set_status(
            s,
            d,
            CREATE_FAILED,
            f"Error deploying on {a.site_id}: {a.error} (the deployment spans {sites}; "
            "every site's part was removed)",
            a.site_id,
        )

    def _site_group_configured(
        self, s: Session, d: Deployment, a: Attempt, data: dict[str, Any]
    ) -> None:
        t = now()
        a.state, a.finished_at = "SUCCEEDED", t
        self.touch(d)
        group = d.requirements["site_groups"][a.number - 1]
        outputs = redact(data.get("outputs") or {}, d.secret_values or [])
        d.outputs = merge_outputs(d.outputs or {}, outputs)
        _apply_vms(d, data.get("vms") or [], t, nodes=set(group["nodes"]))
        self.record(s, d, "attempt.succeeded", f"attempt {a.number} configured", a.site_id)
        if any(x.state != "SUCCEEDED" for x in d.attempts):
            return
        first = min(d.attempts, key=lambda x: x.number)
        d.physical_id = first.infrastructure_id
        d.cloud_provider_name = first.site_id
        d.cloud_provider_endpoint = endpoint_json(first)
        if first.vrouter:
            _apply_overlay(d, first.vrouter)
        self.set_status(s, d, CREATE_COMPLETE, None, first.site_id)

    # ------------------------------------------------------------------ hybrid (vRouter)

    def _prepare_overlay(self, s: Session, d: Deployment, a: Attempt) -> str:
        """Overlay + sites for this attempt's routers; returns the im's user_data_extra.

        The overlay's ids go on the attempt in this step's transaction (with the im create
        command), so a restarted replica knows what to remove. Should the transaction roll
        back after the vrouter said yes, the overlay is deleted again (see _compensate).
        """
        plan = plan_overlay(d.resolved_template, type_chains(d))
        if plan is None:
            raise PlanError("no vRouter nodes")
        if self.vrouter is None or not self.vrouter.can_sign:
            raise VRouterError(
                "the orchestrator has no vrouter client configured (identity_private_key)"
            )
        owner = owner_identity(d)
        record = self.vrouter.create_overlay(
            owner, f"deployment-{d.uuid}-attempt-{a.number}", plan, d.user_group
        )
        self._compensate(s, owner, record["overlay_id"])
        a.vrouter = record
        by_host = {
            site["host"]: self.vrouter.user_data(owner, record["overlay_id"], site["site_id"])
            for site in record["sites"].values()
        }
        self.record(
            s,
            d,
            "vrouter.overlay_created",
            f"overlay {record['overlay_id']} for attempt {a.number}: "
            + ", ".join(f"{n} ({x['role']} {x['subnet']})" for n, x in record["sites"].items()),
            a.site_id,
        )
        return router_script(by_host)

    def _compensate(self, s: Session, owner: Identity, overlay_id: str) -> None:
        made = s.info.setdefault("vrouter_made", [])
        if not s.info.get("vrouter_listening"):
            s.info["vrouter_listening"] = True

            def rolled_back(session: Session) -> None:
                for who, oid in session.info.pop("vrouter_made", []):
                    try:
                        self.vrouter.delete_overlay(who, oid)  # type: ignore[union-attr]
                    except VRouterError as exc:
                        log.warning("could not delete overlay %s after a rollback: %s", oid, exc)

            def committed(session: Session) -> None:
                session.info.pop("vrouter_made", None)

            sa.event.listen(s, "after_rollback", rolled_back)
            sa.event.listen(s, "after_commit", committed)
        made.append((owner, overlay_id))

    def remove_overlay(self, s: Session, d: Deployment, a: Attempt) -> None:
        """Delete the attempt's overlay (idempotent; retried by a later delete on failure)."""
        if not a.vrouter or a.vrouter.get("state") == "deleted":
            return
        overlay_id = a.vrouter["overlay_id"]
        try:
            if self.vrouter is None:
                raise VRouterError("the orchestrator has no vrouter client configured")
            self.vrouter.delete_overlay(owner_identity(d), overlay_id)
        except VRouterError as exc:
            a.vrouter = a.vrouter | {"state": "orphaned", "error": str(exc)}
            self.record(s, d, "vrouter.cleanup_failed", f"overlay {overlay_id}: {exc}", a.site_id)
            return
        a.vrouter = a.vrouter | {"state": "deleted"}
        self.record(s, d, "vrouter.overlay_deleted", f"overlay {overlay_id} deleted", a.site_id)

    def attempt_failed(
        self, s: Session, d: Deployment, a: Attempt, message: str, *, timed_out: bool = False
    ) -> None:
        t = now()
        a.state = "TIMED_OUT" if timed_out else "FAILED"
        a.error = redact_text(message, d.secret_values or [])
        a.finished_at = t
        phase = "create" if not timed_out else "provider-timeout"
        d.status_reasons = [
            *d.status_reasons,
            {
                "provider": a.site_id,
                "serviceId": a.service_id,
                "attempt": a.number,
                "phase": phase,
                "message": a.error,
            },
        ]
        self.touch(d)
        ranked = ranked_candidates(d.placement)
        limit = d.max_providers_retry or len(ranked)
        last = a.number >= min(limit, len(ranked)) or aware(d.deadline_at) <= t
        kind = "attempt.timed_out" if timed_out else "attempt.failed"
        self.record(s, d, kind, message, a.site_id)
        # For the ranker's per-site success rate: this provider failed this deployment, even
        # though the deployment itself goes on elsewhere. `status` is the outcome on this
        # provider (CREATE_FAILED); `deploymentStatus` is where the deployment stands.
        self.bus.emit(
            s,
            "orchestrator.deployment.attempt_failed",
            {
                "uuid": d.uuid,
                "status": CREATE_FAILED,
                "deploymentStatus": d.status,
                "attempt": a.number,
                "cloudProviderName": a.site_id,
                "siteId": a.site_id,
                "serviceId": a.service_id,
                "reason": "provider-timeout" if timed_out else "error",
            },
            subject=d.uuid,
        )
        if d.requirements.get("site_groups"):
            self._abandon_site_groups(s, d, a)
            return
        if last and d.keep_last_attempt:
            a.infra_state = "kept"
            self.record(s, d, "attempt.kept", "keepLastAttempt: resources left in place", a.site_id)
        else:
            self.delete_infrastructure(s, d, a)
        if not last:
            self.start_attempt(s, d, a.number)
            return
        for r in d.resources:
            r.state, r.updated_at = "ERROR", t
        tried = "; ".join(f"{x['provider']}: {x['message']}" for x in d.status_reasons)
        self.set_status(
            s, d, CREATE_FAILED, f"Error deploying on every provider tried ({tried})", a.site_id
        )

    def delete_infrastructure(self, s: Session, d: Deployment, a: Attempt) -> None:
        self.remove_overlay(s, d, a)
        if a.infra_state in ("deleting", "deleted"):
            return
        a.infra_state = "deleting"
        self.record(
            s, d, "cleanup.requested", f"deleting infrastructure of attempt {a.number}", a.site_id
        )
        self.bus.send(
            s,
            "im",
            "im.infrastructure.delete",
            {"infrastructure_id": a.infrastructure_id, "deployment_id": d.uuid},
        )

    # ------------------------------------------------------------------ im events

    def on_im_event(self, s: Session, event_type: str, data: dict[str, Any]) -> None:
        infra_id = data.get("infrastructure_id")
        if not infra_id:
            return
        if event_type == "im.infrastructure.progress":
            self._progress(s, str(infra_id), data)
            return
        # One round trip for the attempt, its deployment and the collections steps touch.
        owner = sa.select(Attempt.deployment_uuid).where(Attempt.infrastructure_id == infra_id)
        d = (
            s.scalars(
                sa.select(Deployment)
                .where(Deployment.uuid == owner.scalar_subquery())
                .options(joinedload(Deployment.attempts), joinedload(Deployment.resources))
            )
            .unique()
            .first()
        )
        a = next((x for x in d.attempts if x.infrastructure_id == infra_id), None) if d else None
        if d is None or a is None:
            return  # not ours, or the deployment was purged
        kind = event_type.rsplit(".", 1)[-1]
        if event_type == "im.vm.state":
            self._vm_state(s, d, data)
        elif event_type == "im.infrastructure.state":
            self._infra_state(s, d, a, data)
        elif kind == "configured":
            self._configured(s, d, a, data)
        elif kind == "failed":
            self._failed(s, d, a, data)
        elif kind == "updated":
            self._updated(s, d, a, data)
        elif kind == "deleted":
            self._deleted(s, d, a)

    def _progress(self, s: Session, infra_id: str, data: dict[str, Any]) -> None:
        """History only, and the commonest im event: one narrow query, no ORM graph. No
        version bump either, so progress never races a real transition."""
        row = s.execute(
            sa.select(
                Attempt.state,
                Attempt.site_id,
                Deployment.uuid,
                Deployment.status,
                Deployment.secret_values,
            )
            .join(Deployment, Deployment.uuid == Attempt.deployment_uuid)
            .where(Attempt.infrastructure_id == infra_id)
        ).first()
        if row is None or row.state != "RUNNING":
            return  # not ours, purged, or already settled
        msg = str(data.get("message") or data.get("state") or "progress")
        s.add(
            DeploymentEvent(
                deployment_uuid=row.uuid,
                at=now(),
                kind="provider.progress",
                status=row.status,
                provider=row.site_id,
                message=redact_text(msg, row.secret_values or []),
            )
        )

    def _configured(self, s: Session, d: Deployment, a: Attempt, data: dict[str, Any]) -> None:
        if a.state == "SUCCEEDED":
            # Already applied; from an infrastructure we had lost track of, it is news.
            self._regained(s, d, a, "configured")
            return
        if a.state != "RUNNING" or d.status != CREATE_IN_PROGRESS:
            # Too late (timed out, aborted by a delete): it must not linger at the site.
            self.touch(d)
            if a.infra_state == "kept":
                return
            if a.infra_state == "deleted":
                a.infra_state = "active"  # the im deleted before it finished creating
            self.delete_infrastructure(s, d, a)
            return
        if d.requirements.get("site_groups"):
            self._site_group_configured(s, d, a, data)
            return
        t = now()
        a.state, a.finished_at = "SUCCEEDED", t
        d.physical_id = a.infrastructure_id
        d.cloud_provider_name = a.site_id
        d.cloud_provider_endpoint = endpoint_json(a)
        d.outputs = redact(data.get("outputs") or {}, d.secret_values or [])
        _apply_vms(d, data.get("vms") or [], t)
        if a.vrouter:
            _apply_overlay(d, a.vrouter)
        self.record(s, d, "attempt.succeeded", f"attempt {a.number} configured", a.site_id)
        self.set_status(s, d, CREATE_COMPLETE, None, a.site_id)

    def _failed(self, s: Session, d: Deployment, a: Attempt, data: dict[str, Any]) -> None:
        error = str(data.get("error") or "the infrastructure manager reported a failure")
        if a.state == "RUNNING" and d.status == CREATE_IN_PROGRESS:
            self.attempt_failed(s, d, a, error)
        elif a.state == "SUCCEEDED" and d.status == UPDATE_IN_PROGRESS:
            d.pending_template = None
            self.set_status(
                s, d, UPDATE_FAILED, f"Update failed on {a.site_id}: {error}", a.site_id
            )
        elif a.state == "SUCCEEDED" and d.status == DELETE_IN_PROGRESS:
            self.set_status(
                s, d, DELETE_FAILED, f"Delete failed on {a.site_id}: {error}", a.site_id
            )

    def _updated(self, s: Session, d: Deployment, a: Attempt, data: dict[str, Any]) -> None:
        if d.status != UPDATE_IN_PROGRESS or a.state != "SUCCEEDED" or not d.pending_template:
            return
        t = now()
        pending = json.loads(d.pending_template)
        d.template = pending["text"]
        d.resolved_template = pending["resolved"]
        d.secret_values = pending["secrets"]
        d.requirements = pending["requirements"]
        d.pending_template = None
        _rebuild_resources(d, pending["nodes"], t)
        if data.get("outputs") is not None:
            d.outputs = redact(data.get("outputs") or {}, d.secret_values)
        _apply_vms(d, data.get("vms") or [], t)
        self.set_status(s, d, UPDATE_COMPLETE, None, a.site_id)

    def _deleted(self, s: Session, d: Deployment, a: Attempt) -> None:
        if a.infra_state == "deleted":
            return
        if a.state == "SUCCEEDED" and a.infra_state in ("active", "unknown"):
            # Nobody here asked for it: the infrastructure was removed behind our back.
            self._lost_track(s, d, a, "deleted", "no longer exists (deleted outside hdc)")
            return
        a.infra_state = "deleted"
        self.touch(d)
        self.record(
            s, d, "cleanup.done", f"infrastructure of attempt {a.number} deleted", a.site_id
        )
        if d.status == DELETE_IN_PROGRESS and all(x.infra_state == "deleted" for x in d.attempts):
            self.finish_delete_unless_overlays_left(s, d)

    # ------------------------------------------------------------------ UNKNOWN

    def _infra_state(self, s: Session, d: Deployment, a: Attempt, data: dict[str, Any]) -> None:
        """`im.infrastructure.state`: what the im currently knows of a running infrastructure
        (its periodic look at the site). Attempts still being created have their own
        timeouts, and ones being deleted are going anyway: only live ones matter here."""
        if a.state != "SUCCEEDED" or a.infra_state not in ("active", "unknown"):
            return
        state = str(data.get("state") or "").lower()
        detail = str(data.get("message") or data.get("error") or "").strip()
        if state == "unknown":
            why = "state cannot be determined by the infrastructure manager"
            self._lost_track(s, d, a, "unknown", f"{why}: {detail}" if detail else why)
        elif state == "deleted":
            self._lost_track(s, d, a, "deleted", "no longer exists (the im reports it deleted)")
        elif state in KNOWN_INFRA_STATES:
            self._regained(s, d, a, state)

    def _lost_track(
        self, s: Session, d: Deployment, a: Attempt, infra_state: str, why: str
    ) -> None:
        """A live infrastructure is unknown or gone: the deployment's state cannot be
        determined, so it becomes UNKNOWN (INDIGO's meaning). DELETE still works from there;
        an unknown infrastructure that the im sees again brings the old status back
        (`_regained`), a vanished one stays UNKNOWN until the deployment is deleted."""
        if a.infra_state == infra_state:
            return
        a.infra_state = infra_state
        self.touch(d)
        reason = f"Infrastructure {a.infrastructure_id} on {a.site_id} {why}"
        self.record(s, d, f"infrastructure.{infra_state}", reason, a.site_id)
        if infra_state == "deleted":
            live = [x for x in d.attempts if x.state == "SUCCEEDED" and x.infra_state != "deleted"]
            if not live:
                t = now()
                for r in d.resources:
                    r.state, r.updated_at = "DELETED", t
        if d.status == UPDATE_IN_PROGRESS and infra_state == "deleted":
            d.pending_template = None  # nothing left to update
        elif d.status not in SETTLED:
            return  # in flight (its timeouts apply), already UNKNOWN, or being deleted
        self.set_status(s, d, UNKNOWN, reason, a.site_id)

    def _regained(self, s: Session, d: Deployment, a: Attempt, state: str) -> None:
        if a.infra_state != "unknown":
            return
        a.infra_state = "active"
        self.touch(d)
        self.record(
            s,
            d,
            "infrastructure.known",
            f"Infrastructure {a.infrastructure_id} on {a.site_id} is {state} again",
            a.site_id,
        )
        lost = [x for x in d.attempts if x.state == "SUCCEEDED" and x.infra_state != "active"]
        if d.status == UNKNOWN and not lost:
            self.set_status(s, d, self._status_before_unknown(s, d), None, a.site_id)

    def _status_before_unknown(self, s: Session, d: Deployment) -> str:
        """The settled status the deployment had before UNKNOWN (from its history)."""
        previous = s.scalar(
            sa.select(DeploymentEvent.status)
            .where(
                DeploymentEvent.deployment_uuid == d.uuid,
                DeploymentEvent.kind == "status",
                DeploymentEvent.status.in_(SETTLED),
            )
            .order_by(DeploymentEvent.id.desc())
            .limit(1)
        )
        return previous or CREATE_COMPLETE

    def _vm_state(self, s: Session, d: Deployment, data: dict[str, Any]) -> None:
        vm_id, state = data.get("vm_id"), str(data.get("state") or "")
        for r in d.resources:
            if r.physical_id and r.physical_id == vm_id:
                r.state = VM_STATES.get(state, r.state)
                r.updated_at = now()
                self.touch(d)
                self.record(s, d, "resource.state", f"{r.node_name} {vm_id}: {state}")

    # ------------------------------------------------------------------ delete / update

    def request_delete(self, s: Session, d: Deployment, force: bool) -> bool:
        """Start deleting; True when the deployment is already gone."""
        if d.status == DELETE_IN_PROGRESS and not force:
            raise Conflict(
                f"deployment {d.uuid} is already being deleted; PATCH its status to "
                "DELETE_FAILED to reset a stuck delete, or DELETE with force=true"
            )
        t = now()
        d.operation = "delete"
        d.pending_template = None
        for a in d.attempts:
            if a.state == "RUNNING":
                a.state, a.finished_at = "ABORTED", t
            if a.infra_state == "deleting" and d.status == DELETE_FAILED:
                a.infra_state = "active"  # retry a delete the im never confirmed
            self.delete_infrastructure(s, d, a)
        for r in d.resources:
            r.state, r.updated_at = "DELETING", t
        if force:
            self.finish_delete(s, d, forced=True)
            return True
        if all(a.infra_state == "deleted" for a in d.attempts):
            # Nothing left at the sites: gone now, or DELETE_FAILED if an overlay stays.
            return self.finish_delete_unless_overlays_left(s, d)
        d.deadline_at = t + self.minutes(self.settings.delete_timeout_mins)
        d.task = "DEPLOYER"
        self.set_status(s, d, DELETE_IN_PROGRESS)
        return False

    def finish_delete_unless_overlays_left(self, s: Session, d: Deployment) -> bool:
        """The last infrastructure is gone; the deployment goes too once its overlays have.

        A vrouter that could not be reached leaves DELETE_FAILED (so the overlay, and the
        record of it, are not lost); deleting again retries, force=true purges regardless.
        """
        for a in d.attempts:
            self.remove_overlay(s, d, a)
        left = overlays_left(d)
        if left:
            errors = "; ".join(f"{a.vrouter['overlay_id']}: {a.vrouter.get('error')}" for a in left)
            self.set_status(s, d, DELETE_FAILED, f"vRouter overlay could not be removed ({errors})")
            return False
        self.finish_delete(s, d)
        return True

    def finish_delete(self, s: Session, d: Deployment, forced: bool = False) -> None:
        reason = "purged (force=true)" if forced else None
        self.set_status(s, d, DELETE_COMPLETE, reason, d.cloud_provider_name)
        s.flush()
        s.delete(d)

    def reset_delete(self, s: Session, d: Deployment) -> None:
        if d.status != DELETE_IN_PROGRESS:
            raise Conflict(
                f"only a deployment in DELETE_IN_PROGRESS can be reset to DELETE_FAILED; "
                f"this one is {d.status}"
            )
        self.set_status(s, d, DELETE_FAILED, "delete reset by the owner")

    def request_update(
        self, s: Session, d: Deployment, validated: ValidatedTemplate, body: dict[str, Any]
    ) -> None:
        if d.status not in (CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_FAILED):
            raise Conflict(f"cannot update a deployment in {d.status} state")
        if d.requirements.get("site_groups"):
            raise Conflict(
                "a deployment spread over several sites cannot be updated; create a new one"
            )
        current = next((a for a in d.attempts if a.state == "SUCCEEDED"), None)
        if current is None:
            raise Conflict("the deployment has no running infrastructure to update")
        if current.vrouter:
            plan = plan_overlay(
                validated.resolved_text, {n.name: n.types for n in validated.nodes.values()}
            )
            wanted = {r.node: r.host for r in plan.routers} if plan else {}
            have = {node: x["host"] for node, x in current.vrouter["sites"].items()}
            if wanted != have:
                raise Conflict(
                    "an update cannot add, remove or move vRouter nodes (their routers are "
                    "enrolled in the deployment's overlay); create a new deployment instead"
                )
        new_requirements = validated.requirements | {"compute_nodes": _compute_nodes(validated)}
        d.pending_template = json.dumps(
            {
                "text": validated.text,
                "resolved": validated.resolved_text,
                "secrets": validated.secret_values,
                "requirements": new_requirements,
                "nodes": [_node_dict(n) for n in validated.nodes.values()],
            }
        )
        if body.get("callback"):
            d.callback = body["callback"]
        timeout = body.get("timeoutMins") or d.timeout_mins
        d.operation = "update"
        d.task = "DEPLOYER"
        d.deadline_at = now() + self.minutes(timeout)
        self.set_status(s, d, UPDATE_IN_PROGRESS)
        cand = next(
            (c for c in ranked_candidates(d.placement) if c["siteId"] == current.site_id), {}
        )
        self.bus.send(
            s,
            "im",
            "im.infrastructure.update",
            {
                "infrastructure_id": current.infrastructure_id,
                "deployment_id": d.uuid,
                "tosca": customise_tosca(validated.resolved_text, cand, new_requirements),
            },
        )

    def resource_action(self, s: Session, d: Deployment, r: Resource, action: str) -> None:
        if d.status not in (CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_FAILED):
            raise Conflict(f"cannot {action} a resource while the deployment is {d.status}")
        current = next((a for a in d.attempts if a.state == "SUCCEEDED"), None)
        groups = d.requirements.get("site_groups")
        if groups:  # the infrastructure on the resource's own site
            group = group_of(groups, r.node_name)
            number = groups.index(group) + 1 if group else 0
            current = next((a for a in d.attempts if a.number == number), None)
        if current is None or not r.physical_id:
            raise Conflict(f"resource {r.uuid} ({r.node_name}) has no virtual machine to {action}")
        r.state = "STARTING" if action == "start" else "STOPPING"
        r.updated_at = now()
        self.touch(d)
        self.record(s, d, f"resource.{action}", f"{action} {r.node_name} {r.physical_id}")
        self.bus.send(
            s,
            "im",
            f"im.vm.{action}",
            {
                "infrastructure_id": current.infrastructure_id,
                "vm_id": r.physical_id,
                "deployment_id": d.uuid,
            },
        )

    # ------------------------------------------------------------------ timeouts

    def sweep_one(self, s: Session, d: Deployment) -> None:
        """Apply whatever timeout has passed for this (locked) deployment."""
        t = now()
        deadline = aware(d.deadline_at)
        if d.status == CREATE_IN_PROGRESS:
            retry = aware(d.retry_at)
            if retry is not None and retry <= t and (deadline is None or deadline > t):
                d.retry_at = None
                self.touch(d)
                self.bus.send(s, "orchestrator", PLACE_COMMAND, {"uuid": d.uuid})
                return
            running = next((a for a in d.attempts if a.state == "RUNNING"), None)
            if deadline is not None and deadline <= t:
                if running is not None:
                    self.attempt_failed(
                        s,
                        d,
                        running,
                        f"overall timeout of {d.timeout_mins} min reached",
                        timed_out=True,
                    )
                    if d.status != CREATE_IN_PROGRESS:
                        d.status_reason = f"Deployment timed out after {d.timeout_mins} min; " + (
                            d.status_reason or ""
                        )
                        return
                self.set_status(
                    s, d, CREATE_FAILED, f"Deployment timed out after {d.timeout_mins} min"
                )
                return
            if running is not None and aware(running.deadline_at) <= t:
                self.attempt_failed(
                    s,
                    d,
                    running,
                    f"provider timeout: {running.site_id} did not finish within {d.provider_timeout_mins} min",
                    timed_out=True,
                )
        elif d.status == UPDATE_IN_PROGRESS and deadline is not None and deadline <= t:
            d.pending_template = None
            self.set_status(s, d, UPDATE_FAILED, f"Update timed out after {d.timeout_mins} min")
        elif d.status == DELETE_IN_PROGRESS and deadline is not None and deadline <= t:
            self.set_status(
                s,
                d,
                DELETE_FAILED,
                f"Delete not confirmed by the infrastructure manager within {self.settings.delete_timeout_mins} min",
            )

    def due_filter(self) -> Any:
        t = now()
        attempt_due = sa.exists().where(
            Attempt.deployment_uuid == Deployment.uuid,
            Attempt.state == "RUNNING",
            Attempt.deadline_at <= t,
        )
        return sa.and_(
            Deployment.status.in_(IN_PROGRESS),
            sa.or_(Deployment.deadline_at <= t, Deployment.retry_at <= t, attempt_due),
        )


# ---------------------------------------------------------------------- helpers


def type_chains(d: Deployment) -> dict[str, list[str]]:
    return {r.node_name: list(r.type_chain or [r.node_type]) for r in d.resources}


def is_hybrid(d: Deployment) -> bool:
    names = (*HUB_TYPES, *SITE_TYPES)
    return any(t in names for chain in type_chains(d).values() for t in chain)


def overlays_left(d: Deployment) -> list[Attempt]:
    """Attempts whose overlay is still in the vrouter (its removal failed)."""
    return [a for a in d.attempts if a.vrouter and a.vrouter.get("state") != "deleted"]


def owner_identity(d: Deployment) -> Identity:
    """Who the orchestrator acts for in the ranker and the vrouter: the owner (and group)."""
    groups = (d.user_group,) if d.user_group else ()
    return Identity(subject=d.owner_subject, issuer=d.owner_issuer, groups=groups)


def _apply_overlay(d: Deployment, record: dict[str, Any]) -> None:
    """The overlay id in outputs; each router host's site/subnet in its VM's extra info."""
    d.outputs = (
        (d.outputs or {})
        | overlay_outputs(d.resolved_template, record)
        | {"vrouter_overlay_id": record["overlay_id"]}
    )
    by_host = {x["host"]: (node, x) for node, x in record["sites"].items()}
    for r in d.resources:
        hit = by_host.get(r.node_name)
        if hit is None:
            continue
        node, x = hit
        r.meta = (r.meta or {}) | {
            "vrouter_overlay_id": record["overlay_id"],
            "vrouter_router": node,
            "vrouter_role": x["role"],
            "vrouter_site_id": x["site_id"],
            "vrouter_subnet": x["subnet"],
        }


def _compute_nodes(v: ValidatedTemplate) -> list[str]:
    return [n.name for n in v.nodes.values() if n.compute]


def _proto_requirements(req: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in req.items() if k != "compute_nodes"}


def _node_dict(n: Any) -> dict[str, Any]:
    return {
        "name": n.name,
        "type": n.type,
        "count": n.count,
        "requires": n.requires,
        "types": n.types,
    }


def _insert_new(s: Session, d: Deployment, event: DeploymentEvent) -> None:
    """A new deployment, its resources and its first event as plain INSERTs.

    The unit of work's bookkeeping for a graph of new objects (dependency sort, identity
    map, relationship sync) cost more CPU than all the rest of a POST. `d` and its
    resources stay transient: the response is rendered from them, and the workflow loads
    the rows afresh in its own sessions.
    """
    d.version = 1  # what the mapper's version counter starts at
    conn = s.connection()
    conn.execute(_INSERT_DEPLOYMENT, [_set_columns(d)])
    if d.resources:
        conn.execute(
            _INSERT_RESOURCE,
            [_set_columns(r) | {"deployment_uuid": d.uuid} for r in d.resources],
        )
    conn.execute(_INSERT_EVENT, [_set_columns(event)])


_INSERT_DEPLOYMENT = Deployment.__table__.insert()
_INSERT_RESOURCE = Resource.__table__.insert()
_INSERT_EVENT = DeploymentEvent.__table__.insert()


def _set_columns(obj: Any) -> dict[str, Any]:
    """The column values set on a transient object; unset ones get the column defaults."""
    state = sa.inspect(obj)
    return {c.key: state.dict[c.key] for c in state.mapper.column_attrs if c.key in state.dict}


def _build_resources(d: Deployment, v: ValidatedTemplate, t: datetime) -> None:
    _rebuild_resources(d, [_node_dict(n) for n in v.nodes.values()], t)


def _rebuild_resources(d: Deployment, nodes: list[dict[str, Any]], t: datetime) -> None:
    """One resource per node instance (scalable.count), keeping existing ones by node/index."""
    existing: dict[str, list[Resource]] = {}
    for r in d.resources:
        existing.setdefault(r.node_name, []).append(r)
    wanted: dict[str, list[Resource]] = {}
    keep: list[Resource] = []
    for n in nodes:
        have = existing.get(n["name"], [])
        rs = have[: n["count"]]
        for _ in range(n["count"] - len(rs)):
            rs.append(
                Resource(
                    uuid=str(uuidlib.uuid4()),
                    created_at=t,
                    updated_at=t,
                    node_name=n["name"],
                    node_type=n["type"],
                    type_chain=n.get("types") or [n["type"]],
                    state="INITIAL",
                    required_by=[],
                    position=0,
                )
            )
        for r in rs:
            r.node_type, r.type_chain = n["type"], n.get("types") or [n["type"]]
        wanted[n["name"]] = rs
        keep.extend(rs)
    for n in nodes:
        for target in n["requires"]:
            for r in wanted.get(target, []):
                r.required_by = sorted({*r.required_by, *(x.uuid for x in wanted[n["name"]])})
    for i, r in enumerate(keep):
        r.position = i
    d.resources = keep


def _apply_vms(
    d: Deployment, vms: list[dict[str, Any]], t: datetime, nodes: set[str] | None = None
) -> None:
    """The im's VMs onto the resources (of `nodes` only, when one site reported them)."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for vm in vms:
        by_node.setdefault(str(vm.get("node") or ""), []).append(vm)
    for r in d.resources:
        if nodes is not None and r.node_name not in nodes:
            continue
        queue = by_node.get(r.node_name)
        if queue:
            vm = queue.pop(0)
            r.physical_id = str(vm.get("id") or "") or None
            r.state = VM_STATES.get(str(vm.get("state") or "configured"), "STARTED")
            r.meta = {
                k: vm[k] for k in ("name", "public_ip", "private_ip", "ports", "state") if vm.get(k)
            } or None
        else:
            r.state = "STARTED"
        r.updated_at = t


def customise_tosca(resolved: str, candidate: dict[str, Any], req: dict[str, Any]) -> str:
    """Pin what placement chose (flavor, image) on the compute nodes, as INDIGO does."""
    flavor = (candidate.get("flavor") or {}).get("name")
    image = candidate.get("imageId")
    nodes = req.get("compute_nodes") or []
    if not (flavor or image) or not nodes:
        return resolved
    tpl = yaml.load(resolved, Loader=_YAML)
    templates = tpl["topology_template"]["node_templates"]
    for name in nodes:
        if not str(templates[name].get("type", "")).endswith("Compute"):
            continue  # container runtimes have no flavor or image to pin
        caps = templates[name].setdefault("capabilities", {}) or {}
        templates[name]["capabilities"] = caps
        if flavor:
            host = caps.setdefault("host", {}) or {}
            caps["host"] = host
            props = host.setdefault("properties", {}) or {}
            host["properties"] = props
            props.setdefault("instance_type", flavor)
        if image:
            os_ = caps.setdefault("os", {}) or {}
            caps["os"] = os_
            props = os_.setdefault("properties", {}) or {}
            os_["properties"] = props
            # The node asked for an image (by name, or by OS/CUDA, which placement matched):
            # it boots the one placement chose. Nodes that asked for none get the site's.
            if any(props.get(k) for k in ("image", "type", "distribution", "version")):
                props["image"] = image
    return yaml.dump(tpl, Dumper=_DUMPER, sort_keys=False)
