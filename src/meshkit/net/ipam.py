"""IP address management for overlay networks (sans-IO, run inside the replicated state).

Everything here is a pure function over plain data, so that raft's `apply()` can call it on
every manager and reach the same answer: which subnet a new network gets from the cluster's
address pools, which VNI, and which address a task or a node endpoint gets inside a subnet.

Addresses are handed out in order, starting after the last one handed out and wrapping
around (as Docker's allocator does), so an address that was just freed is the last to be
used again: a peer's stale ARP or conntrack entry for it has time to expire. The address book
of a network (``ipam``) is a plain dict:

    {"next": <host offset to try first>, "addrs": {"198.19.0.5": "task:<id>", ...}}

where an owner is ``gateway``, ``node:<node id>`` or ``task:<task id>``.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from typing import Any

VNI_FIRST = 4096
VNI_LAST = (1 << 24) - 1
OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
MIN_MTU = 576


class IpamError(Exception):
    """An allocation that cannot be made; the message says which network and why."""


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet in CIDR form, with host bits zero; IpamError otherwise."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise IpamError(f"invalid subnet {text!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise IpamError(f"invalid subnet {text!r}: only IPv4 overlays are supported")
    if net.prefixlen > 29:
        raise IpamError(f"subnet {text} is too small: a /29 is the smallest overlay subnet")
    return net


def _overlapping(net: ipaddress.IPv4Network, taken: Iterable[str]) -> str | None:
    for other in taken:
        other_net = ipaddress.ip_network(other, strict=False)
        if net.overlaps(other_net):
            return other
    return None


def check_subnet(text: str, taken: Iterable[str]) -> str:
    """A subnet asked for with --subnet: valid and clear of every other network's subnet."""
    net = parse_subnet(text)
    clash = _overlapping(net, taken)
    if clash is not None:
        raise IpamError(f"subnet {net} overlaps the subnet {clash} of another network")
    return str(net)


def _span(text: str) -> tuple[int, int]:
    """A subnet's first and last address as integers (host bits ignored), parsed once."""
    span = _SPANS.get(text)
    if span is None:
        net = ipaddress.ip_network(text, strict=False)
        span = (int(net.network_address), int(net.broadcast_address))
        if len(_SPANS) >= 65536:  # a bound, not a policy: parsing again is only slower
            _SPANS.clear()
        _SPANS[text] = span
    return span


_SPANS: dict[str, tuple[int, int]] = {}


def carve_subnet(
    pools: Iterable[str], mask_length: int, taken: Iterable[str], *, from_top: bool = False
) -> str:
    """The first /mask_length subnet of the pools that overlaps no taken subnet; with
    `from_top`, the last one (the last pool first, from its end): the nodes' gateway subnets
    come from there, so overlays keep being numbered from the start of the pools.

    Every node joining carves one, with thousands taken: the taken subnets are merged into
    sorted address ranges once, and each candidate is checked by bisection (O(taken) per
    call, not O(candidates x taken) subnet parses)."""
    pools = list(pools)
    spans = sorted(_span(t) for t in taken)
    starts: list[int] = []
    ends: list[int] = []  # merged, so ends are increasing too
    for lo, hi in spans:
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    for pool in reversed(pools) if from_top else pools:
        pool_net = ipaddress.ip_network(pool, strict=False)
        if not isinstance(pool_net, ipaddress.IPv4Network) or mask_length < pool_net.prefixlen:
            continue
        count = 1 << (mask_length - pool_net.prefixlen)
        size = 1 << (32 - mask_length)
        base = int(pool_net.network_address)
        for i in range(count - 1, -1, -1) if from_top else range(count):
            lo = base + i * size
            hi = lo + size - 1
            # the last merged range starting at or before `hi` is the only one that may overlap
            k = bisect.bisect_right(starts, hi) - 1
            if k < 0 or ends[k] < lo:
                return str(ipaddress.IPv4Network((lo, mask_length)))
    raise IpamError(
        f"the default address pools ({', '.join(pools) or 'none'}) have no free "
        f"/{mask_length} left; give the network a --subnet"
    )


def pick_vni(taken: Iterable[int]) -> int:
    """The lowest VNI from 4096 that no network has."""
    used = set(taken)
    vni = VNI_FIRST
    while vni in used:
        vni += 1
    if vni > VNI_LAST:
        raise IpamError("no VXLAN network identifier (VNI) is left")
    return vni


def check_gateway(subnet: str, gateway: str | None) -> str:
    """The network's gateway: the one asked for (inside the subnet), else the first host."""
    net = parse_subnet(subnet)
    if not gateway:
        return str(net.network_address + 1)
    try:
        addr = ipaddress.IPv4Address(gateway)
    except ValueError:
        raise IpamError(f"invalid gateway {gateway!r}: expected an IPv4 address") from None
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise IpamError(f"gateway {gateway} is not a host address of the subnet {net}")
    return str(addr)


def new_book(subnet: str, gateway: str) -> dict[str, Any]:
    """The address book of a new network, with the gateway taken."""
    return {"next": 1, "addrs": {gateway: "gateway"}}


def allocate(book: dict[str, Any], subnet: str, owner: str) -> str:
    """Hand out the next free host address of `subnet` to `owner` (in place)."""
    net = parse_subnet(subnet)
    hosts = net.num_addresses - 2  # without the network and broadcast addresses
    addrs: dict[str, str] = book["addrs"]
    start = int(book.get("next", 1))
    if not 1 <= start <= hosts:
        start = 1
    base = int(net.network_address)
    for step in range(hosts):
        offset = (start - 1 + step) % hosts + 1
        ip = str(ipaddress.IPv4Address(base + offset))
        if ip not in addrs:
            addrs[ip] = owner
            book["next"] = offset % hosts + 1
            return ip
    raise IpamError(f"no free address is left in {net} ({len(addrs)} in use)")


def release(book: dict[str, Any], owner: str) -> list[str]:
    """Free every address `owner` holds (in place); the addresses freed."""
    addrs: dict[str, str] = book["addrs"]
    freed = [ip for ip, who in addrs.items() if who == owner]
    for ip in freed:
        del addrs[ip]
    return freed


def owners(book: dict[str, Any], prefix: str) -> dict[str, str]:
    """Address -> owner id for every owner of one kind ("task:", "node:")."""
    return {ip: who[len(prefix) :] for ip, who in book["addrs"].items() if who.startswith(prefix)}


def mac_for(ip: str) -> str:
    """The MAC of an overlay address: 02:4d (locally administered, 'M') then the 4 IPv4 bytes in
    network byte order, so that an address names its MAC on every node without a lookup."""
    packed = ipaddress.IPv4Address(ip).packed
    return "02:4d:" + ":".join(f"{b:02x}" for b in packed)


def overlay_mtu(underlay_mtu: int, asked: int = 0) -> int:
    """The MTU of a network's devices: asked for, else the underlay's minus VXLAN's 50 bytes."""
    mtu = asked or underlay_mtu - OVERHEAD
    return max(mtu, MIN_MTU)


def with_prefix(ip: str, subnet: str) -> str:
    """`ip` in CIDR form with the subnet's prefix length."""
    return f"{ip}/{ipaddress.ip_network(subnet).prefixlen}"
