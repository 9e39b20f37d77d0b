"""Access-token validation: JWTs against the issuer's JWKS, opaque tokens by RFC 7662.

Order matters for safety: the algorithm is checked against the allow-list and the
issuer against the trusted issuers *before* any key is looked up, so neither `alg=none`,
an HMAC signed with a public key, nor a token from an unknown provider ever reaches a
verifier or makes the gateway fetch anything.
"""

from __future__ import annotations

import binascii
import json
import time
from base64 import urlsafe_b64decode
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from hdc_common.identity import Identity

from hdc_gateway.jwks import KeySet, KeySetUnavailable
from hdc_gateway.roles import RoleMapper
from hdc_gateway.settings import IssuerSettings

Introspect = Callable[[IssuerSettings, str], Awaitable[Mapping[str, Any]]]


_NOT_ACCESS_TOKENS = frozenset({"ID", "Refresh", "Offline", "Logout"})


class TokenError(Exception):
    """A token that must be refused: 401 with `WWW-Authenticate: Bearer error=...`."""

    def __init__(self, description: str, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class ProviderUnavailable(Exception):
    """The provider could not be asked (JWKS or introspection down): 503, not 401."""


@dataclass(frozen=True)
class Validated:
    identity: Identity
    expires_at: float  # the token's own `exp` (epoch seconds)


def _b64json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class TokenValidator:
    def __init__(
        self,
        issuers: Mapping[str, IssuerSettings],
        key_sets: Mapping[str, KeySet],
        roles: RoleMapper,
        *,
        leeway_s: int,
        introspect: Introspect | None = None,
    ) -> None:
        self._issuers = dict(issuers)
        self._key_sets = dict(key_sets)
        self._roles = roles
        self._leeway = leeway_s
        self._introspect = introspect

    async def validate(self, token: str) -> Validated:
        if looks_like_jwt(token):
            return await self._validate_jwt(token)
        return await self._validate_opaque(token)

    async def _validate_jwt(self, token: str) -> Validated:
        head_b64, payload_b64, _ = token.split(".")
        try:
            header = _b64json(head_b64)
            unverified = _b64json(payload_b64)
        except (ValueError, UnicodeError, binascii.Error):
            raise TokenError("malformed token: header or payload is not base64url JSON") from None
        alg = header.get("alg")
        issuer = unverified.get("iss")
        config = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if config is None:
            raise TokenError(f"issuer {str(issuer)[:200]!r} is not trusted")
        if alg not in config.algorithms:
            raise TokenError(f"signing algorithm {str(alg)[:20]!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token: kid is not a string")
        try:
            key = await self._key_sets[issuer].get(kid, alg)
        except KeySetUnavailable as exc:
            raise ProviderUnavailable(f"signing keys of {issuer} unavailable: {exc}") from None
        if key is None:
            raise TokenError(
                f"signing key {str(kid)[:80]!r} is unknown to issuer {issuer} or unfit for {alg}"
            )
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=config.audiences,
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"token audience is not one of {config.audiences}") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"token rejected: {exc}") from None
        if claims.get("typ") in _NOT_ACCESS_TOKENS:
            # Keycloak marks ID and refresh tokens; neither may be used as a bearer token.
            raise TokenError(f"a {claims['typ']} token is not an access token")
        if config.introspect == "always":
            await self._check_active(config, token)
        return Validated(self._roles.identity(claims, issuer), float(claims["exp"]))

    async def _check_active(self, config: IssuerSettings, token: str) -> Mapping[str, Any]:
        if self._introspect is None or not config.introspection_enabled:
            raise ProviderUnavailable(f"introspection is not configured for {config.issuer}")
        try:
            answer = await self._introspect(config, token)
        except TokenError:
            raise
        except Exception as exc:
            raise ProviderUnavailable(f"introspection at {config.issuer} failed: {exc}") from None
        if answer.get("active") is not True:
            raise TokenError("token is not active (revoked or expired at the provider)")
        return answer

    async def _validate_opaque(self, token: str) -> Validated:
        candidates = [c for c in self._issuers.values() if c.introspection_enabled]
        if not candidates:
            raise TokenError("token is not a JWT and no issuer is configured for introspection")
        for config in candidates:
            answer = await self._check_active_or_none(config, token)
            if answer is None:
                continue
            issuer = answer.get("iss", config.issuer)
            if issuer != config.issuer:
                raise TokenError(f"introspected token names issuer {issuer!r}, not {config.issuer}")
            now = time.time()
            exp = answer.get("exp")
            if not isinstance(exp, int | float) or exp + self._leeway < now:
                raise TokenError("token has expired")
            nbf = answer.get("nbf")
            if isinstance(nbf, int | float) and nbf - self._leeway > now:
                raise TokenError("token is not valid yet (nbf/iat in the future)")
            aud = answer.get("aud")
            if aud is not None:
                auds = [aud] if isinstance(aud, str) else list(aud)
                if not set(auds) & set(config.audiences):
                    raise TokenError(f"token audience is not one of {config.audiences}")
            if not answer.get("sub"):
                raise TokenError("introspected token has no subject")
            return Validated(self._roles.identity(answer, config.issuer), float(exp))
        raise TokenError("token is not active at any trusted issuer")

    async def _check_active_or_none(
        self, config: IssuerSettings, token: str
    ) -> Mapping[str, Any] | None:
        try:
            return await self._check_active(config, token)
        except TokenError:
            return None
