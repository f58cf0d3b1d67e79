"""Netlink plumbing for overlay networks: namespaces, bridges, veth pairs, VXLAN links,
static FDB and neighbour entries, done with pyroute2.

Every function here blocks (the agent calls them through ``asyncio.to_thread``), is
idempotent, and raises ``LinkError`` whose message names the step, the device, the
namespace and the kernel's own error text.

Namespaces are entered only from short-lived threads made for the purpose (``in_netns``):
setns(2) changes the calling thread alone, so no caller thread is ever left in another
namespace, and several agents (each in its own "host" namespace) may use this module at
once. A netlink socket made inside a namespace keeps talking to that namespace, so an
``NsLinks`` handle is just such a socket given to pyroute2.

"The caller's namespace" is the network namespace of the calling thread: for the agent,
the host (underlay) namespace it runs in.

The one piece of policy, which FDB/neighbour entries to add, change or delete, is the pure
function ``plan_entries``; ``sync_fdb_neigh`` applies its plan.

The parts: ``netlink`` (LinkError and its wording, checks), ``netns_named`` (named
namespaces, ``in_netns``), ``nslinks`` (``NsLinks``: bridges, addresses and routes, veth
pairs, FDB and neighbour entries in one namespace; ``ensure_netns``, which brings up a new
namespace's ``lo`` with it); here, what is made in the caller's namespace (VXLAN links,
moved TAPs) and the FDB/neighbour sync. Every name is importable from here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from meshkit.net.netlink import LinkError, check_ifname, kernel_text, norm_ip, norm_mac, step
from meshkit.net.netns_named import (
    NETNS_DIR,
    caller_netns_label,
    delete_netns,
    in_netns,
    open_netns,
)
from meshkit.net.nslinks import LinkInfo, NsLinks, ensure_netns

__all__ = [
    "NETNS_DIR",
    "EntryPlan",
    "LinkError",
    "LinkInfo",
    "NsLinks",
    "caller_netns_label",
    "create_vxlan",
    "delete_netns",
    "ensure_netns",
    "in_netns",
    "kernel_text",
    "move_link",
    "plan_entries",
    "sync_fdb_neigh",
    "underlay_for",
]


# ---------------------------------------------------------------------- caller's namespace


def underlay_for(addr: str) -> tuple[str, int]:
    """(ifname, mtu) of the interface holding ``addr`` in the caller's namespace."""
    ip = norm_ip(addr, "underlay address")
    with NsLinks.here() as here, step(f"find the interface holding {ip}", here.ns):
        holders = [int(m["index"]) for m in here._ipr.addr("dump")
                   if str(m.get("address")) == ip or str(m.get("local")) == ip]  # fmt: skip
        if not holders:
            raise LinkError(f"no interface holds address {ip} in {here.ns} "
                            "(is the data-path / advertise address right?)")  # fmt: skip
        link = here._ipr.link("get", index=holders[0])[0]
        return str(link.get("ifname")), int(link.get("mtu"))


@dataclass(frozen=True)
class _VxlanSpec:
    vni: int
    port: int
    local: str
    link: int | None

    @classmethod
    def of(cls, msg: Any) -> _VxlanSpec | None:
        if msg.get(("linkinfo", "kind")) != "vxlan":
            return None
        data = msg.get(("linkinfo", "data"))
        if data is None:
            return None
        if data.get("vxlan_learning") or not data.get("vxlan_proxy"):
            return None  # made by someone else; not the shape we keep
        return cls(
            vni=int(data.get("vxlan_id") or 0),
            port=int(data.get("vxlan_port") or 0),
            local=str(data.get("vxlan_local") or ""),
            link=data.get("vxlan_link"),
        )


