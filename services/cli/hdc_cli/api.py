"""The HTTP client every `hdc` command uses: one base URL (the gateway), a bearer token,
and errors turned into messages that say what to do next, with exit codes scripts trust."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8000"

# Exit codes: documented in the README's CLI section; scripts may rely on them.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_CONFLICT = 6
EXIT_SERVER = 7
EXIT_TIMEOUT = 8


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Api:
    base_url: str
    token: str | None
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> Api:
        from hdc_cli.auth import current_token

        base = (url or os.environ.get("HDC_URL") or DEFAULT_URL).rstrip("/")
        return cls(base, token or current_token(base))

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers | (extra or {})

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        files: Any = None,
        data: Any = None,
        expect_json: bool = True,
    ) -> Any:
        url = self.base_url + path
        try:
            resp = httpx.request(
                method,
                url,
                json=json,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=self._headers(headers),
                files=files,
                data=data,
                timeout=self.timeout_s,
            )
        except httpx.ConnectError:
            raise CliError(
                f"cannot reach hdc at {self.base_url}: is it running? "
                "Start it with `hdc up` or set HDC_URL to your gateway.",
                EXIT_NOT_RUNNING,
            ) from None
        except httpx.TimeoutException:
            raise CliError(
                f"{method} {url} timed out after {self.timeout_s}s", EXIT_TIMEOUT
            ) from None
        raise_for_status(resp)
        if not expect_json:
            return resp
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def stream_lines(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        read_timeout_s: float | None = None,
    ) -> Iterator[str]:
        """Lines of a streamed response (Server-Sent Events); read_timeout_s bounds silence."""
        try:
            with httpx.stream(
                "GET",
                self.base_url + path,
                headers=self._headers(headers),
                timeout=httpx.Timeout(self.timeout_s, read=read_timeout_s),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise_for_status(resp)
                yield from resp.iter_lines()
        except httpx.ConnectError:
            raise CliError(f"cannot reach hdc at {self.base_url}", EXIT_NOT_RUNNING) from None


def error_message(resp: httpx.Response) -> str:
    """The service's own words: INDIGO `{code,title,message}`, problem+json, or text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or resp.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "detail", "title", "error_description", "error"):
            if body.get(key):
                return str(body[key])
    return str(body)


def raise_for_status(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    msg = error_message(resp)
    code = resp.status_code
    if code == 401:
        raise CliError(f"not authenticated ({msg}); run `hdc login` or set HDC_TOKEN", EXIT_AUTH)
    if code == 403:
        raise CliError(f"not allowed: {msg}", EXIT_AUTH)
    if code == 404:
        raise CliError(f"not found: {msg}", EXIT_NOT_FOUND)
    if code in (409, 412):
        raise CliError(f"conflict: {msg}; fetch it again and retry", EXIT_CONFLICT)
    if code < 500:
        raise CliError(f"rejected ({code}): {msg}", EXIT_USAGE)
    raise CliError(f"hdc failed ({code}): {msg}", EXIT_SERVER)
