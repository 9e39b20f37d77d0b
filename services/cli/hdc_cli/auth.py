"""Tokens for the CLI: `HDC_TOKEN`, a cached OIDC token (refreshed when it expires), or in
embedded mode a development token signed by the local gateway's key."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import jwt
from hdc_cli.api import EXIT_AUTH, CliError

REFRESH_MARGIN_S = 60


def token_path() -> Path:
    from hdc_common.settings import default_data_dir

    return default_data_dir() / "cli-token.json"


def _expiry(access_token: str) -> float:
    try:
        return float(jwt.decode(access_token, options={"verify_signature": False})["exp"])
    except (jwt.PyJWTError, KeyError, ValueError):
        return 0.0


def save(doc: dict[str, Any]) -> None:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(doc))


def load() -> dict[str, Any] | None:
    try:
        return json.loads(token_path().read_text())
    except (OSError, ValueError):
        return None


def is_local(base_url: str) -> bool:
    return urlparse(base_url).hostname in ("127.0.0.1", "localhost", "::1")


def embedded_token(subject: str = "developer", groups: tuple[str, ...] = ()) -> str | None:
    """A development token when this machine runs hdc in embedded mode, else None."""
    from hdc_cli import embedded

    home = embedded.data_dir()
    if not embedded.state_path(home).exists():
        return None
    try:
        from hdc_gateway.devtoken import mint
    except ImportError:
        return None
    return mint(home / "data", subject, groups)


def current_token(base_url: str) -> str | None:
    if os.environ.get("HDC_TOKEN"):
        return os.environ["HDC_TOKEN"]
    doc = load()
    if doc and doc.get("url") == base_url:
        if _expiry(doc["access_token"]) - REFRESH_MARGIN_S > time.time():
            return doc["access_token"]
        if doc.get("refresh_token") and doc.get("token_endpoint"):
            return refresh(doc)
    if is_local(base_url):
        return embedded_token()
    return None


def refresh(doc: dict[str, Any]) -> str:
    resp = httpx.post(
        doc["token_endpoint"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": doc["refresh_token"],
            "client_id": doc["client_id"],
        },
        timeout=15,
    )
    if resp.status_code != 200:
        raise CliError("your session expired; run `hdc login` again", EXIT_AUTH)
    tokens = resp.json()
    doc["access_token"] = tokens["access_token"]
    doc["refresh_token"] = tokens.get("refresh_token", doc["refresh_token"])
    save(doc)
    return doc["access_token"]


def device_login(
    base_url: str, issuer: str, client_id: str, scope: str, echo: Any
) -> dict[str, Any]:
    """OAuth 2.0 device authorization grant (RFC 8628) against the issuer."""
    try:
        meta = httpx.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=15)
        meta.raise_for_status()
        conf = meta.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(f"cannot read OpenID configuration of {issuer}: {exc}", EXIT_AUTH) from None
    if "device_authorization_endpoint" not in conf:
        raise CliError(f"{issuer} does not offer the device authorization grant", EXIT_AUTH)
    start = httpx.post(
        conf["device_authorization_endpoint"],
        data={"client_id": client_id, "scope": scope},
        timeout=15,
    )
    if start.status_code != 200:
        raise CliError(f"device authorization refused: {start.text}", EXIT_AUTH)
    grant = start.json()
    echo(
        f"Open {grant.get('verification_uri_complete') or grant['verification_uri']} "
        f"and enter the code {grant['user_code']}"
    )
    interval = float(grant.get("interval", 5))
    deadline = time.monotonic() + float(grant.get("expires_in", 600))
    while time.monotonic() < deadline:
        time.sleep(interval)
        resp = httpx.post(
            conf["token_endpoint"],
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": grant["device_code"],
                "client_id": client_id,
            },
            timeout=15,
        )
        body = resp.json()
        if resp.status_code == 200:
            doc = {
                "url": base_url,
                "issuer": issuer,
                "client_id": client_id,
                "token_endpoint": conf["token_endpoint"],
                "access_token": body["access_token"],
                "refresh_token": body.get("refresh_token"),
            }
            save(doc)
            return doc
        error = body.get("error")
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise CliError(f"login failed: {body.get('error_description') or error}", EXIT_AUTH)
    raise CliError("login timed out: the code was not entered in time", EXIT_AUTH)
