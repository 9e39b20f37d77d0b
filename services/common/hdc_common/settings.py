"""Service settings: environment variables plus an optional YAML file, validated at start.

Every service subclasses `ServiceSettings` and sets `model_config = service_config("name")`,
which gives it the environment prefix `HDC_<NAME>_`. `load_settings` is the only way a
service reads its configuration: unknown keys (in the YAML file or as `HDC_<NAME>_*`
variables) and invalid values stop the service with a one-line `ConfigError` naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from hdc_common.errors import ConfigError

S = TypeVar("S", bound="ServiceSettings")


def service_config(name: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=f"HDC_{name.upper()}_",
        extra="forbid",
        validate_default=True,
        env_nested_delimiter="__",
    )


def default_data_dir() -> Path:
    return Path(os.environ.get("HDC_HOME", Path.home() / ".hdc"))


class ServiceSettings(BaseSettings):
    """What every service needs; subclasses add their own fields and default ports."""

    model_config = service_config("service")

    http_host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int | None = None
    # Empty means the embedded default: a SQLite file under data_dir.
    database_url: str = ""
    bus_url: str = "memory://"
    data_dir: Path = default_data_dir()
    log_level: str = "INFO"
    otlp_endpoint: str | None = None
    # PEM public key (or a path to one) of the gateway's identity signer. Empty: the service
    # trusts no caller and refuses every authenticated request.
    identity_public_key: str = ""
    # Scheduling niceness the service's own process takes when it starts (`hdc-<name>`; not
    # in embedded mode, where services share a process). On a host shared by several
    # services, a process of background work (the orchestrator's workers role, say) set to
    # 10 leaves the CPU to those answering requests first; its work is only later, not lost.
    nice: int = Field(0, ge=0, le=19)

    @property
    def service_name(self) -> str:
        prefix = self.model_config.get("env_prefix", "HDC_SERVICE_")
        return prefix.removeprefix("HDC_").rstrip("_").lower()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / (self.service_name + '.db')}"

    def identity_key_pem(self) -> str:
        key = self.identity_public_key.strip()
        if key and not key.startswith("-----BEGIN"):
            path = Path(key).expanduser()
            if not path.is_file():
                raise ConfigError(f"identity_public_key: file {path} does not exist")
            return path.read_text()
        return key


def _env_keys(cls: type[ServiceSettings], env: Mapping[str, str]) -> dict[str, str]:
    prefix = cls.model_config.get("env_prefix", "")
    found = {}
    for key, value in env.items():
        if prefix and key.startswith(prefix) and key != f"{prefix}CONFIG":
            found[key[len(prefix) :].lower()] = value
    return found


def load_settings(
    cls: type[S], config_file: str | Path | None = None, env: Mapping[str, str] | None = None
) -> S:
    """Build validated settings or raise ConfigError with a message a person can act on."""
    env = os.environ if env is None else env
    prefix = cls.model_config.get("env_prefix", "")
    config_file = config_file or env.get(f"{prefix}CONFIG")
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of settings at top level")
        values.update(loaded)
    top_fields = set(cls.model_fields)
    for key in _env_keys(cls, env):
        if key.split("__", 1)[0] not in top_fields:
            raise ConfigError(
                f"unknown setting {prefix}{key.upper()} (known: {', '.join(sorted(top_fields))})"
            )
    for key in values:
        if key not in top_fields:
            raise ConfigError(
                f"unknown setting '{key}' in {config_file} (known: {', '.join(sorted(top_fields))})"
            )
    try:
        # Environment wins over the file, as operators expect from a Helm values override.
        return cls(**{k: v for k, v in values.items() if k.upper() not in _upper_env(cls, env)})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "?"
        raise ConfigError(f"invalid setting '{where}': {err['msg']}") from None


def _upper_env(cls: type[ServiceSettings], env: Mapping[str, str]) -> set[str]:
    return {k.upper() for k in _env_keys(cls, env)}
