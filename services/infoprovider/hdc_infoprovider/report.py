"""The site report: what an agent sends, as pydantic models that ARE the published JSON Schema.

The schema served at `/v1/schemas/site-report.json` is generated from these models
(`site_report_schema()`), so the registry validates with exactly the schema it publishes.
pydantic-core validates a 250-record report in well under a millisecond, which is what lets
one registry replica ingest hundreds of reports per second.

Every record carries `creationTime` and `validity` (seconds). A record may omit them and
inherit its service's, a service inherits the report's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = "1"
SCHEMA_ID = "https://hdc.example.org/schemas/infoprovider/site-report-v1.json"

# Site ids never contain dots: a registry-wide service id is "<site_id>.<local id>".
SiteId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
LocalId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
RecordId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Name = Annotated[str, StringConstraints(max_length=255)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]
Validity = Annotated[int, Field(ge=60, le=7 * 24 * 3600)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Amount = Annotated[int, Field(ge=-1)]  # -1 = unlimited (OpenStack convention)
Properties = Annotated[
    dict[Annotated[str, StringConstraints(max_length=255)], ShortText], Field(max_length=200)
]


class _Model(BaseModel):
    # Unknown fields are refused: a typo in a site's report must not silently drop data.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class _Record(_Model):
    creationTime: Annotated[AwareDatetime, Field(strict=False)] | None = None
    validity: Validity | None = None


class Flavor(_Record):
    id: RecordId
    name: Name = ""
    cpus: Count
    ram_mb: Count
    disk_gb: Count = 0
    gpus: Count = 0
    gpu_vendor: Name = ""
    gpu_model: Name = ""
    infiniband: bool = False
    public: bool = True
    properties: Properties = Field(default_factory=dict)


class Image(_Record):
    id: RecordId
    name: Name = ""
    os_type: Name = ""
    os_distribution: Name = ""
    os_version: Name = ""
    architecture: Name = ""
    cuda: bool = False
    cuda_version: Name = ""
    cudnn_version: Name = ""
    gpu_driver: Name = ""
    docker_image: Name = ""
    user_name: Name = ""
    description: ShortText = ""
    properties: Properties = Field(default_factory=dict)


class Network(_Record):
    id: RecordId
    name: Name = ""
    public: bool = False
    shared: bool = False
    cidr: Name = ""


class QuotaValues(_Model):
    instances: Amount | None = None
    cores: Amount | None = None
    ram_mb: Amount | None = None
    gpus: Amount | None = None
    floating_ips: Amount | None = None
    volumes: Amount | None = None
    volume_gb: Amount | None = None


class Quota(_Record):
    tenant: Name = Field(min_length=1)
    project_id: Name = ""
    project_name: Name = ""
    limits: QuotaValues = QuotaValues()
    usage: QuotaValues = QuotaValues()


class IdentityProvider(_Model):
    issuer: ShortText
    protocol: Name = "openid"
    name: Name = ""


class Cost(_Model):
    per_cpu_hour: Annotated[float, Field(ge=0, strict=False)] = 0.0
    per_gpu_hour: Annotated[float, Field(ge=0, strict=False)] = 0.0
    per_gb_ram_hour: Annotated[float, Field(ge=0, strict=False)] = 0.0
    currency: Name = "EUR"


Part = Literal["flavors", "images", "networks", "quotas"]


class Service(_Record):
    id: LocalId
    # Optional claim; when present it must be the reporting site (checked by the registry).
    site_id: SiteId | None = None
    type: Name = Field(min_length=1)
    endpoint: ShortText = ""
    region: Name = ""
    api_version: Name = ""
    # The collector that produced this service: a failing collector's services are kept.
    component: Name = Field(min_length=1)
    healthy: bool = True
    # Parts the collector could not read this time: the registry keeps their previous rows.
    failed_parts: list[Part] = []
    public_ip_assignable: bool = False
    identity_providers: Annotated[list[IdentityProvider], Field(max_length=50)] = []
    cost: Cost | None = None
    properties: Properties = Field(default_factory=dict)
    flavors: Annotated[list[Flavor], Field(max_length=5000)] = []
    images: Annotated[list[Image], Field(max_length=20000)] = []
    networks: Annotated[list[Network], Field(max_length=5000)] = []
    quotas: Annotated[list[Quota], Field(max_length=5000)] = []


class ComponentHealth(_Model):
    component: Name = Field(min_length=1)
    healthy: bool
    message: ShortText = ""


class SiteInfo(_Model):
    id: SiteId
    name: Name = ""
    country: Name = ""
    gocdb_id: Name = ""
    homepage: ShortText = ""
    support_emails: Annotated[list[Name], Field(max_length=20)] = []


class AgentInfo(_Model):
    name: Name = "hdc-info-agent"
    version: Name = ""
    hostname: Name = ""


class SiteReport(_Model):
    schema_version: Literal["1"] = SCHEMA_VERSION
    site: SiteInfo
    creationTime: Annotated[AwareDatetime, Field(strict=False)]
    validity: Validity
    agent: AgentInfo = AgentInfo()
    health: Annotated[list[ComponentHealth], Field(max_length=100)] = []
    services: Annotated[list[Service], Field(max_length=200)] = []

    def unhealthy_components(self) -> set[str]:
        return {h.component for h in self.health if not h.healthy}


def site_report_schema() -> dict[str, Any]:
    schema = SiteReport.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "hdc site report",
        "description": (
            "What an hdc-info-agent publishes about its site (CloudEvent type "
            "infoprovider.site.report, data.report). Unknown fields are refused."
        ),
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def dump_report(report: SiteReport) -> dict[str, Any]:
    """JSON-ready dict, without unset optional fields so reports stay small."""
    return json.loads(report.model_dump_json(exclude_none=True))
