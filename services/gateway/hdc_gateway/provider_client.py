"""HTTP calls to OpenID providers: discovery, JWKS download, RFC 7662 introspection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from hdc_gateway.jwks import JwksSource
from hdc_gateway.settings import IssuerSettings


class ProviderClient:
    def __init__(self, session_factory: Any, timeout_s: float = 5.0) -> None:
        # The session is created lazily inside the running event loop (aiohttp requires it).
        self._session_factory = session_factory
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._discovered: dict[str, dict[str, Any]] = {}

    async def _get_json(self, url: str) -> Any:
        session: aiohttp.ClientSession = self._session_factory()
        async with session.get(url, timeout=self._timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {url} answered {resp.status}")
            return await resp.json(content_type=None)

    async def discovery(self, issuer: str) -> dict[str, Any]:
        if issuer not in self._discovered:
            doc = await self._get_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
            if not isinstance(doc, dict) or doc.get("issuer") != issuer:
                # OpenID Connect Discovery §4.3: the document must name the same issuer.
                raise RuntimeError(f"discovery document of {issuer} names another issuer")
            self._discovered[issuer] = doc
        return self._discovered[issuer]

    def jwks_source(self, config: IssuerSettings) -> JwksSource:
        async def fetch() -> dict[str, Any]:
            uri = config.jwks_uri or (await self.discovery(config.issuer)).get("jwks_uri")
            if not uri:
                raise RuntimeError(f"{config.issuer} publishes no jwks_uri")
            doc = await self._get_json(uri)
            if not isinstance(doc, dict):
                raise RuntimeError(f"JWKS at {uri} is not a JSON object")
            return doc

        return fetch

    async def introspect(self, config: IssuerSettings, token: str) -> Mapping[str, Any]:
        endpoint = config.introspection_endpoint or (await self.discovery(config.issuer)).get(
            "introspection_endpoint"
        )
        if not endpoint:
            raise RuntimeError(f"{config.issuer} publishes no introspection_endpoint")
        session: aiohttp.ClientSession = self._session_factory()
        auth = aiohttp.BasicAuth(config.introspection_client_id, config.introspection_client_secret)
        async with session.post(
            endpoint,
            data={"token": token, "token_type_hint": "access_token"},
            auth=auth,
            headers={"Accept": "application/json"},
            timeout=self._timeout,
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"introspection endpoint answered {resp.status}")
            answer = await resp.json(content_type=None)
        if not isinstance(answer, dict):
            raise RuntimeError("introspection answer is not a JSON object")
        return answer
