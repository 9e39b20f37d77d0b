"""The error model: RFC 9457 problem details, and the configuration error that stops a service."""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"


class ConfigError(Exception):
    """Bad configuration found at start. Its message is one line a person can act on."""


class Problem(Exception):
    """An error a handler raises to answer with `application/problem+json`."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        type: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.headers = headers or {}
        self.extensions = extensions

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extensions)
        return body


def bad_request(detail: str, **ext: Any) -> Problem:
    return Problem(400, "Bad Request", detail, **ext)


def not_found(detail: str) -> Problem:
    return Problem(404, "Not Found", detail)


def conflict(detail: str) -> Problem:
    return Problem(409, "Conflict", detail)
