"""vrouter settings (environment prefix `HDC_VROUTER_`)."""

from __future__ import annotations

from hdc_common.settings import ServiceSettings, service_config
from pydantic import Field


class VRouterSettings(ServiceSettings):
    model_config = service_config("vrouter")

    http_port: int = 8105
    grpc_port: int | None = 9105
    # The URL agents use to reach this controller (what goes into cloud-init). Empty: derived
    # from http_host/http_port, which only suits agents on the same network.
    public_url: str = ""
    # What router VMs install (pip requirement) and from where, in the user data we generate.
    agent_requirement: str = "hdc-vrouter"
    agent_pip_index_url: str = ""
    enrolment_token_ttl_s: int = Field(default=24 * 3600, gt=0)
    # A router whose last heartbeat is older than this is offline and its tunnels down.
    heartbeat_timeout_s: float = Field(default=45.0, gt=0)
    # WireGuard drops a session 180 s after its last handshake (REJECT_AFTER_TIME).
    handshake_timeout_s: float = Field(default=180.0, gt=0)
    # Most sites one overlay may hold; protects the allocator and agents' peer lists.
    max_sites_per_overlay: int = Field(default=65535, gt=0)

    def agent_url(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"
