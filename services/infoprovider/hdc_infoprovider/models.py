"""The registry's tables.

Every record has a freshness (creation time, validity, valid until). A record's freshness is
its part's freshness on its service (`<part>_creation_time`, `<part>_validity_s`,
`<part>_valid_until`: the last report that could read that part), unless the site gave the
record its own, kept in the record's nullable freshness columns. So a report that repeats
what the registry holds rewrites one service row, not hundreds of records.

`digest` is a hash of a record's content (and own freshness): unchanged records are not
written. `uid` is the opaque, stable document id of the CMDB-compatible API (`_id`).
`catalog_version` of a site counts changes to its services, flavors, images and networks;
query replicas reload a site's catalog only when it moved.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: sa.DateTime(timezone=True),
        dict[str, Any]: sa.JSON,
        list[Any]: sa.JSON,
    }


class Site(Base):
    __tablename__ = "ip_sites"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    country: Mapped[str] = mapped_column(sa.String(255), default="")
    gocdb_id: Mapped[str] = mapped_column(sa.String(255), default="")
    homepage: Mapped[str] = mapped_column(sa.String(1024), default="")
    support_emails: Mapped[list[Any]] = mapped_column(default=list)
    # Last status the registry announced (up/degraded/down); readers recompute from valid_until.
    status: Mapped[str] = mapped_column(sa.String(16), default="up")
    health: Mapped[list[Any]] = mapped_column(default=list)
    creation_time: Mapped[datetime]
    validity_s: Mapped[int]
    valid_until: Mapped[datetime] = mapped_column(index=True)
    last_report_at: Mapped[datetime]
    reports_accepted: Mapped[int] = mapped_column(default=0)
    catalog_version: Mapped[int] = mapped_column(default=0)
    client_id: Mapped[str] = mapped_column(sa.String(255), default="")
    agent: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Service(Base):
    __tablename__ = "ip_services"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(32), unique=True)
    site_id: Mapped[str] = mapped_column(
        sa.ForeignKey("ip_sites.id", ondelete="CASCADE"), index=True
    )
    local_id: Mapped[str] = mapped_column(sa.String(128))
    type: Mapped[str] = mapped_column(sa.String(255), index=True)
    endpoint: Mapped[str] = mapped_column(sa.String(1024), default="")
    region: Mapped[str] = mapped_column(sa.String(255), default="")
    api_version: Mapped[str] = mapped_column(sa.String(255), default="")
    component: Mapped[str] = mapped_column(sa.String(255))
    healthy: Mapped[bool] = mapped_column(default=True)
    failed_parts: Mapped[list[Any]] = mapped_column(default=list)
    public_ip_assignable: Mapped[bool] = mapped_column(default=False)
    identity_providers: Mapped[list[Any]] = mapped_column(default=list)
    cost: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON(none_as_null=True), nullable=True)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    creation_time: Mapped[datetime]
    validity_s: Mapped[int]
    valid_until: Mapped[datetime] = mapped_column(index=True)
    digest: Mapped[str] = mapped_column(sa.String(32))
    # Hash of each part as last read ({"images": "..."}): an unchanged part is not diffed.
    part_digests: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flavors_creation_time: Mapped[datetime]
    flavors_validity_s: Mapped[int]
    flavors_valid_until: Mapped[datetime]
    images_creation_time: Mapped[datetime]
    images_validity_s: Mapped[int]
    images_valid_until: Mapped[datetime]
    networks_creation_time: Mapped[datetime]
    networks_validity_s: Mapped[int]
    networks_valid_until: Mapped[datetime]
    quotas_creation_time: Mapped[datetime]
    quotas_validity_s: Mapped[int]
    quotas_valid_until: Mapped[datetime]


def _child_fk() -> Any:
    return mapped_column(
        sa.String(200), sa.ForeignKey("ip_services.id", ondelete="CASCADE"), primary_key=True
    )


class Flavor(Base):
    __tablename__ = "ip_flavors"
    service_id: Mapped[str] = _child_fk()
    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    cpus: Mapped[int]
    ram_mb: Mapped[int] = mapped_column(sa.BigInteger)
    disk_gb: Mapped[int] = mapped_column(sa.BigInteger)
    gpus: Mapped[int]
    gpu_vendor: Mapped[str] = mapped_column(sa.String(255), default="")
    gpu_model: Mapped[str] = mapped_column(sa.String(255), default="")
    infiniband: Mapped[bool]
    public: Mapped[bool]
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    creation_time: Mapped[datetime | None]
    validity_s: Mapped[int | None]
    valid_until: Mapped[datetime | None]
    digest: Mapped[str] = mapped_column(sa.String(32))


class Image(Base):
    __tablename__ = "ip_images"
    service_id: Mapped[str] = _child_fk()
    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    os_type: Mapped[str] = mapped_column(sa.String(255), default="")
    os_distribution: Mapped[str] = mapped_column(sa.String(255), default="")
    os_version: Mapped[str] = mapped_column(sa.String(255), default="")
    architecture: Mapped[str] = mapped_column(sa.String(255), default="")
    cuda: Mapped[bool]
    cuda_version: Mapped[str] = mapped_column(sa.String(255), default="")
    cudnn_version: Mapped[str] = mapped_column(sa.String(255), default="")
    gpu_driver: Mapped[str] = mapped_column(sa.String(255), default="")
    docker_image: Mapped[str] = mapped_column(sa.String(255), default="")
    user_name: Mapped[str] = mapped_column(sa.String(255), default="")
    description: Mapped[str] = mapped_column(sa.String(1024), default="")
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    creation_time: Mapped[datetime | None]
    validity_s: Mapped[int | None]
    valid_until: Mapped[datetime | None]
    digest: Mapped[str] = mapped_column(sa.String(32))


class Network(Base):
    __tablename__ = "ip_networks"

    service_id: Mapped[str] = _child_fk()
    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    public: Mapped[bool]
    shared: Mapped[bool]
    cidr: Mapped[str] = mapped_column(sa.String(255), default="")
    creation_time: Mapped[datetime | None]
    validity_s: Mapped[int | None]
    valid_until: Mapped[datetime | None]
    digest: Mapped[str] = mapped_column(sa.String(32))


class Quota(Base):
    __tablename__ = "ip_quotas"
    __table_args__ = (sa.Index("ix_ip_quotas_tenant", "id"),)

    service_id: Mapped[str] = _child_fk()
    # The tenant (project/VO name users map to) is the record's id within its service.
    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(32), unique=True)
    project_id: Mapped[str] = mapped_column(sa.String(255), default="")
    project_name: Mapped[str] = mapped_column(sa.String(255), default="")
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    creation_time: Mapped[datetime | None]
    validity_s: Mapped[int | None]
    valid_until: Mapped[datetime | None]
    digest: Mapped[str] = mapped_column(sa.String(32))


class RejectedReport(Base):
    """A report the registry refused, kept for operators (never with the agent's token)."""

    __tablename__ = "ip_rejected_reports"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    event_id: Mapped[str] = mapped_column(sa.String(255), default="")
    transport: Mapped[str] = mapped_column(sa.String(16), default="amqp")
    claimed_site: Mapped[str] = mapped_column(sa.String(255), default="")
    authenticated_site: Mapped[str] = mapped_column(sa.String(255), default="")
    client_id: Mapped[str] = mapped_column(sa.String(255), default="")
    issuer: Mapped[str] = mapped_column(sa.String(1024), default="")
    reason: Mapped[str] = mapped_column(sa.Text)
    size_bytes: Mapped[int] = mapped_column(default=0)
    excerpt: Mapped[str] = mapped_column(sa.Text, default="")


CHILD_MODELS: dict[str, type[Flavor] | type[Image] | type[Network] | type[Quota]] = {
    "flavors": Flavor,
    "images": Image,
    "networks": Network,
    "quotas": Quota,
}
