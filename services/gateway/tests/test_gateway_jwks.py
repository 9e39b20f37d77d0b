"""The key-set cache: refetch on unknown kid, but bounded; stale keys survive an outage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hdc_gateway.jwks import KeySet, KeySetUnavailable
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def _rsa_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return RSAAlgorithm.to_jwk(key, as_dict=True) | {"kid": kid, "use": "sig"}


def _ec_jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return ECAlgorithm.to_jwk(key, as_dict=True) | {"kid": kid}


class Provider:
    """A JWKS document that changes when the provider rotates, counting downloads."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise ConnectionError("provider down")
        return {"keys": list(self.keys)}


def test_unknown_kid_refetches_at_most_once_per_interval() -> None:
    async def scenario() -> None:
        provider = Provider(_rsa_jwk("a"))
        keys = KeySet(provider, ttl_s=300, min_refresh_s=60)
        assert await keys.get("a", "RS256") is not None
        assert provider.fetches == 1
        # Forged kids: the first unknown one may refetch... no: the set was just fetched.
        for _ in range(5):
            assert await keys.get("forged", "RS256") is None
        assert provider.fetches == 1

    asyncio.run(scenario())


def test_rotation_is_found_by_refetch() -> None:
    async def scenario() -> None:
        provider = Provider(_rsa_jwk("old"))
        keys = KeySet(provider, ttl_s=300, min_refresh_s=0)
        assert await keys.get("old", "RS256") is not None
        provider.keys = [_rsa_jwk("new")]
        assert await keys.get("new", "RS256") is not None
        assert provider.fetches == 2

    asyncio.run(scenario())


def test_key_type_must_fit_the_algorithm() -> None:
    async def scenario() -> None:
        provider = Provider(
            _rsa_jwk("r"), _ec_jwk("e"), {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}
        )
        keys = KeySet(provider, ttl_s=300, min_refresh_s=60)
        assert await keys.get("r", "ES256") is None
        assert await keys.get("e", "ES256") is not None
        assert await keys.get("e", "RS256") is None
        assert await keys.get("s", "HS256") is None  # symmetric keys are never loaded
        # No kid: only acceptable when exactly one key fits.
        assert await keys.get(None, "ES256") is not None
        assert set(keys.kids) == {"r", "e"}

    asyncio.run(scenario())


def test_outage_keeps_cached_keys_and_first_fetch_failure_is_reported() -> None:
    async def scenario() -> None:
        provider = Provider(_rsa_jwk("a"))
        keys = KeySet(provider, ttl_s=0.01, min_refresh_s=0)
        assert await keys.get("a", "RS256") is not None
        provider.down = True
        await asyncio.sleep(0.02)
        assert await keys.get("a", "RS256") is not None  # stale but kept
        empty = KeySet(Provider(), ttl_s=300, min_refresh_s=0)
        down = Provider()
        down.down = True
        with pytest.raises(KeySetUnavailable, match="provider down"):
            await KeySet(down, ttl_s=300, min_refresh_s=0).get("a", "RS256")
        assert await empty.get("a", "RS256") is None

    asyncio.run(scenario())
