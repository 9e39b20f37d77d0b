"""The im's own schema: infrastructures, their VMs, every cloud resource made, and jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from hdc_common.db import Versioned
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Infrastructure and VM states (the IM's vocabulary).
PENDING, RUNNING, CONFIGURED, UNCONFIGURED = "pending", "running", "configured", "unconfigured"
STOPPED, OFF, FAILED, UNKNOWN, DELETING = "stopped", "off", "failed", "unknown", "deleting"
DELETED = "deleted"  # internal: gone, kept for idempotent deletes and the reconciler
STATES = (PENDING, RUNNING, CONFIGURED, UNCONFIGURED, STOPPED, OFF, FAILED, UNKNOWN, DELETING)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


class Infrastructure(Versioned, Base):
    __tablename__ = "im_infrastructures"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(255), index=True)
    state: Mapped[str] = mapped_column(sa.String(16), default=PENDING)
    # The normalised topology (hdc_im.topology.Topology.to_dict()).
    topology: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    tosca: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    radl: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Which site and driver: {"id", "type", "endpoint", "region"}; credentials sealed apart.
    site: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    credentials: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    deployment_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    user_data_extra: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    contmsg: Mapped[str] = mapped_column(sa.Text, default="")
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    next_vm_index: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow, onupdate=utcnow)


class VM(Versioned, Base):
    __tablename__ = "im_vms"
    __table_args__ = (sa.UniqueConstraint("infrastructure_id", "index"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    infrastructure_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("im_infrastructures.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(sa.Integer)  # the IM's VM id inside its infrastructure
    node: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16), default=PENDING)
    # Idempotency key of the create call (cloud client token / resource name).
    token: Mapped[str] = mapped_column(sa.String(64), unique=True)
    provider_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    public_ip: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    private_ip: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    ports: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    info: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    contmsg: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)


class CloudResource(Base):
    """Anything besides VMs made on a cloud (security groups, key pairs), recorded first."""

    __tablename__ = "im_resources"
    __table_args__ = (sa.UniqueConstraint("infrastructure_id", "kind", "name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    infrastructure_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("im_infrastructures.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(sa.String(32))
    name: Mapped[str] = mapped_column(sa.String(255))
    provider_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    state: Mapped[str] = mapped_column(sa.String(16), default="creating")


class Job(Base):
    """Work on one infrastructure, leased by one worker at a time; resumed if it dies."""

    __tablename__ = "im_jobs"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    infrastructure_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    state: Mapped[str] = mapped_column(sa.String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(sa.DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)
