"""Checks on operator and agent input that every front end shares (400 with a reason)."""

from __future__ import annotations

import ipaddress

from hdc_vrouter.addressing import bad

NAME_MAX = 128


def validate_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{what} is required")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise bad(f"{what} is longer than {NAME_MAX} characters")
    if any(ord(c) < 32 for c in name):
        raise bad(f"{what} contains control characters")
    return name


def validate_endpoint(text: object) -> str | None:
    """`host:port` or `[v6]:port` as WireGuard expects it; None when absent."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise bad("endpoint must be a string like 203.0.113.7:51820")
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise bad(
            f"endpoint {text!r} must be host:port (e.g. 203.0.113.7:51820 or [2001:db8::1]:51820)"
        )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"endpoint {text!r}: port must be 1-65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise bad(f"endpoint {text!r}: unbalanced brackets around the IPv6 address")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad(f"endpoint {text!r}: {host[1:-1]!r} is not an IPv6 address") from None
    elif ":" in host:
        raise bad(f"endpoint {text!r}: put an IPv6 address in brackets, e.g. [2001:db8::1]:51820")
    elif len(host) > 253 or not all(
        part and part.replace("-", "").isalnum() for part in host.split(".")
    ):
        raise bad(f"endpoint {text!r}: {host!r} is neither an IP address nor a host name")
    return text
