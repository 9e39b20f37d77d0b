"""With the gateway's identity key, the model API refuses callers that skipped the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from hdc_common.errors import ConfigError
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair
from hdc_serving.api.app import create_app
from hdc_serving.cli import _parser, _settings
from hdc_serving.settings import ServingSettings

ALICE = Identity(subject="alice", issuer="urn:test")


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keypair()


@pytest.fixture(scope="module")
def guarded_server(make_server, keys):
    return make_server(model="toy", identity_public_key=keys[1])


def test_model_api_needs_a_gateway_signed_identity(guarded_server, keys):
    http = guarded_server.http
    signed = {"X-HDC-Identity": InternalTokenSigner(keys[0]).sign(ALICE)}
    for path in ("/v2/", "/v2/models/", "/v2/models/toy", "/oip/v2"):
        bare = http.get(path)
        assert bare.status_code == 401, (path, bare.text)
        assert bare.headers["content-type"].startswith("application/problem+json")
        assert "gateway" in bare.json()["detail"]
        assert http.get(path, headers=signed).status_code == 200, path
    assert http.post("/v2/models/toy/predict/", data={"x": "1"}).status_code == 401
    # Signed by someone else, or not a token at all.
    forged = InternalTokenSigner(generate_keypair()[0]).sign(ALICE)
    assert http.get("/v2/models/", headers={"X-HDC-Identity": forged}).status_code == 401
    assert http.get("/v2/models/", headers={"X-HDC-Identity": "junk"}).status_code == 401


def test_probes_docs_and_metrics_stay_open(guarded_server):
    http = guarded_server.http
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/oip/v2/health/live", "/"):
        assert http.get(path).status_code == 200, path


def test_identity_key_from_the_command_line(tmp_path: Path, keys) -> None:
    pem = tmp_path / "identity.pub"
    pem.write_text(keys[1])
    args = _parser().parse_args(["run", "--identity-public-key", str(pem)])
    settings = _settings(args)
    assert settings.identity_public_key == str(pem)
    assert settings.identity_key_pem() == keys[1]


def test_unusable_identity_key_is_a_configuration_error(tmp_path: Path) -> None:
    bad = ServingSettings(data_dir=tmp_path, identity_public_key="-----BEGIN PUBLIC KEY-----\nx")
    with pytest.raises(ConfigError):
        create_app(bad)
    missing = ServingSettings(data_dir=tmp_path, identity_public_key=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError):
        create_app(missing)
