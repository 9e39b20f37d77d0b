"""The embedded OpenID provider: a local RSA key in data_dir that signs development tokens.

Embedded mode keeps authentication on. Instead of a Keycloak, the gateway trusts one more
issuer, `urn:hdc:embedded`, whose key lives in `<data_dir>/gateway/embedded-op-key.pem`;
its JWKS is served by the gateway at `/.well-known/jwks.json` and read by the validator
through the same key-set cache as any provider's, so the same validation code runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

EMBEDDED_ISSUER = "urn:hdc:embedded"
EMBEDDED_ALGORITHM = "RS256"
KEY_FILE = "embedded-op-key.pem"


def key_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "gateway" / KEY_FILE


def load_or_create_key(data_dir: str | Path) -> rsa.RSAPrivateKey:
    """The signing key, made on first use; only the owner may read it."""
    path = key_path(data_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Write-then-rename with O_EXCL so two processes starting together agree on one key.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return loaded


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    jwk = {"e": _b64(numbers.e), "kty": "RSA", "n": _b64(numbers.n)}
    # RFC 7638 thumbprint as kid: stable for the key, different for a new one.
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return jwk | {"kid": kid, "use": "sig", "alg": EMBEDDED_ALGORITHM}


def jwks_document(data_dir: str | Path) -> dict[str, Any]:
    return {"keys": [public_jwk(load_or_create_key(data_dir))]}


def discovery_document(base_url: str) -> dict[str, Any]:
    return {
        "issuer": EMBEDDED_ISSUER,
        "jwks_uri": f"{base_url}/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": [EMBEDDED_ALGORITHM],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }
