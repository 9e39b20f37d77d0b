"""Development tokens for embedded mode, signed by the embedded OpenID provider's key.

`hdc` (the CLI) calls `mint(data_dir, subject, groups)` and sends the result as a bearer
token; the gateway validates it exactly like a Keycloak token (signature via JWKS, issuer,
audience, expiry), so nothing is switched off in embedded mode.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import jwt

from hdc_gateway.embedded_op import (
    EMBEDDED_ALGORITHM,
    EMBEDDED_ISSUER,
    load_or_create_key,
    public_jwk,
)


def mint(
    data_dir: str | Path,
    subject: str,
    groups: Sequence[str] = (),
    *,
    roles: Sequence[str] = (),
    scopes: Sequence[str] = ("openid", "profile"),
    audience: str = "hdc-gateway",
    ttl_s: int = 3600,
    name: str | None = None,
    email: str | None = None,
) -> str:
    """A signed access token for `subject` with the given groups and provider roles.

    `data_dir` is the gateway's data_dir (the same `HDC_GATEWAY_DATA_DIR`); the key is
    created there on first use. `roles` land in `realm_access.roles` like Keycloak's, so
    e.g. roles=["platform-admin"] makes a platform admin under the default role mapping.
    """
    if not subject:
        raise ValueError("subject must not be empty")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    key = load_or_create_key(data_dir)
    now = int(time.time())
    claims = {
        "iss": EMBEDDED_ISSUER,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
        "groups": list(groups),
        "realm_access": {"roles": list(roles)},
        "preferred_username": subject,
    }
    if name:
        claims["name"] = name
    if email:
        claims["email"] = email
    return jwt.encode(
        claims, key, algorithm=EMBEDDED_ALGORITHM, headers={"kid": public_jwk(key)["kid"]}
    )
