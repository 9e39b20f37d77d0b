"""Credentials at rest: Fernet-encrypted JSON, and redaction of secrets in anything we show."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from hdc_common.errors import ConfigError

# Keys whose values are secrets in IM auth lines and cloud credential maps.
SECRET_KEYS = frozenset(
    {"password", "token", "private_key", "secret", "secret_key", "proxy", "key", "client_secret"}
)
_PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)


def load_fernet(secret_key: str, data_dir: Path) -> Fernet:
    """The configured key, or one generated once and kept (0600) under data_dir."""
    if secret_key:
        try:
            return Fernet(secret_key.encode())
        except (ValueError, TypeError):
            raise ConfigError(
                "secret_key: must be a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    path = Path(data_dir) / "im-secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Fernet.generate_key())
        path.chmod(0o600)
    return Fernet(path.read_bytes().strip())


class Vault:
    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet

    def seal(self, data: Any) -> str:
        return self._fernet.encrypt(json.dumps(data).encode()).decode()

    def open(self, token: str | None) -> Any:
        if not token:
            return None
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            # A rotated key: the stored credentials are unusable, not a crash.
            return None


def owner_key_for_password(username: str, password: str) -> str:
    """IM users are (username, password) pairs; we keep only a salted digest of the pair."""
    digest = hashlib.sha256(f"hdc-im\0{username}\0{password}".encode()).digest()
    return "im:" + base64.urlsafe_b64encode(digest[:24]).decode()


def redact_text(text: str) -> str:
    return _PRIVATE_KEY_RE.sub("<private key redacted>", text)


def redact(value: Any) -> Any:
    """A copy of value with secret fields and private keys removed (for outputs and logs)."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if k.lower() in SECRET_KEYS else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
