"""Orchestrator settings (env prefix HDC_ORCHESTRATOR_)."""

from __future__ import annotations

from hdc_common.settings import ServiceSettings, service_config
from pydantic import Field


class OrchestratorSettings(ServiceSettings):
    model_config = service_config("orchestrator")

    http_port: int = 8101
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
    # Base URL used in links; empty = the URL the request came in on.
    public_url: str = ""
    # Collaborators announced by GET /configuration (INDIGO keys end in _url).
    im_url: str = "http://127.0.0.1:8102"
    infoprovider_url: str = "http://127.0.0.1:8103"
    ranker_url: str = "http://127.0.0.1:8104"
    vrouter_url: str = "http://127.0.0.1:8105"
    dashboard_url: str = "http://127.0.0.1:8107"
    monitoring_url: str = ""
