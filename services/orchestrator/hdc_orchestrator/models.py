"""The orchestrator's tables. Every workflow step is a row change, so a restart resumes.

`Deployment` carries the optimistic-locking version (also its ETag): two replicas, or a
handler and the timeout sweeper, that both try to move the same deployment cannot both win;
the loser's transaction fails with StaleDataError, rolls back, and its message is retried
against the new state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from hdc_common.db import Versioned
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from hdc_orchestrator.sealing import SealedJSON, SealedText

JSONType = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class Deployment(Versioned, Base):
    __tablename__ = "orch_deployments"

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TS, nullable=False, index=True)
    updated_at: Mapped[datetime] = mapped_column(TS, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(32), nullable=False, index=True)
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    status_reasons: Mapped[list[Any]] = mapped_column(JSONType, nullable=False, default=list)
    task: Mapped[str] = mapped_column(sa.String(40), nullable=False, default="NONE")
    # create | update | delete: what the in-progress status is doing
    operation: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="create")
    owner_subject: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    owner_issuer: Mapped[str] = mapped_column(sa.String(512), nullable=False)
    user_group: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    callback: Mapped[str | None] = mapped_column(sa.Text)
    # Large and sealed: loaded (and decrypted) only when a step needs them.
    template: Mapped[str] = mapped_column(SealedText, nullable=False, deferred=True)
    resolved_template: Mapped[str] = mapped_column(SealedText, nullable=False, deferred=True)
    # Secrets among the parameters are kept only to redact them from what we show.
    secret_values: Mapped[list[str]] = mapped_column(SealedJSON, nullable=False, default=list)
    requirements: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    timeout_mins: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    provider_timeout_mins: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    max_providers_retry: Mapped[int | None] = mapped_column(sa.Integer)
    keep_last_attempt: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    deadline_at: Mapped[datetime | None] = mapped_column(TS, index=True)
    # When to ask the infoprovider/ranker again after they could not be reached.
    retry_at: Mapped[datetime | None] = mapped_column(TS, index=True)
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    physical_id: Mapped[str | None] = mapped_column(sa.String(64))
    cloud_provider_name: Mapped[str | None] = mapped_column(sa.String(255))
    cloud_provider_endpoint: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    pending_template: Mapped[str | None] = mapped_column(SealedText, deferred=True)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="deployment", order_by="Attempt.number", cascade="all, delete-orphan"
    )
    resources: Mapped[list[Resource]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", order_by="Resource.position"
    )

    __table_args__ = (
        sa.UniqueConstraint(
            "owner_issuer", "owner_subject", "idempotency_key", name="uq_orch_idem"
        ),
        # The list's filters, newest first (migration 0003).
        sa.Index("ix_orch_owner_created", "owner_issuer", "owner_subject", "created_at"),
        sa.Index("ix_orch_group_created", "user_group", "created_at"),
    )


class Attempt(Base):
    """One try on one provider: the infrastructure the im was asked to create there."""

    __tablename__ = "orch_attempts"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    deployment_uuid: Mapped[str] = mapped_column(
        sa.ForeignKey("orch_deployments.uuid", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    infrastructure_id: Mapped[str] = mapped_column(sa.String(36), nullable=False, unique=True)
    site_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    service_id: Mapped[str] = mapped_column(sa.String(255), nullable=False, default="")
    site: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    started_at: Mapped[datetime] = mapped_column(TS, nullable=False)
    deadline_at: Mapped[datetime] = mapped_column(TS, nullable=False, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(TS)
    # RUNNING | SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False, index=True)
    # active | kept | deleting | deleted: what exists of it at the site
    infra_state: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="active")
    error: Mapped[str | None] = mapped_column(sa.Text)
    # The vRouter overlay made for this attempt's routers (hybrid templates only):
    # {"overlay_id", "state": active|deleted|orphaned, "sites": {node: {site_id, role, host}}}.
    # Written in the transaction that sends the im create, so a restart knows what to remove.
    vrouter: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    deployment: Mapped[Deployment] = relationship(back_populates="attempts")


class Resource(Base):
    __tablename__ = "orch_resources"

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    deployment_uuid: Mapped[str] = mapped_column(
        sa.ForeignKey("orch_deployments.uuid", ondelete="CASCADE"), nullable=False, index=True
    )
    position: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(TS, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(TS, nullable=False)
    node_name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    node_type: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    # Every type the node type derives from, to answer `?type=` with subtypes.
    type_chain: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    physical_id: Mapped[str | None] = mapped_column(sa.String(255))
    required_by: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    deployment: Mapped[Deployment] = relationship(back_populates="resources")


class DeploymentEvent(Base):
    """Append-only history: every state change and provider attempt."""

    __tablename__ = "orch_events"
    # One deployment's history after an id (log, events, SSE polling).
    __table_args__ = (sa.Index("ix_orch_events_deployment_id", "deployment_uuid", "id"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    deployment_uuid: Mapped[str] = mapped_column(
        sa.ForeignKey("orch_deployments.uuid", ondelete="CASCADE"), nullable=False
    )
    at: Mapped[datetime] = mapped_column(TS, nullable=False)
    kind: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    status: Mapped[str | None] = mapped_column(sa.String(32))
    provider: Mapped[str | None] = mapped_column(sa.String(255))
    message: Mapped[str | None] = mapped_column(sa.Text)


class CallbackDelivery(Base):
    """One callback POST to make (or made): the delivery log. Outlives its deployment."""

    __tablename__ = "orch_callbacks"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    deployment_uuid: Mapped[str] = mapped_column(sa.String(36), nullable=False, index=True)
    owner_subject: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    owner_issuer: Mapped[str] = mapped_column(sa.String(512), nullable=False)
    user_group: Mapped[str | None] = mapped_column(sa.String(255))
    url: Mapped[str] = mapped_column(sa.Text, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(32), nullable=False)  # deployment status sent
    body: Mapped[str] = mapped_column(sa.Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(TS, nullable=False)
    next_at: Mapped[datetime | None] = mapped_column(TS, index=True)  # None = finished
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(TS)
    last_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
