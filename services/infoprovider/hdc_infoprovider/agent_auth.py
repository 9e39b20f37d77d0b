"""Who sent a report: verification of the agent's OIDC access token (client credentials).

Standard JWT access-token verification, so Keycloak, INDIGO IAM or any OP works unchanged:
signature against the issuer's JWKS (discovered from `/.well-known/openid-configuration`
unless configured, refreshed when an unknown `kid` shows up, i.e. on key rotation), issuer on
an allow-list, expiry, optional audience. The client id (`client_id`, RFC 9068; `azp` for
Keycloak; `clientId` for older Keycloak) must map to exactly one site.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
# A verified token is remembered until its `exp` (agents send the same token with every
# report until it expires), but never longer than this, and for at most this many tokens.
VERIFIED_TTL_S = 300.0
VERIFIED_MAX = 10_000


class TrustedIssuer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1)
    # Empty: discovered from the issuer's openid-configuration.
    jwks_uri: str = ""
    # Empty: the audience is not checked (Keycloak client-credentials tokens often carry none).
    audience: str = ""


class AgentClient(BaseModel):
    """One site agent: the OIDC client it authenticates as, at which issuer."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    issuer: str = Field(min_length=1)


class AuthError(Exception):
    """The report's token does not prove a site: the report is refused (kept with the reason)."""


class IdpUnavailable(Exception):
    """The issuer's JWKS could not be fetched: transient, the report is retried, not refused."""


@dataclass(frozen=True)
class AgentIdentity:
    site_id: str
    client_id: str
    issuer: str


def client_map(clients: list[AgentClient]) -> dict[tuple[str, str], str]:
    """(issuer, client_id) -> site id; a client registered for two sites is a config error."""
    found: dict[tuple[str, str], str] = {}
    for c in clients:
        key = (c.issuer.rstrip("/"), c.client_id)
        if key in found and found[key] != c.site_id:
            raise ValueError(
                f"agent client {c.client_id!r} of {c.issuer} is registered for two sites "
                f"({found[key]!r} and {c.site_id!r}); a client must map to exactly one site"
            )
        found[key] = c.site_id
    return found


class AgentTokenVerifier:
    def __init__(
        self,
        issuers: list[TrustedIssuer],
        clients: list[AgentClient],
        leeway_s: int = 60,
        http_timeout_s: float = 5.0,
        jwks_refresh_cooldown_s: float = 30.0,
    ) -> None:
        # An unknown kid refetches the JWKS at most once per cooldown (no refetch storms
        # from forged tokens); a real rotation is picked up within that time.
        self._cooldown = jwks_refresh_cooldown_s
        self._issuers = {i.issuer.rstrip("/"): i for i in issuers}
        self._clients = client_map(clients)
        self._leeway = leeway_s
        self._timeout = http_timeout_s
        self._jwks: dict[str, jwt.PyJWKClient] = {}
        # Parsed keys by (issuer, kid): building an RSA key from a JWK costs more than
        # verifying a signature, and agents report all the time.
        self._keys: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        # token -> (identity, monotonic deadline). Only successes are kept: a refused token
        # is checked in full every time, with its reason.
        self._verified: dict[str, tuple[AgentIdentity, float]] = {}

    def verify(self, token: Any) -> AgentIdentity:
        if not isinstance(token, str) or not token:
            raise AuthError("the report envelope carries no access_token")
        known = self._verified.get(token)
        if known is not None:
            if time.monotonic() < known[1]:
                return known[0]
            self._verified.pop(token, None)
        who, exp = self._verify(token)
        # Until `exp` itself, not exp + leeway: a cached answer is never one that a full
        # check would refuse. (Wall clock to monotonic: a clock step shortens, at worst
        # lengthens by the step, a life capped at VERIFIED_TTL_S anyway.)
        life = min(exp - time.time(), VERIFIED_TTL_S)
        if life > 0:
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            self._verified[token] = (who, time.monotonic() + life)
        return who

    def _verify(self, token: str) -> tuple[AgentIdentity, float]:
        try:
            # Header and claims in one parse: each parse re-checks the token's characters,
            # which costs more than the RS256 signature check itself.
            parsed = jwt.decode_complete(token, options={"verify_signature": False})
            unverified, header = parsed["payload"], parsed["header"]
        except jwt.PyJWTError as exc:
            raise AuthError(f"access_token is not a JWT: {exc}") from None
        issuer = str(unverified.get("iss", "")).rstrip("/")
        trusted = self._issuers.get(issuer)
        if trusted is None:
            raise AuthError(f"token issuer {issuer or '(none)'!r} is not on the allow-list")
        if header.get("alg") not in ALGORITHMS:
            raise AuthError(f"token algorithm {header.get('alg')!r} is not accepted")
        key = self._signing_key(trusted, token, header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                issuer=unverified.get("iss"),
                audience=trusted.audience or None,
                leeway=self._leeway,
                options={"require": ["exp", "iss"], "verify_aud": bool(trusted.audience)},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"access_token rejected: {exc}") from None
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("clientId")
        if not client_id:
            raise AuthError("access_token names no client (client_id/azp claim missing)")
        site_id = self._clients.get((issuer, str(client_id)))
        if site_id is None:
            raise AuthError(f"client {client_id!r} of {issuer} is not registered for any site")
        try:
            exp = float(claims["exp"])
        except (TypeError, ValueError):  # PyJWT checked it is a number; never cache otherwise
            exp = 0.0
        return AgentIdentity(site_id=site_id, client_id=str(client_id), issuer=issuer), exp

    def _signing_key(self, trusted: TrustedIssuer, token: str, header: dict[str, Any]) -> Any:
        kid = str(header.get("kid", ""))
        cached = self._keys.get((trusted.issuer, kid)) if kid else None
        if cached is not None:
            return cached
        client = self._jwks_client(trusted)
        try:
            # PyJWKClient refetches the JWKS once when the kid is unknown (key rotation).
            key = client.get_signing_key_from_jwt(token).key
            if kid:
                self._keys[(trusted.issuer, kid)] = key
            return key
        except jwt.PyJWKClientConnectionError as exc:
            raise IdpUnavailable(f"JWKS of {trusted.issuer} unreachable: {exc}") from None
        except jwt.PyJWKClientError as exc:
            raise AuthError(f"no key of {trusted.issuer} verifies this token: {exc}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"access_token is not a valid JWT: {exc}") from None

    def _jwks_client(self, trusted: TrustedIssuer) -> jwt.PyJWKClient:
        issuer = trusted.issuer.rstrip("/")
        with self._lock:
            client = self._jwks.get(issuer)
        if client is not None:
            return client
        uri = trusted.jwks_uri or self._discover(issuer)
        client = jwt.PyJWKClient(
            uri,
            cache_keys=True,
            lifespan=300,
            timeout=int(self._timeout),
            cooldown_duration=self._cooldown,
        )
        with self._lock:
            self._jwks[issuer] = client
        return client

    def _discover(self, issuer: str) -> str:
        url = f"{issuer}/.well-known/openid-configuration"
        try:
            resp = httpx.get(url, timeout=self._timeout)
            resp.raise_for_status()
            uri = resp.json()["jwks_uri"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise IdpUnavailable(f"discovery at {url} failed: {exc}") from None
        if not isinstance(uri, str) or not uri:
            raise IdpUnavailable(f"discovery at {url} names no jwks_uri")
        return uri
