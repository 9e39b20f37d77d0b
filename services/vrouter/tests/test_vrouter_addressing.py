"""The address plan's arithmetic and the checks on CIDRs and sites' own ranges."""

import ipaddress
import itertools

import pytest
from hdc_common.errors import Problem
from hdc_vrouter.addressing import AddressPlan, find_overlap, parse_network, parse_private_ranges


def test_blocks_tile_the_overlay_without_overlap():
    plan = AddressPlan.build("10.200.0.0/16", 24)
    assert plan.block_count == 256 and plan.site_capacity == 255
    blocks = [plan.block(i) for i in range(plan.block_count)]
    assert blocks[0] == ipaddress.ip_network("10.200.0.0/24")
    assert blocks[255] == ipaddress.ip_network("10.200.255.0/24")
    for a, b in itertools.pairwise(blocks):
        assert not a.overlaps(b)
        assert a.subnet_of(plan.cidr)
    assert plan.hub_address() == "10.200.0.1"
    assert plan.router_address(7) == "10.200.7.1"
    with pytest.raises(IndexError):
        plan.block(256)


def test_ipv6_plan():
    plan = AddressPlan.build("fd00:1::/48", 64)
    assert plan.block(3) == ipaddress.ip_network("fd00:1:0:3::/64")
    assert plan.router_address(3) == "fd00:1:0:3::1"
    assert plan.host_prefix() == 128


@pytest.mark.parametrize(
    ("cidr", "prefix", "reason"),
    [
        ("10.0.0.0/33", 24, "not an IP network"),
        ("banana", 24, "not an IP network"),
        ("10.200.1.5/16", 24, "host bits set; did you mean 10.200.0.0/16"),
        ("10.200.0.0/16", 16, "must be longer"),
        ("10.200.0.0/16", 31, "at most /30"),
        ("10.200.0.0/24", 24, "must be longer"),
        ("10.200.0.0/30", 30, "must be longer"),
        ("127.0.0.0/8", 24, "loopback"),
        ("224.0.0.0/4", 24, "multicast"),
    ],
)
def test_bad_plans_are_refused_with_a_reason(cidr, prefix, reason):
    with pytest.raises(Problem) as err:
        AddressPlan.build(cidr, prefix)
    assert err.value.status == 400
    assert reason in err.value.detail


def test_private_ranges_must_stay_outside_the_overlay_and_be_disjoint():
    plan = AddressPlan.build("10.200.0.0/16", 24)
    assert [str(n) for n in parse_private_ranges(["192.168.1.0/24", "172.16.0.0/20"], plan)] == [
        "192.168.1.0/24",
        "172.16.0.0/20",
    ]
    with pytest.raises(Problem, match="overlaps the overlay CIDR"):
        parse_private_ranges(["10.200.5.0/24"], plan)
    with pytest.raises(Problem, match="overlaps the overlay CIDR"):
        parse_private_ranges(["10.0.0.0/8"], plan)  # a supernet overlaps too
    with pytest.raises(Problem, match="overlap each other"):
        parse_private_ranges(["192.168.0.0/16", "192.168.4.0/24"], plan)
    with pytest.raises(Problem, match="IPv6"):
        parse_private_ranges(["fd00::/64"], plan)
    with pytest.raises(Problem, match="host bits"):
        parse_private_ranges(["192.168.1.1/24"], plan)


def test_find_overlap_names_the_site():
    taken = {"a": ["192.168.1.0/24"], "b": ["172.16.0.0/16", "fd00::/64"]}
    assert find_overlap([parse_network("172.16.5.0/24", "x")], taken) == (
        "172.16.5.0/24",
        "b",
        "172.16.0.0/16",
    )
    assert find_overlap([parse_network("192.168.2.0/24", "x")], taken) is None
