"""Orchestrator settings (env prefix HDC_ORCHESTRATOR_)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from hdc_common.settings import ServiceSettings, service_config
from pydantic import BaseModel, ConfigDict, Field


class SlaSetting(BaseModel):
    """One service level agreement of the operator's catalogue (INDIGO kept them in its
    SLAM): which site (and service) it covers, its targets, when it is in force, and for
    whom. Templates name them with `tosca.policies.indigo.SlaPlacement` (`sla_id`)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    site_id: str = Field(min_length=1)
    service_id: str = ""  # empty: every service of the site
    # Guaranteed amounts, e.g. {"computing_time": 1000, "public_ip": 2} (the ranker's SLA score).
    targets: dict[str, float] = Field(default_factory=dict)
    start: datetime | None = None
    end: datetime | None = None
    # Groups (deployment userGroup) it was signed for; empty: every user.
    user_groups: list[str] = Field(default_factory=list)


class OrchestratorSettings(ServiceSettings):
    model_config = service_config("orchestrator")

    http_port: int = 8101
    # What this process runs. "all": the API and the workflow workers (bus consumers, the
    # timeout sweeper, the callback sender). "api" and "workers" split them over processes
    # (or Kubernetes Deployments) sharing the database and the broker: an API process
    # then shares neither its interpreter (GIL) nor its event loop with the workers, so
    # reads stay fast however busy the workflow is. Every role serves the HTTP API (a
    # "workers" process too, if only for its probes) and relays the outbox.
    role: Literal["all", "api", "workers"] = "all"
    # gRPC targets of the collaborators.
    infoprovider_target: str = "127.0.0.1:9103"
    ranker_target: str = "127.0.0.1:9104"
    # The vrouter controller (gRPC), for templates with vRouter hub/site-router nodes.
    vrouter_target: str = "127.0.0.1:9105"
    # PEM (or path to one) of the Ed25519 key the gateway signs X-HDC-Identity with. The
    # orchestrator calls the vrouter on behalf of a deployment's owner long after the owner's
    # request (and its 60 s identity token) is over: on placement retries, provider timeouts
    # and deletes. Empty: hybrid (vRouter) templates are refused at placement.
    identity_private_key: str = ""
    grpc_deadline_s: float = Field(5.0, gt=0)
    # When the infoprovider or ranker cannot be reached, ask again this often, this many times.
    placement_retry_s: float = Field(10.0, gt=0)
    placement_max_tries: int = Field(6, ge=1)
    # Tenant whose quota the infoprovider/ranker check (empty: no quota check).
    tenant: str = ""
    # The SLA catalogue sent to the ranker with each deployment's requirements (those of the
    # deployment's group, and those for everyone); a template's SlaPlacement sla_id must
    # name one of them, or no provider qualifies.
    slas: list[SlaSetting] = Field(default_factory=list)
    # Defaults for requests that omit them (INDIGO's defaults, in minutes).
    default_timeout_mins: int = Field(720, ge=1)
    delete_timeout_mins: int = Field(60, ge=1)
    # Seconds in one "minute" of timeoutMins/providerTimeoutMins. 60 in production; tests
    # shrink it so a provider timeout can be exercised in seconds.
    minute_s: float = Field(60.0, gt=0)
    # How often the sweeper looks for timed-out attempts and due callbacks.
    sweep_interval_s: float = Field(2.0, gt=0)
    # Fernet key (urlsafe base64, 32 bytes) encrypting resolved templates and secret input
    # values at rest; the same on every replica. Empty = a random key kept in data_dir.
    secret_key: str = ""
    # HMAC-SHA256 key of callback signatures; empty = a random key kept in data_dir.
    callback_secret: str = ""
    callback_max_attempts: int = Field(6, ge=1)
    callback_backoff_s: float = Field(2.0, gt=0)
    callback_timeout_s: float = Field(5.0, gt=0)
    # API bulkheads: threads for GET handlers (each with a connection of a read-only pool
    # of its own) and for writes; a burst of writes then never delays a read. Writes are
    # also admitted into the app only this many at once (pools.WriteAdmission): every
    # write admitted is event-loop work a GET queues behind. 2 measured best under a burst
    # of 32 concurrent POSTs (GET p99 51 ms, against 171 ms with 8) at the same creates/s.
    api_read_threads: int = Field(16, ge=1, le=256)
    api_write_threads: int = Field(2, ge=1, le=256)
    # Seconds the interpreter lets one thread hold the GIL while others wait (Python's
    # default is 0.005). The orchestrator is I/O-bound: every database or broker round trip
    # gives the GIL away and must win it back, so under load a short interval cuts the tail
    # latency of GETs and workers alike. 0 keeps the interpreter's value. The setting is
    # process-wide (in embedded mode it applies to every service of the process).
    gil_switch_interval_s: float = Field(0.001, ge=0, le=0.1)
    # Matching images the infoprovider sends per candidate site (0 = all). The first one is
    # what the deployment boots; a site may publish hundreds, and a placement over thousands
    # of sites with all of them would be tens of megabytes.
    placement_images_per_candidate: int = Field(8, ge=0)
    # Base URL used in links; empty = the URL the request came in on.
    public_url: str = ""
    # Collaborators announced by GET /configuration (INDIGO keys end in _url).
    im_url: str = "http://127.0.0.1:8102"
    infoprovider_url: str = "http://127.0.0.1:8103"
    ranker_url: str = "http://127.0.0.1:8104"
    vrouter_url: str = "http://127.0.0.1:8105"
    dashboard_url: str = "http://127.0.0.1:8107"
    monitoring_url: str = ""
