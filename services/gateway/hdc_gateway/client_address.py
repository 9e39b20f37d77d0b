"""Who is on the other end: the peer, or the client behind trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping
from typing import Any


class ClientAddress:
    def __init__(self, trusted_proxies: list[str]) -> None:
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]

    @property
    def has_trusted_proxies(self) -> bool:
        return bool(self._trusted)

    def of(self, scope: MutableMapping[str, Any], xff: bytes | None) -> str:
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        if not self._trusted or xff is None or not self.trusted(peer):
            return peer
        # Walk X-Forwarded-For from the nearest hop; the first untrusted address is the
        # client (anything further left could have been written by that client).
        for hop in reversed([h.strip() for h in xff.decode("latin-1").split(",")]):
            if hop and not self.trusted(hop):
                return hop
        return peer

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)
