"""Settings of the im service (env prefix HDC_IM_, optional YAML file)."""

from __future__ import annotations

from typing import Any, Literal

from hdc_common.settings import ServiceSettings, service_config
from hdc_common.tosca_types import type_files
from pydantic import BaseModel, Field

DriverType = Literal["local", "dummy", "ec2", "openstack", "kubernetes", "marathon", "libcloud"]


class SiteConfig(BaseModel):
    """One cloud site the im can provision on (the `sites:` map, keyed by site id)."""

    model_config = {"extra": "forbid"}

    type: DriverType
    endpoint: str = ""
    region: str = ""
    # Credentials the operator stores for the site (never returned by any API).
    credentials: dict[str, str] = Field(default_factory=dict)
    # Generic libcloud provider name (type: libcloud), e.g. "gce", "azure_arm".
    provider: str = ""
    # Extra driver keyword arguments (e.g. {"ex_force_auth_version": "3.x_password"}).
    options: dict[str, Any] = Field(default_factory=dict)
    # Defaults for nodes that do not name them.
    default_image: str = ""
    default_instance_type: str = ""
    namespace: str = "default"


class ImSettings(ServiceSettings):
    model_config = service_config("im")

    http_port: int = 8102
    # Fernet key (urlsafe base64, 32 bytes) for credentials at rest; empty: derived per data_dir.
    secret_key: str = ""
    sites: dict[str, SiteConfig] = Field(default_factory=dict)
    # Command line for local container nodes; {model}, {port}, {host} are substituted.
    local_command: list[str] = Field(
        default_factory=lambda: [
            "hdc-serving",
            "run",
            "--model",
            "{model}",
            "--listen-ip",
            "{host}",
            "--listen-port",
            "{port}",
        ]
    )
    local_host: str = "127.0.0.1"
    workers: int = 4
    # A worker that stops renewing its lease for this long is presumed dead; its job is resumed.
    job_lease_s: float = 30.0
    job_poll_s: float = 0.5
    job_max_attempts: int = 3
    # Lowest interval between two create calls on one cloud (cloud API rate limits).
    api_min_interval_s: float = 0.0
    # How long a synchronous create waits for the VMs to be made before answering.
    sync_timeout_s: float = 120.0
    reconcile_interval_s: float = 60.0
    # TOSCA type files besides the im's own minimal types: by default the template library's
    # (INDIGO's custom types, hdc's and the vRouter's), so every ready template parses.
    tosca_types_files: list[str] = Field(default_factory=type_files)
    # OIDC issuers whose bearer tokens the IM-compatible API accepts (signature checked by JWKS
    # at the gateway; here the token names the owner). Empty: any issuer.
    oidc_issuers: list[str] = Field(default_factory=list)
