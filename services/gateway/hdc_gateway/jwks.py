"""Signing keys of trusted issuers: fetched from their JWKS, cached, refreshed on rotation.

A key set is refetched when its cache ages out, and early when a token names a `kid` it
does not hold (the provider rotated its keys) — but never more often than
`min_refresh_s`, so forged `kid`s cannot make the gateway hammer the provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = logging.getLogger(__name__)

JwksSource = Callable[[], Awaitable[dict[str, Any]]]


class KeySetUnavailable(Exception):
    """The provider's JWKS could not be fetched or parsed."""


class KeySet:
    def __init__(self, source: JwksSource, *, ttl_s: float, min_refresh_s: float) -> None:
        self._source = source
        self._ttl = ttl_s
        self._min_refresh = min_refresh_s
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._bound: dict[tuple[str | None, str], PyJWK | None] = {}
        self._fetched_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._last_error = ""
        self._loaded = False

    @property
    def kids(self) -> list[str | None]:
        return list(self._keys)

    async def get(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for `kid` usable with `alg`, refreshing the set once if it is unknown."""
        since_attempt = time.monotonic() - self._attempted_at
        if not self._loaded:
            if since_attempt >= 1.0:  # a provider that is down is retried once a second
                await self._refresh()
            if not self._loaded:
                raise KeySetUnavailable(self._last_error or "keys not fetched yet")
        elif time.monotonic() - self._fetched_at > self._ttl and since_attempt >= self._min_refresh:
            await self._refresh()
        key = self._pick(kid, alg)
        if key is None and time.monotonic() - self._attempted_at >= self._min_refresh:
            await self._refresh()
            key = self._pick(kid, alg)
        return key

    def _pick(self, kid: str | None, alg: str) -> PyJWK | None:
        if kid is None:
            # No kid in the token: acceptable only when exactly one key could match.
            candidates = [k for k in self._keys if self._bind(k, alg) is not None]
            return self._bind(candidates[0], alg) if len(candidates) == 1 else None
        return self._bind(kid, alg) if kid in self._keys else None

    def _bind(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key as a verifier for `alg`, or None when the key cannot be used with it."""
        try:
            return self._bound[(kid, alg)]
        except KeyError:
            pass
        raw = self._keys[kid]
        key: PyJWK | None = None
        if raw.get("alg") in (None, alg):
            try:
                # PyJWK binds the key type to the algorithm: an RSA key never verifies ES256.
                key = PyJWK(raw, algorithm=alg)
            except PyJWTError:  # PyJWKError, InvalidKeyError: key unusable with this alg
                key = None
        self._bound[(kid, alg)] = key
        return key

    async def _refresh(self) -> None:
        attempted = self._attempted_at
        async with self._lock:
            if self._attempted_at != attempted:
                return  # another request refreshed while this one waited: use its result
            self._attempted_at = time.monotonic()
            try:
                keys = _parse(await self._source())
            except Exception as exc:
                self._last_error = str(exc) or type(exc).__name__
                log.warning("JWKS fetch failed (keeping %d cached keys): %s", len(self._keys), exc)
                return
            self._keys = keys
            self._loaded = True
            self._bound = {}
            self._fetched_at = time.monotonic()


def _parse(document: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    keys: dict[str | None, dict[str, Any]] = {}
    raw_keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(raw_keys, list):
        raise KeySetUnavailable("JWKS document has no 'keys' list")
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue  # encryption keys never verify signatures
        if raw.get("kty") == "oct":
            continue  # symmetric keys have no place in a public key set
        keys[raw.get("kid")] = raw
    return keys
