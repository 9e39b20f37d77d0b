"""Client-credentials access tokens from the site's OP, cached until shortly before expiry."""

from __future__ import annotations

import threading
import time

import httpx

from hdc_infoprovider.agent.config import AuthConfig


class TokenError(Exception):
    pass


class ClientCredentials:
    def __init__(self, cfg: AuthConfig, timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._token = ""
        self._expires = 0.0
        self._endpoint = cfg.token_url
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token and time.monotonic() < self._expires - 30:
                return self._token
            self._token, lifetime = self._fetch()
            self._expires = time.monotonic() + lifetime
            return self._token

    def _fetch(self) -> tuple[str, float]:
        data = {"grant_type": "client_credentials"}
        if self.cfg.scope:
            data["scope"] = self.cfg.scope
        try:
            resp = httpx.post(
                self._token_endpoint(),
                data=data,
                auth=(self.cfg.client_id, self.cfg.secret()),
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise TokenError(f"token endpoint unreachable: {exc}") from None
        if resp.status_code != 200:
            raise TokenError(f"token endpoint answered {resp.status_code}: {resp.text[:200]}")
        try:
            body = resp.json()
            return str(body["access_token"]), float(body.get("expires_in", 60))
        except (ValueError, KeyError, TypeError):
            raise TokenError("token endpoint answered without an access_token") from None

    def _token_endpoint(self) -> str:
        if self._endpoint:
            return self._endpoint
        url = f"{self.cfg.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            resp = httpx.get(url, timeout=self.timeout_s)
            resp.raise_for_status()
            self._endpoint = str(resp.json()["token_endpoint"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"OIDC discovery at {url} failed: {exc}") from None
        return self._endpoint
