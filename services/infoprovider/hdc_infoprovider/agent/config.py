"""The agent's `site.yaml`: which site it speaks for, how it authenticates, what it collects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hdc_infoprovider.report import IdentityProvider, SiteInfo


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthConfig(_Cfg):
    """OIDC client credentials at the site's OP (e.g. a Keycloak client with a service account)."""

    token_url: str = ""  # empty: discovered from issuer
    issuer: str = ""
    client_id: str = Field(min_length=1)
    client_secret: str = ""
    client_secret_file: Path | None = None
    scope: str = ""

    @model_validator(mode="after")
    def _where(self) -> AuthConfig:
        if not self.token_url and not self.issuer:
            raise ValueError("auth needs token_url or issuer")
        if not self.client_secret and self.client_secret_file is None:
            raise ValueError("auth needs client_secret or client_secret_file")
        return self

    def secret(self) -> str:
        if self.client_secret:
            return self.client_secret
        assert self.client_secret_file is not None
        return self.client_secret_file.read_text().strip()


class PublishConfig(_Cfg):
    # amqp: CloudEvent on hdc.commands (routing key infoprovider); http: POST /v1/reports.
    transport: Literal["amqp", "http"] = "amqp"
    bus_url: str = ""
    registry_url: str = ""
    timeout_s: float = 30.0

    @model_validator(mode="after")
    def _target(self) -> PublishConfig:
        if self.transport == "amqp" and not self.bus_url:
            raise ValueError("publish.transport amqp needs publish.bus_url")
        if self.transport == "http" and not self.registry_url:
            raise ValueError("publish.transport http needs publish.registry_url")
        return self


class ProjectConfig(_Cfg):
    tenant: str = Field(min_length=1)  # the VO/group name users map to
    project_name: str = ""
    project_id: str = ""
    project_domain_name: str = "Default"


class FlavorKeys(_Cfg):
    """Extra-spec keys carrying GPU/Infiniband facts (cloud-info-provider's conventions)."""

    gpu_number: str = "Accelerator:Number"
    gpu_vendor: str = "Accelerator:Vendor"
    gpu_model: str = "Accelerator:Model"
    infiniband: str = "infiniband"
    infiniband_value: str = "true"


class OpenStackCollectorConfig(_Cfg):
    type: Literal["openstack"]
    name: str = "openstack"
    service_id: str = "nova"
    auth_url: str
    region: str = ""
    interface: Literal["public", "internal", "admin"] = "public"
    username: str = ""
    password: str = ""
    user_domain_name: str = "Default"
    application_credential_id: str = ""
    application_credential_secret: str = ""
    projects: Annotated[list[ProjectConfig], Field(min_length=1)]
    identity_providers: list[IdentityProvider] = Field(default_factory=list)
    flavor_keys: FlavorKeys = FlavorKeys()
    include_private_flavors: bool = True
    timeout_s: float = 20.0

    @model_validator(mode="after")
    def _credentials(self) -> OpenStackCollectorConfig:
        if not (self.username and self.password) and not (
            self.application_credential_id and self.application_credential_secret
        ):
            raise ValueError("openstack needs username/password or an application credential")
        return self


class KubernetesCollectorConfig(_Cfg):
    type: Literal["kubernetes"]
    name: str = "kubernetes"
    service_id: str = "kubernetes"
    host: str = ""  # API server URL; empty: kubeconfig
    token: str = ""
    token_file: Path | None = None
    kubeconfig: Path | None = None
    verify_ssl: bool = True
    endpoint: str = ""  # what users deploy to; default: host
    gpu_resource: str = "nvidia.com/gpu"
    gpu_vendor_label: str = "nvidia.com/gpu.vendor"
    gpu_model_label: str = "nvidia.com/gpu.product"
    identity_providers: list[IdentityProvider] = Field(default_factory=list)


class StaticCollectorConfig(_Cfg):
    """Services described by hand (HPC sites, anything with nothing to query)."""

    type: Literal["static"]
    name: str = "static"
    file: Path | None = None
    services: list[dict[str, Any]] = Field(default_factory=list)


class GlueCollectorConfig(_Cfg):
    """Import of cloud-info-provider's GLUE 2.1 JSON output."""

    type: Literal["glue21"]
    name: str = "glue21"
    file: Path
    service_id: str = ""  # default: derived from the endpoint id
    identity_providers: list[IdentityProvider] = Field(default_factory=list)


CollectorConfig = Annotated[
    OpenStackCollectorConfig
    | KubernetesCollectorConfig
    | StaticCollectorConfig
    | GlueCollectorConfig,
    Field(discriminator="type"),
]


class AgentConfig(_Cfg):
    site: SiteInfo
    validity: int = Field(3600, ge=60, le=7 * 24 * 3600)
    interval: float = Field(600, gt=0)  # seconds between reports in `run`
    auth: AuthConfig | None = None
    publish: PublishConfig | None = None
    collectors: Annotated[list[CollectorConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _names(self) -> AgentConfig:
        names = [c.name for c in self.collectors]
        if len(names) != len(set(names)):
            raise ValueError("collector names must be unique (they name report components)")
        return self


class AgentConfigError(Exception):
    pass


def load_config(path: Path) -> AgentConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AgentConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AgentConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{path}: expected a mapping at top level")
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        raise AgentConfigError(f"{path}: {where}: {err['msg']}") from None
    # Relative file paths are relative to the config file.
    for c in cfg.collectors:
        f = getattr(c, "file", None)
        if f is not None and not f.is_absolute():
            c.file = path.parent / f  # type: ignore[union-attr]
    return cfg