def create_vxlan(
    ns: str,
    name: str,
    *,
    vni: int,
    port: int,
    local: str,
    underlay_ifname: str,
    mtu: int,
    bridge: str,
) -> None:
    """VXLAN link ``name`` made in the caller's namespace (so its UDP socket lives on the
    underlay) with learning off, ARP proxy on, l2miss/l3miss off and no default remote,
    then moved into ``ns``, put on ``bridge`` with MTU ``mtu`` and brought up. A leftover
    link of that name with another VNI/port/local address is replaced."""
    check_ifname(name)
    local = norm_ip(local, f"local address of vxlan link {name}")
    if not 1 <= vni < 1 << 24:
        raise LinkError(f"create vxlan link {name}: VNI {vni} is outside 1..16777215")
    if not 1 <= port <= 65535:
        raise LinkError(f"create vxlan link {name}: UDP port {port} is outside 1..65535")
    what = f"create vxlan link {name} (vni {vni}, port {port})"
    with NsLinks.here() as here:
        under_idx = here._require(underlay_ifname, f"{what}: underlay interface")
        wanted = _VxlanSpec(vni, port, local, under_idx)
        with NsLinks(ns) as target:
            existing = target._msg(name)
            if existing is not None:
                if _VxlanSpec.of(existing) == wanted:
                    target.attach(name, bridge=bridge, mtu=mtu)
                    return
                target.delete_link(name)
            # a leftover of an interrupted create would block the new one's name and VNI
            stale = here._msg(name)
            if stale is not None:
                stale_kind = stale.get(("linkinfo", "kind"))
                if stale_kind != "vxlan":
                    raise LinkError(f"{what} in {here.ns}: a link {name} exists there and "
                                    f"is a {stale_kind or 'device without a kind'}")  # fmt: skip
                here.delete_link(name)
            with step(what, here.ns):
                here._ipr.link(
                    "add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                    vxlan_local=local, vxlan_link=under_idx, vxlan_learning=0,
                    vxlan_proxy=1, vxlan_l2miss=0, vxlan_l3miss=0, mtu=mtu,
                )  # fmt: skip
            _move(here, name, ns, what)
            target.attach(name, bridge=bridge, mtu=mtu)


def _move(here: NsLinks, ifname: str, ns: str, what: str) -> None:
    """Move ``ifname`` from ``here`` into namespace ``ns``; deleted again if that fails."""
    idx = here._require(ifname, what)
    fd = open_netns(ns)
    try:
        with step(f"move {ifname} into {ns}", here.ns):
            try:
                here._ipr.link("set", index=idx, net_ns_fd=fd)
            except BaseException:
                with contextlib.suppress(NetlinkError, OSError):
                    here._ipr.link("del", index=idx)
                raise
    finally:
        os.close(fd)


def move_link(ifname: str, ns: str, *, bridge: str, mtu: int) -> None:
    """Move ``ifname`` (e.g. a TAP the data plane made) from the caller's namespace into
    ``ns``, put it on ``bridge`` with MTU ``mtu`` and bring it up. Already moved is fine."""
    check_ifname(ifname)
    with NsLinks(ns) as target:
        if target.index(ifname) is None:
            with NsLinks.here() as here:
                idx = here._require(ifname, f"move {ifname} into {ns}")
                fd = open_netns(ns)
                try:
                    with step(f"move {ifname} into {ns}", here.ns):
                        here._ipr.link("set", index=idx, net_ns_fd=fd)
                finally:
                    os.close(fd)
        target.attach(ifname, bridge=bridge, mtu=mtu)


# ---------------------------------------------------------------------- sync


@dataclass(frozen=True)
class EntryPlan:
    """What to do to a table (fdb or neighbour) to make it equal a wanted mapping."""

    upsert: dict[str, str]  # key -> value, missing or changed
    delete: list[str]  # keys present but not wanted


def plan_entries(current: Mapping[str, str], wanted: Mapping[str, str]) -> EntryPlan:
    """The changes that turn ``current`` into ``wanted`` (pure; keys compared as given)."""
    upsert = {k: v for k, v in wanted.items() if current.get(k) != v}
    delete = sorted(k for k in current if k not in wanted)
    return EntryPlan(upsert=dict(sorted(upsert.items())), delete=delete)


def sync_fdb_neigh(
    links: NsLinks, dev: str, fdb: Mapping[str, str], neigh: Mapping[str, str]
) -> int:
    """Make the static FDB entries (mac -> dst IP) and permanent neighbour entries
    (IP -> mac) of ``dev`` exactly ``fdb`` and ``neigh``; the number of changes made.

    Entries are replaced, not only added, so an address reused on another node moves with
    it instead of keeping an entry that points at the old node (moby#52661)."""
    want_fdb = {
        norm_mac(mac, f"fdb entry on {dev}"): norm_ip(dst, f"fdb entry {mac} on {dev}")
        for mac, dst in fdb.items()
    }
    want_neigh = {
        norm_ip(ip, f"neighbour entry on {dev}"): norm_mac(mac, f"neighbour entry {ip} on {dev}")
        for ip, mac in neigh.items()
    }
    changes = 0
    plan = plan_entries(links.fdb(dev), want_fdb)
    for mac in plan.delete:
        links.fdb_delete(dev, mac)
    for mac, dst in plan.upsert.items():
        links.fdb_replace(dev, mac, dst)
    changes += len(plan.delete) + len(plan.upsert)
    plan = plan_entries(links.neigh(dev), want_neigh)
    for ip in plan.delete:
        links.neigh_delete(dev, ip)
    for ip, mac in plan.upsert.items():
        links.neigh_replace(dev, ip, mac)
    changes += len(plan.delete) + len(plan.upsert)
    return changes
