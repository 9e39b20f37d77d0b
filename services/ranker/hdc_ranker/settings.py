"""The ranker's settings (env prefix HDC_RANKER_, or a YAML file)."""

from __future__ import annotations

from hdc_common.settings import ServiceSettings, service_config
from pydantic import Field, field_validator

DEFAULT_WEIGHTS: dict[str, float] = {
    "sla": 1.0,
    "preference": 2.0,
    "monitoring": 1.0,
    "headroom": 0.5,
    "history": 1.0,
    "cost": 0.5,
}


class RankerSettings(ServiceSettings):
    model_config = service_config("ranker")

    http_port: int = 8104
    grpc_port: int | None = 9104

    # Weight of each scorer in the total (a plug-in scorer without an entry here uses its
    # own `default_weight`). A request may override them in RankOptions.weights.
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    # Plug-ins to load besides the "hdc.ranker.plugins" entry points: "module:attr" refs.
    plugins: list[str] = Field(default_factory=list)
    # Built-in or plug-in filters/scorers switched off for every request.
    disabled: list[str] = Field(default_factory=list)
    # Seed of the near-tie break when a request gives none.
    seed: int = 0
    # Totals closer than this are ties broken by the seeded shuffle.
    tie_epsilon: float = 1e-6
    # Site data older than this (when the site published no validity) is stale.
    max_age_s: float = 3600.0
    # Probes and deployment outcomes lose half their weight every half-life.
    monitoring_half_life_s: float = 6 * 3600.0
    history_half_life_s: float = 7 * 24 * 3600.0
    # Outcomes kept per site for the success-rate estimate.
    history_window: int = 200
    # Freed blocks up to this size stay in the process for the next request instead of
    # going back to the system (glibc mallopt; see memory.py). 0 = the C library's default.
    malloc_retain_mb: int = Field(default=64, ge=0)

    @field_validator("weights")
    @classmethod
    def _weights_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not weight >= 0:  # also refuses NaN
                raise ValueError(f"weight of {name!r} must be a number >= 0, got {weight}")
        return value

    @field_validator("tie_epsilon", "max_age_s", "monitoring_half_life_s", "history_half_life_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"must be > 0, got {value}")
        return value
