"""Agent token verification: standard OIDC access-token checks, one site per client."""

from __future__ import annotations

import time

import pytest
from hdc_common.settings import load_settings
from hdc_infoprovider.agent_auth import (
    AgentClient,
    AgentTokenVerifier,
    AuthError,
    IdpUnavailable,
    TrustedIssuer,
    client_map,
)
from hdc_infoprovider.service import InfoProviderSettings

from tests.fakes.oidc_provider import FakeOIDCProvider


@pytest.fixture
def op():
    with FakeOIDCProvider() as provider:
        yield provider


def verifier(op, **issuer) -> AgentTokenVerifier:
    return AgentTokenVerifier(
        [TrustedIssuer(issuer=op.issuer, **issuer)],
        [AgentClient(site_id="site-a", client_id="agent-a", issuer=op.issuer)],
        leeway_s=0,
        jwks_refresh_cooldown_s=0,
    )


def test_valid_token_maps_to_its_site_via_discovery(op):
    who = verifier(op).verify(op.issue_token("agent-a"))
    assert (who.site_id, who.client_id, who.issuer) == ("site-a", "agent-a", op.issuer)
    # Keycloak names the client in azp only: accepted as well.
    who = verifier(op).verify(op.issue_token("agent-a", client_id=None))
    assert who.site_id == "site-a"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 10}, "Signature has expired"),
        ({"iss": "https://evil.example.org/realms/x"}, "not on the allow-list"),
        ({"azp": "agent-z", "client_id": "agent-z"}, "not registered for any site"),
        ({"azp": None, "client_id": None}, "names no client"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(op, claims, reason):
    with pytest.raises(AuthError, match=reason):
        verifier(op).verify(op.issue_token("agent-a", **claims))


def test_a_verified_token_is_remembered_until_it_expires(op, monkeypatch):
    v = verifier(op)
    token = op.issue_token("agent-a", exp=int(time.time()) + 2)
    assert v.verify(token).site_id == "site-a"
    # Reused tokens skip the signature check...
    monkeypatch.setattr(v, "_verify", lambda t: pytest.fail("verified again"))
    assert v.verify(token).client_id == "agent-a"
    monkeypatch.undo()
    # ...but never past their exp: then the full check runs, and refuses it.
    time.sleep(2.1)
    with pytest.raises(AuthError, match="expired"):
        v.verify(token)
    # A refused token is never remembered.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(AuthError):
            v.verify(forged)


def test_forged_signature_and_garbage_are_refused(op):
    other = FakeOIDCProvider()  # a different key pair, never started
    other.issuer = op.issuer
    forged = other.issue_token("agent-a")
    with pytest.raises(AuthError, match="no key of"):
        verifier(op).verify(forged)
    with pytest.raises(AuthError, match="not a JWT"):
        verifier(op).verify("a.b.c")
    with pytest.raises(AuthError, match="no access_token"):
        verifier(op).verify(None)


def test_key_rotation_is_picked_up_from_the_jwks(op):
    v = verifier(op)
    assert v.verify(op.issue_token("agent-a")).site_id == "site-a"
    op.rotate_key()
    assert v.verify(op.issue_token("agent-a")).site_id == "site-a"


def test_audience_is_checked_when_configured(op):
    v = verifier(op, audience="hdc-infoprovider")
    assert v.verify(op.issue_token("agent-a", aud="hdc-infoprovider")).site_id == "site-a"
    with pytest.raises(AuthError, match="Audience"):
        v.verify(op.issue_token("agent-a", aud="account"))


def test_unreachable_idp_is_transient_not_a_refusal(op, unused_port):
    v = AgentTokenVerifier(
        [TrustedIssuer(issuer=op.issuer, jwks_uri=f"http://127.0.0.1:{unused_port}/certs")],
        [AgentClient(site_id="site-a", client_id="agent-a", issuer=op.issuer)],
    )
    with pytest.raises(IdpUnavailable):
        v.verify(op.issue_token("agent-a"))


def test_a_client_maps_to_exactly_one_site(tmp_path):
    clients = [
        AgentClient(site_id="site-a", client_id="agent", issuer="https://op"),
        AgentClient(site_id="site-b", client_id="agent", issuer="https://op"),
    ]
    with pytest.raises(ValueError, match="exactly one site"):
        client_map(clients)
    cfg = tmp_path / "ip.yaml"
    cfg.write_text(
        "trusted_issuers: [{issuer: 'https://op'}]\n"
        "agent_clients:\n"
        "  - {site_id: site-a, client_id: agent, issuer: 'https://op'}\n"
        "  - {site_id: site-b, client_id: agent, issuer: 'https://op'}\n"
    )
    with pytest.raises(Exception, match="exactly one site"):
        load_settings(InfoProviderSettings, cfg, env={})
    cfg.write_text("agent_clients: [{site_id: a, client_id: c, issuer: 'https://other'}]\n")
    with pytest.raises(Exception, match="not in trusted_issuers"):
        load_settings(InfoProviderSettings, cfg, env={})
