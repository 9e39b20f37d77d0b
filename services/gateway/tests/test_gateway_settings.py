"""Configuration is validated at start: a bad route or issuer stops the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from hdc_common.errors import ConfigError
from hdc_common.settings import load_settings
from hdc_gateway.settings import GatewaySettings


def _load(tmp_path: Path, text: str) -> GatewaySettings:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_settings(GatewaySettings, path, env={})


def test_yaml_routes_and_issuers(tmp_path: Path) -> None:
    s = _load(
        tmp_path,
        """
embedded_op: false
issuers:
  - issuer: https://kc.example.org/realms/hdc
    audiences: [hdc-gateway]
routes:
  - {prefix: /orchestrator/, upstream: "http://orchestrator:8101/", strip_prefix: true}
  - {prefix: /ranker, upstream: "http://ranker:8104", access: anonymous}
""",
    )
    assert (
        s.routes[0].prefix == "/orchestrator" and s.routes[0].upstream == "http://orchestrator:8101"
    )
    assert s.issuers[0].algorithms[0] == "RS256"


@pytest.mark.parametrize(
    "bad,message",
    [
        ("issuers: [{issuer: x, algorithms: [HS256]}]", "not allowed"),
        ("issuers: [{issuer: x, algorithms: [none]}]", "not allowed"),
        ("routes: [{prefix: nope, upstream: 'http://x'}]", "must start with '/'"),
        ("routes: [{prefix: /x, upstream: 'ftp://x'}]", "http://"),
        ("routes: [{prefix: /x, upstream: 'http://x', acess: anonymous}]", "acess"),
        ("trusted_proxies: [not-a-net]", "not an IP network"),
        ("cors: {allow_origins: ['*'], allow_credentials: true}", "allow_credentials"),
        ("rate_limits: {}", "unknown setting 'rate_limits'"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, bad: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, bad)
