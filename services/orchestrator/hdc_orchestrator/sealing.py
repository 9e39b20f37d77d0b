"""Encryption at rest of what carries secrets: resolved templates (input values filled in)
and the secret parameter values kept for redaction. Columns of type `SealedText` /
`SealedJSON` are encrypted (Fernet) on write and decrypted on read.

The key is the setting `secret_key` (shared by all replicas) or, when empty, a random key
kept in `data_dir`. Keys are held in a process-wide ring: rows written with any configured
key stay readable, new rows use the first one.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "fernet:"
_lock = threading.Lock()
_keys: list[Fernet] = []


def add_key(key: bytes) -> None:
    with _lock:
        fernet = Fernet(key)
        if all(f._signing_key != fernet._signing_key for f in _keys):
            _keys.append(fernet)


def key_from(setting: str, data_dir: Path) -> bytes:
    if setting:
        return setting.encode()
    path = data_dir / "orchestrator-secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip().encode()


def _ring() -> MultiFernet:
    with _lock:
        if not _keys:
            # No service configured one (e.g. a migration tool): a throw-away key would make
            # data unreadable later, so refuse instead.
            raise RuntimeError("no encryption key configured (sealing.add_key)")
        return MultiFernet(list(_keys))


def seal(text: str) -> str:
    return PREFIX + _ring().encrypt(text.encode()).decode()


def unseal(value: str) -> str:
    if not value.startswith(PREFIX):
        return value
    try:
        return _ring().decrypt(value[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise RuntimeError("a sealed column cannot be decrypted with the configured keys") from None


class SealedText(sa.TypeDecorator[str]):
    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else seal(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else unseal(value)


class SealedJSON(sa.TypeDecorator[Any]):
    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else seal(json.dumps(value))

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(unseal(value))
