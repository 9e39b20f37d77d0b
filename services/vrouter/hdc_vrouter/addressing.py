"""Address plans: an overlay CIDR cut into equal per-site blocks, and the checks around them.

Block 0 of every overlay belongs to the hub (its tunnel address is the overlay's first host);
site N gets block N, and its router's tunnel address is that block's first host. Sites may
also bring their own private ranges (an existing LAN at the site); those must stay outside
the overlay CIDR and must not overlap each other, or a destination would be routed to two
sites at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from hdc_common.errors import Problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HUB_BLOCK = 0
# Smallest useful site block keeps a router address plus hosts; larger prefixes are refused.
MAX_SITE_PREFIX = {4: 30, 6: 126}


def bad(detail: str, **ext: object) -> Problem:
    return Problem(400, "Bad Request", detail, **ext)


def parse_network(text: str, what: str) -> Network:
    """A network in CIDR notation with no host bits set, or a 400 naming the field."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise bad(
            f"{what} {text!r} is not an IP network in CIDR notation (e.g. 10.10.0.0/16)"
        ) from None
    # "10.10.1.5/16" would silently become 10.10.0.0/16: say so instead of guessing.
    raise bad(f"{what} {text!r} has host bits set; did you mean {loose.with_prefixlen}?")


@dataclass(frozen=True)
class AddressPlan:
    """The pure arithmetic of one overlay: which block is which subnet."""

    cidr: Network
    site_prefix: int

    @classmethod
    def build(cls, cidr_text: str, site_prefix: int) -> AddressPlan:
        cidr = parse_network(cidr_text, "cidr")
        if cidr.is_loopback or cidr.is_multicast or cidr.is_link_local or cidr.is_unspecified:
            raise bad(f"cidr {cidr} is a loopback, link-local, multicast or unspecified range")
        limit = MAX_SITE_PREFIX[cidr.version]
        if not cidr.prefixlen < site_prefix <= limit:
            raise bad(
                f"site_prefix /{site_prefix} must be longer than the overlay's /{cidr.prefixlen} "
                f"and at most /{limit}"
            )
        # A longer site prefix always leaves at least two blocks: the hub's and one site's.
        return cls(cidr, site_prefix)

    @property
    def block_count(self) -> int:
        return 1 << (self.site_prefix - self.cidr.prefixlen)

    @property
    def site_capacity(self) -> int:
        """Blocks left for sites once the hub has its own."""
        return self.block_count - 1

    def block(self, index: int) -> Network:
        if not 0 <= index < self.block_count:
            raise IndexError(index)
        size = 1 << (self.cidr.max_prefixlen - self.site_prefix)
        base = int(self.cidr.network_address) + index * size
        return ipaddress.ip_network((base, self.site_prefix))

    def router_address(self, index: int) -> str:
        """The tunnel address of the router owning block `index` (the block's first host)."""
        return str(self.block(index).network_address + 1)

    def hub_address(self) -> str:
        return self.router_address(HUB_BLOCK)

    def host_prefix(self) -> int:
        return self.cidr.max_prefixlen


def parse_private_ranges(texts: Iterable[str], plan: AddressPlan) -> list[Network]:
    """Validate one site's own ranges: well-formed, same family, outside the overlay, disjoint."""
    ranges: list[Network] = []
    for text in texts:
        net = parse_network(text, "private range")
        if net.version != plan.cidr.version:
            raise bad(
                f"private range {net} is IPv{net.version}; the overlay {plan.cidr} is IPv{plan.cidr.version}"
            )
        if net.overlaps(plan.cidr):
            raise bad(
                f"private range {net} overlaps the overlay CIDR {plan.cidr}; "
                "a site's own range must lie outside the overlay",
                conflict=str(plan.cidr),
            )
        for other in ranges:
            if net.overlaps(other):
                raise bad(f"private ranges {other} and {net} overlap each other")
        ranges.append(net)
    return ranges


def find_overlap(
    new: Iterable[Network], taken: dict[str, Iterable[str]]
) -> tuple[str, str, str] | None:
    """First (new range, site name, its range) pair that overlaps, else None."""
    new = list(new)
    for site, ranges in taken.items():
        for text in ranges:
            other = ipaddress.ip_network(text)
            for net in new:
                if net.version == other.version and net.overlaps(other):
                    return str(net), site, str(other)
    return None
