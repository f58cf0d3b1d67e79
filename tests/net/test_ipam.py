"""IPAM (sans-IO): subnets from the pools, VNIs, addresses in order with wrap-around, MACs."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.net import ipam


def test_carve_skips_taken_subnets_and_names_the_pools_when_full() -> None:
    pools = ["198.19.0.0/22"]
    assert ipam.carve_subnet(pools, 24, []) == "198.19.0.0/24"
    assert ipam.carve_subnet(pools, 24, ["198.19.0.0/24", "198.19.1.128/25"]) == "198.19.2.0/24"
    full = [f"198.19.{i}.0/24" for i in range(4)]
    with pytest.raises(ipam.IpamError, match=r"pools \(198\.19\.0\.0/22\) have no free /24"):
        ipam.carve_subnet(pools, 24, full)


def test_check_subnet_and_gateway() -> None:
    assert ipam.check_subnet("198.18.200.0/29", ["198.19.0.0/24"]) == "198.18.200.0/29"
    with pytest.raises(ipam.IpamError, match=r"overlaps the subnet 198\.19\.0\.0/16"):
        ipam.check_subnet("198.19.4.0/24", ["198.19.0.0/16"])
    with pytest.raises(ipam.IpamError, match="host bits set"):
        ipam.parse_subnet("198.18.0.1/24")
    with pytest.raises(ipam.IpamError, match="a /29 is the smallest"):
        ipam.parse_subnet("198.18.0.0/30")
    assert ipam.check_gateway("198.18.0.0/24", None) == "198.18.0.1"
    assert ipam.check_gateway("198.18.0.0/24", "198.18.0.254") == "198.18.0.254"
    with pytest.raises(ipam.IpamError, match="not a host address"):
        ipam.check_gateway("198.18.0.0/24", "198.18.0.255")


def test_vni_is_the_lowest_free_from_4096() -> None:
    assert ipam.pick_vni([]) == 4096
    assert ipam.pick_vni([4096, 4098]) == 4097


def test_addresses_go_in_order_wrap_around_and_reuse_last() -> None:
    subnet = "198.18.200.0/29"  # hosts .1 to .6
    book = ipam.new_book(subnet, "198.18.200.1")
    got = [ipam.allocate(book, subnet, f"task:{i}") for i in range(5)]
    assert got == [f"198.18.200.{i}" for i in range(2, 7)]
    with pytest.raises(ipam.IpamError, match=r"no free address is left in 198\.18\.200\.0/29"):
        ipam.allocate(book, subnet, "task:x")
    assert ipam.release(book, "task:1") == ["198.18.200.3"]
    assert ipam.release(book, "task:3") == ["198.18.200.5"]
    # the next search starts after the last address handed out (.6), wraps, finds .3 first
    assert ipam.allocate(book, subnet, "task:y") == "198.18.200.3"
    assert ipam.allocate(book, subnet, "task:z") == "198.18.200.5"
    assert ipam.owners(book, "task:")["198.18.200.5"] == "z"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=200))
def test_never_the_same_address_twice(ops: list[tuple[bool, int]]) -> None:
    subnet = "198.18.64.0/26"
    book = ipam.new_book(subnet, "198.18.64.1")
    held: dict[str, str] = {}
    for alloc, n in ops:
        owner = f"task:{n}"
        if alloc and owner not in held.values():
            try:
                ip = ipam.allocate(book, subnet, owner)
            except ipam.IpamError:
                assert len(book["addrs"]) == 62
                continue
            assert ip not in held and ip != "198.18.64.1"
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
            held[ip] = owner
        elif not alloc:
            for ip in ipam.release(book, owner):
                del held[ip]
    assert ipam.owners(book, "task:") == {ip: o[5:] for ip, o in held.items()}


def test_mac_and_mtu() -> None:
    assert ipam.mac_for("198.18.200.5") == "02:4d:c6:12:c8:05"
    assert ipam.overlay_mtu(1500) == 1450
    assert ipam.overlay_mtu(1400) == 1350
    assert ipam.overlay_mtu(1500, 1300) == 1300


def test_carve_from_top_takes_the_last_free_subnet() -> None:
    pools = ["198.18.0.0/23", "198.19.0.0/23"]
    assert ipam.carve_subnet(pools, 24, [], from_top=True) == "198.19.1.0/24"
    assert ipam.carve_subnet(pools, 24, ["198.19.1.0/24"], from_top=True) == "198.19.0.0/24"
    taken = ["198.19.0.0/23"]
    assert ipam.carve_subnet(pools, 24, taken, from_top=True) == "198.18.1.0/24"
    assert ipam.carve_subnet(pools, 24, taken) == "198.18.0.0/24"
