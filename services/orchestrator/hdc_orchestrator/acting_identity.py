"""The identity the orchestrator presents to the services it calls on a deployment's behalf.

The ranker and the vrouter accept only gateway-signed identities (`x-hdc-identity`). The
orchestrator calls them from bus handlers and the sweeper, minutes or hours after the
owner's request (whose token lives 60 s) ended, so forwarding that token cannot work for
retries, timeouts or cleanup. It signs instead, with the gateway's identity key
(`identity_private_key`), a short-lived token for the deployment's owner (subject, issuer and
the deployment's group), so the callee's checks stay the ones users get.
"""

from __future__ import annotations

from pathlib import Path

from hdc_common.errors import ConfigError
from hdc_common.identity import GRPC_METADATA_KEY, Identity, InternalTokenSigner

TOKEN_TTL_S = 60


def load_private_key(value: str) -> str:
    """`identity_private_key`: a PEM, or the path of a file holding one ("" stays "")."""
    value = value.strip()
    if value and not value.startswith("-----BEGIN"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"identity_private_key: file {path} does not exist")
        return path.read_text()
    return value


class OwnerSigner:
    """Signs the owner's identity for one call; without a key it signs nothing."""

    def __init__(self, private_key_pem: str) -> None:
        self._signer = (
            InternalTokenSigner(private_key_pem, ttl_s=TOKEN_TTL_S) if private_key_pem else None
        )

    @property
    def can_sign(self) -> bool:
        return self._signer is not None

    def metadata(self, owner: Identity) -> list[tuple[str, str]]:
        """gRPC call metadata carrying the owner's identity (empty when it cannot sign)."""
        if self._signer is None:
            return []
        return [(GRPC_METADATA_KEY, self._signer.sign(owner))]
