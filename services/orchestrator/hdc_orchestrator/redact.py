"""Keep secrets (private keys, passwords, tokens) out of everything the API shows or logs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "********"
SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|private[_-]?key|privkey|credential|api[_-]?key)", re.I
)
PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)
INLINE_SECRET = re.compile(
    r"(?i)\b(pass(?:word|wd)?|secret|token|api[_-]?key)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"
)


def redact_text(text: str, secret_values: Iterable[str] = ()) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, MASK)
    text = PEM_PRIVATE.sub(MASK, text)
    return INLINE_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def redact(value: Any, secret_values: Iterable[str] = ()) -> Any:
    secrets = list(secret_values)
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and SECRET_KEY.search(k) else redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value
