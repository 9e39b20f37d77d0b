"""WireGuard keys: Curve25519 (X25519) pairs, base64 encoded, the way `wg genkey` prints them.

The controller only ever sees public keys; private keys are born and stay at the site.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hdc_common.errors import Problem

KEY_BYTES = 32


def generate_keypair() -> tuple[str, str]:
    """(private, public), both base64 of 32 raw bytes, compatible with `wg`."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(private).decode(), public_from_private(
        base64.b64encode(private).decode()
    )


def public_from_private(private_b64: str) -> str:
    raw = base64.b64decode(private_b64, validate=True)
    key = X25519PrivateKey.from_private_bytes(raw)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(public).decode()


def _invalid(detail: str) -> Problem:
    return Problem(400, "Bad Request", detail, reason="invalid_public_key")


def validate_public_key(text: object) -> str:
    """The key, normalised, or Problem(400) saying exactly what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise _invalid("public_key is required (base64 of a 32-byte Curve25519 key)")
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"public_key {text[:60]!r} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise _invalid(
            f"public_key decodes to {len(raw)} bytes; a WireGuard key is {KEY_BYTES} bytes "
            "(44 base64 characters, as printed by `wg pubkey`)",
        )
    # Low-order points (all-zero and friends) give every peer the same shared secret: an
    # exchange with them yields zeros, which OpenSSL refuses. Such a key is never legitimate.
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise _invalid("public_key is a low-order Curve25519 point, not a usable key") from None
    return base64.b64encode(raw).decode()
