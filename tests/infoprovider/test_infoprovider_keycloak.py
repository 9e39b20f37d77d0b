"""The agent's client-credentials token from the real Keycloak passes the registry's verifier
unchanged (tests/infra/keycloak.sh starts Keycloak with tests/keycloak/hdc-realm.json)."""

from __future__ import annotations

import os

import httpx
import pytest
from hdc_infoprovider.agent.config import AuthConfig
from hdc_infoprovider.agent.oidc import ClientCredentials, TokenError
from hdc_infoprovider.agent_auth import AgentClient, AgentTokenVerifier, AuthError, TrustedIssuer

pytestmark = pytest.mark.keycloak

KEYCLOAK = os.environ.get("HDC_TEST_KEYCLOAK_URL", "http://127.0.0.1:18080")
ISSUER = f"{KEYCLOAK}/realms/hdc"


@pytest.fixture(scope="module")
def keycloak() -> str:
    # make test starts Keycloak (tests/infra/keycloak.sh); not reaching it is a failure.
    httpx.get(f"{ISSUER}/.well-known/openid-configuration", timeout=30).raise_for_status()
    return ISSUER


def test_keycloak_client_credentials_token_maps_to_its_site(keycloak):
    agent1 = ClientCredentials(
        AuthConfig(issuer=keycloak, client_id="site-agent-1", client_secret="site-agent-1-secret")
    )
    agent2 = ClientCredentials(
        AuthConfig(issuer=keycloak, client_id="site-agent-2", client_secret="site-agent-2-secret")
    )
    verifier = AgentTokenVerifier(
        [TrustedIssuer(issuer=keycloak)],
        [AgentClient(site_id="site-a", client_id="site-agent-1", issuer=keycloak)],
    )
    who = verifier.verify(agent1.token())
    assert (who.site_id, who.client_id, who.issuer) == ("site-a", "site-agent-1", keycloak)
    with pytest.raises(AuthError, match="not registered for any site"):
        verifier.verify(agent2.token())
    bad = ClientCredentials(
        AuthConfig(issuer=keycloak, client_id="site-agent-1", client_secret="wrong")
    )
    with pytest.raises(TokenError, match="401"):
        bad.token()
