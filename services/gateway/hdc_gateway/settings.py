"""Gateway configuration: trusted issuers, routes with their policy, limits, CORS, role mapping.

Everything comes through `hdc_common.settings.load_settings` (env `HDC_GATEWAY_*` plus an
optional YAML file); the nested models here reject unknown keys too, so a typo in a route
or an issuer stops the gateway with a message naming it instead of silently opening a path.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from hdc_common.settings import ServiceSettings, service_config
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Asymmetric algorithms only: `none` and every HMAC variant are refused whatever the
# configuration says, so a public key can never be abused as a shared secret.
SAFE_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssuerSettings(_Strict):
    """One OpenID provider whose tokens the gateway accepts (the allow-list entry)."""

    issuer: str
    # Accepted `aud` values: a token must name at least one of them.
    audiences: list[str] = Field(default_factory=lambda: ["hdc-gateway"], min_length=1)
    # Empty: discovered from `<issuer>/.well-known/openid-configuration`.
    jwks_uri: str = ""
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    # RFC 7662. Empty endpoint with a client id: discovered like the JWKS.
    introspection_endpoint: str = ""
    introspection_client_id: str = ""
    introspection_client_secret: str = ""
    # "opaque": only non-JWT tokens are introspected; "always": JWTs are also checked for
    # revocation at the provider after local validation (costs one round trip per cache miss).
    introspect: Literal["opaque", "always"] = "opaque"

    @field_validator("algorithms")
    @classmethod
    def _safe_algorithms(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in SAFE_ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms {bad} not allowed; choose from {sorted(SAFE_ALGORITHMS)}")
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

    @property
    def introspection_enabled(self) -> bool:
        return bool(self.introspection_client_id)


Access = Literal["anonymous", "optional", "authenticated"]


class RouteSettings(_Strict):
    """A path prefix and the upstream service behind it, with who may call it."""

    prefix: str
    upstream: str
    # Remove the prefix before forwarding (`/orchestrator/deployments` → `/deployments`).
    strip_prefix: bool = False
    # anonymous: no token looked at; optional: identity forwarded when a valid token is
    # sent (an invalid one is still refused); authenticated: a valid token is required.
    access: Access = "authenticated"
    # Paths under the prefix (after stripping) open to anyone: health probes and API docs.
    anonymous_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/openapi.json", "/ui"]
    )
    scopes: list[str] = Field(default_factory=list)  # all required
    groups: list[str] = Field(default_factory=list)  # any one suffices
    roles: list[str] = Field(default_factory=list)  # any one suffices
    forward_authorization: bool = True
    # Where the access token is: `Authorization: Bearer`, or also the InfrastructureManager
    # line of an IM-style Authorization header (grycap im-client; see im_authorization.py).
    token_from: Literal["bearer", "im_authorization"] = "bearer"
    max_body_bytes: int | None = Field(default=None, ge=0)
    # Seconds to wait for the upstream between two reads; None keeps SSE streams open.
    read_timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"route prefix {value!r} must start with '/'")
        return value.rstrip("/") or "/"

    @field_validator("upstream")
    @classmethod
    def _upstream_shape(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream {value!r} must be an http:// or https:// URL")
        return value.rstrip("/")


class RoleMappingSettings(_Strict):
    """How provider groups/roles/entitlements become hdc roles."""

    platform_admin_groups: list[str] = Field(default_factory=lambda: ["hdc-admins"])
    platform_admin_roles: list[str] = Field(default_factory=lambda: ["platform-admin"])
    # Membership of `<group><suffix>` (e.g. `ml-team-admins`, WLCG `/ml-team/admins`)
    # makes the caller `group-admin:<group>`.
    group_admin_suffixes: list[str] = Field(default_factory=lambda: ["-admins", "/admins"])
    # eduperson_entitlement `urn:...:group:<group>[:role=<role>]#<authority>` roles that
    # make a group admin.
    entitlement_admin_roles: list[str] = Field(
        default_factory=lambda: ["admin", "manager", "owner"]
    )
    # Extra hdc roles granted by a provider role or group, e.g. {"site-agent": ["site-agent"]}.
    extra_roles: dict[str, list[str]] = Field(default_factory=dict)


class BucketSettings(_Strict):
    # Requests per second refilled, and how many may come at once; rate 0 disables.
    rate: float = Field(default=0, ge=0)
    burst: int = Field(default=0, ge=0)


class RateLimitSettings(_Strict):
    per_identity: BucketSettings = BucketSettings(rate=100, burst=200)
    per_ip: BucketSettings = BucketSettings(rate=200, burst=400)
    # Distinct keys remembered; the least recently seen are forgotten beyond this.
    max_keys: int = Field(default=100_000, ge=100)


class CorsSettings(_Strict):
    allow_origins: list[str] = Field(default_factory=list)  # exact origins, or "*"
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "Accept", "Last-Event-ID"]
    )
    expose_headers: list[str] = Field(default_factory=lambda: ["Location", "Retry-After"])
    allow_credentials: bool = False
    max_age_s: int = 600

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("cors: allow_credentials cannot be combined with origin '*'")
        return self


# im-client asks for /version without credentials, as grycap's IM allows.
IM_ANONYMOUS = ["/healthz", "/readyz", "/openapi.json", "/ui", "/version"]


def default_routes() -> list[RouteSettings]:
    """Every hdc service at its default port; the dashboard takes what is left."""
    services = {
        "orchestrator": 8101,
        "im": 8102,
        "infoprovider": 8103,
        "ranker": 8104,
        "vrouter": 8105,
        "serving": 8106,
    }
    routes = [
        RouteSettings(
            prefix=f"/{name}",
            upstream=f"http://127.0.0.1:{port}",
            strip_prefix=True,
            **(
                {"token_from": "im_authorization", "anonymous_paths": IM_ANONYMOUS}
                if name == "im"
                else {}
            ),
        )
        for name, port in services.items()
    ]
    routes.append(RouteSettings(prefix="/", upstream="http://127.0.0.1:8107", access="optional"))
    return routes


DEFAULT_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class GatewaySettings(ServiceSettings):
    model_config = service_config("gateway")

    http_port: int = 8000
    # Embedded OpenID provider: development tokens signed by a local key in data_dir
    # (minted by `hdc_gateway.devtoken.mint`) and validated by the same code as any
    # provider's. Only allowed on a loopback address.
    embedded_op: bool = True
    embedded_op_audience: str = "hdc-gateway"
    # PEM (or path to one) of the Ed25519 key that signs `X-HDC-Identity`.
    identity_private_key: str = ""
    identity_ttl_s: int = Field(default=60, ge=5, le=3600)
    issuers: list[IssuerSettings] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=default_routes)
    roles: RoleMappingSettings = RoleMappingSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    max_body_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    cors: CorsSettings = CorsSettings()
    security_headers: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SECURITY_HEADERS))
    # Peers (CIDRs) whose X-Forwarded-For is believed, e.g. the nginx in front.
    trusted_proxies: list[str] = Field(default_factory=list)
    clock_skew_s: int = Field(default=30, ge=0, le=300)
    token_cache_s: float = Field(default=30, ge=0)
    jwks_cache_s: float = Field(default=300, gt=0)
    # An unknown `kid` triggers a JWKS refetch at most this often per issuer, so a flood
    # of forged tokens cannot turn the gateway into a load generator against the provider.
    jwks_min_refresh_s: float = Field(default=10, ge=0)
    ext_auth_path: str = "/auth"
    upstream_connect_timeout_s: float = Field(default=5, gt=0)
    # How long an upstream may take to start its answer (the body may then stream on).
    upstream_header_timeout_s: float = Field(default=60, gt=0)
    upstream_pool_size: int = Field(default=512, ge=1)
    # Bodyless GETs to http:// upstreams use the lean built-in HTTP/1.1 client (a third of
    # the CPU per request); false sends everything through aiohttp.
    fast_upstream: bool = True
    # `/deployments/{uuid}/model/<rest>` → the deployment's `endpoint` output (a deployed
    # model). Deployments are looked up at `model_lookup_upstream` (empty: the upstream of
    # the `/orchestrator` route) with the caller's identity; the answer is cached per caller.
    model_routes: bool = True
    model_lookup_upstream: str = ""
    model_lookup_cache_s: float = Field(default=5, ge=0, le=300)
    # Hosts a deployment's endpoint may point at: names, `*.suffix` wildcards, IP networks.
    # Outputs come from user templates: keep this to where the sites run models.
    model_upstream_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "localhost"]
    )
    model_read_timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {cidr!r} is not an IP network") from None
        return value

    @field_validator("model_lookup_upstream")
    @classmethod
    def _lookup_shape(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"model_lookup_upstream {value!r} must be an http(s):// URL")
        return value.rstrip("/")

    @field_validator("model_upstream_hosts")
    @classmethod
    def _hosts_shape(cls, value: list[str]) -> list[str]:
        for host in value:
            if not host.strip() or "/" in host.strip("/") and not _is_network(host):
                raise ValueError(f"model_upstream_hosts: {host!r} is not a host or IP network")
        return value

    def identity_private_key_pem(self) -> str:
        key = self.identity_private_key.strip()
        if key and not key.startswith("-----BEGIN"):
            return Path(key).expanduser().read_text()
        return key

    @property
    def gateway_data_dir(self) -> Path:
        return Path(self.data_dir) / "gateway"


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return False
    return True
