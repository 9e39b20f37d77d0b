"""Who is calling: the identity the gateway verified, forwarded to services in a signed header.

The gateway validates the user's OIDC token, then signs a short-lived internal token
(Ed25519 JWT) and sends it as `X-HDC-Identity`. Services trust only that header and only
when it verifies against the gateway's public key, so a request that skips the gateway
carries no identity and is refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hdc_common.errors import Problem

HEADER = "X-HDC-Identity"
GRPC_METADATA_KEY = "x-hdc-identity"
INTERNAL_ISSUER = "hdc-gateway"
INTERNAL_AUDIENCE = "hdc-services"
PLATFORM_ADMIN = "platform-admin"
GROUP_ADMIN_PREFIX = "group-admin:"


@dataclass(frozen=True)
class Identity:
    subject: str
    issuer: str
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    name: str | None = None
    email: str | None = None
    client_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """`<sub>@<issuer>`, the owner key INDIGO's `createdBy` filter uses."""
        return f"{self.subject}@{self.issuer}"

    @property
    def is_platform_admin(self) -> bool:
        return PLATFORM_ADMIN in self.roles

    def is_group_admin(self, group: str | None) -> bool:
        return bool(group) and (
            self.is_platform_admin or f"{GROUP_ADMIN_PREFIX}{group}" in self.roles
        )

    def can_see(self, owner_subject: str, owner_issuer: str, group: str | None) -> bool:
        """Owners see their own; group admins their group's; platform admins all."""
        if self.subject == owner_subject and self.issuer == owner_issuer:
            return True
        return self.is_platform_admin or self.is_group_admin(group)

    def claims(self) -> dict[str, Any]:
        return {
            "sub": self.subject,
            "oidc_iss": self.issuer,
            "groups": list(self.groups),
            "roles": list(self.roles),
            "scope": " ".join(self.scopes),
            "name": self.name,
            "email": self.email,
            "client_id": self.client_id,
        }

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        return cls(
            subject=str(claims["sub"]),
            issuer=str(claims["oidc_iss"]),
            groups=tuple(claims.get("groups") or ()),
            roles=tuple(claims.get("roles") or ()),
            scopes=tuple((claims.get("scope") or "").split()),
            name=claims.get("name"),
            email=claims.get("email"),
            client_id=claims.get("client_id"),
        )


def generate_keypair() -> tuple[str, str]:
    """A fresh Ed25519 key pair as (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


class InternalTokenSigner:
    """Used by the gateway only: turns a verified identity into the internal header value."""

    def __init__(self, private_key_pem: str, ttl_s: int = 60) -> None:
        self._key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        self._ttl = ttl_s

    def sign(self, identity: Identity) -> str:
        now = int(time.time())
        claims = identity.claims() | {
            "iss": INTERNAL_ISSUER,
            "aud": INTERNAL_AUDIENCE,
            "iat": now,
            "exp": now + self._ttl,
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA")


class InternalTokenVerifier:
    def __init__(self, public_key_pem: str, leeway_s: int = 5) -> None:
        self._key = (
            serialization.load_pem_public_key(public_key_pem.encode()) if public_key_pem else None
        )
        self._leeway = leeway_s

    def verify(self, token: str) -> Identity:
        if self._key is None:
            raise Problem(401, "Unauthorized", "this service trusts no identity signer")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["EdDSA"],
                audience=INTERNAL_AUDIENCE,
                issuer=INTERNAL_ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "oidc_iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Problem(401, "Unauthorized", f"invalid {HEADER}: {exc}") from None
        return Identity.from_claims(claims)


def identity_from_headers(headers: Mapping[str, str], verifier: InternalTokenVerifier) -> Identity:
    """The one way services learn who called. Raises Problem(401) when it cannot tell."""
    token = headers.get(HEADER) or headers.get(HEADER.lower())
    if not token:
        raise Problem(
            401,
            "Unauthorized",
            "no verified identity: call this service through the hdc gateway",
        )
    return verifier.verify(token)
