"""The vrouter's own schema: overlays, their sites (hub included), enrolment tokens, tunnels."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from hdc_common.db import Versioned
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Overlay(Versioned, Base):
    __tablename__ = "vr_overlays"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    cidr: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    site_prefix: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    topology: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    listen_port: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    keepalive_s: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    owner_subject: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    owner_issuer: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    owner_group: Mapped[str | None] = mapped_column(sa.String(255))
    # Where the next allocation starts looking: O(1) allocation until the pool wraps.
    next_index: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    # Bumped on every change any router must apply; agents refetch when it moves.
    config_version: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)

    sites: Mapped[list[Site]] = relationship(
        back_populates="overlay", cascade="all, delete-orphan", passive_deletes=True
    )


class Site(Base):
    __tablename__ = "vr_sites"
    __table_args__ = (
        # The last line of defence against overlapping allocations: two sites can never
        # hold the same block of one overlay, whatever the isolation level.
        sa.UniqueConstraint("overlay_id", "block_index", name="uq_vr_sites_block"),
        sa.UniqueConstraint("overlay_id", "name", name="uq_vr_sites_name"),
        sa.UniqueConstraint("overlay_id", "public_key", name="uq_vr_sites_public_key"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    overlay_id: Mapped[str] = mapped_column(
        sa.ForeignKey("vr_overlays.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(8), nullable=False)  # hub | site
    block_index: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    subnet: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    tunnel_address: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    nat: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    endpoint: Mapped[str | None] = mapped_column(sa.String(300))
    # Where peers last saw this router (from their heartbeats): lets a hub reach a site
    # behind NAT at once, e.g. right after the site rotated its key.
    observed_endpoint: Mapped[str | None] = mapped_column(sa.String(300))
    public_key: Mapped[str | None] = mapped_column(sa.String(64))
    agent_secret_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    rotation_requested: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    key_rotated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    enrolled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The overlay config version the router last reported as applied (drift shows in health).
    applied_config_version: Mapped[int | None] = mapped_column(sa.Integer)
    # Last announced on the bus as online (heartbeats) or offline (the sweeper): events fire
    # only on a change, once, whichever replica sees it.
    online: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)

    overlay: Mapped[Overlay] = relationship(back_populates="sites")
    tunnels: Mapped[list[Tunnel]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    ranges: Mapped[list[PrivateRange]] = relationship(
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
        order_by="PrivateRange.id",
    )

    @property
    def private_ranges(self) -> list[str]:
        return [r.cidr for r in self.ranges]


class PrivateRange(Base):
    """A site's own LAN range routed through the overlay. A table of its own (not a JSON
    column) so the overlap check reads only the ranges that exist, not every site."""

    __tablename__ = "vr_private_ranges"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    overlay_id: Mapped[str] = mapped_column(
        sa.ForeignKey("vr_overlays.id", ondelete="CASCADE"), nullable=False, index=True
    )
    site_id: Mapped[str] = mapped_column(
        sa.ForeignKey("vr_sites.id", ondelete="CASCADE"), nullable=False, index=True
    )
    cidr: Mapped[str] = mapped_column(sa.String(64), nullable=False)


class EnrolmentToken(Base):
    __tablename__ = "vr_enrolment_tokens"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    site_id: Mapped[str] = mapped_column(
        sa.ForeignKey("vr_sites.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class Tunnel(Base):
    """What one router last reported about one of its peers."""

    __tablename__ = "vr_tunnels"

    site_id: Mapped[str] = mapped_column(
        sa.ForeignKey("vr_sites.id", ondelete="CASCADE"), primary_key=True
    )
    peer_public_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    latest_handshake: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    rx_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    tx_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    endpoint: Mapped[str | None] = mapped_column(sa.String(300))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
