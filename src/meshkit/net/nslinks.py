"""``NsLinks``: an open netlink handle on one named network namespace, and what the overlay
does with it there: bridges and their addresses and routes, veth pairs into task namespaces,
ports on a bridge, static FDB and neighbour entries; and ``ensure_netns``, a named namespace
(meshkit.net.netns_named) with its ``lo`` up.

A netlink socket made inside a namespace keeps talking to that namespace, so an ``NsLinks``
handle is just such a socket given to pyroute2.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypedDict

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from meshkit.net.netlink import (
    MAC_RE,
    LinkError,
    check_ifname,
    errno_of,
    iproute,
    kernel_text,
    norm_cidr,
    norm_ip,
    norm_mac,
    step,
)
from meshkit.net.netns_named import (
    caller_netns_label,
    make_netns,
    netlink_socket_in,
    open_netns,
)

_IFF_UP = 0x1
_NTF_SELF = 0x02
_NUD_NOARP = 0x40
_NUD_PERMANENT = 0x80


class LinkInfo(TypedDict):
    """What ``NsLinks.links`` reports about one link."""

    index: int
    kind: str  # "" for links without a kind (lo, physical NICs)
    mtu: int
    master: str | None  # name of the bridge it is a port of
    state: str  # operstate, lower case: "up", "down", "unknown", "lowerlayerdown", ...
    up: bool  # administratively up (IFF_UP)
    mac: str


def _link_info(msg: Any, names: Mapping[int, str]) -> LinkInfo:
    master = msg.get("master")
    return LinkInfo(
        index=int(msg["index"]),
        kind=str(msg.get(("linkinfo", "kind")) or ""),
        mtu=int(msg.get("mtu") or 0),
        master=names.get(master) if master else None,
        state=str(msg.get("operstate") or "unknown").lower(),
        up=bool(msg["flags"] & _IFF_UP),
        mac=str(msg.get("address") or ""),
    )


class NsLinks:
    """An open netlink handle on one named network namespace."""

    def __init__(self, ns: str) -> None:
        """Open a netlink socket inside namespace ``ns``; LinkError when it does not exist."""
        self.ns = ns
        fd = netlink_socket_in(ns)
        try:
            self._ipr = iproute(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise LinkError(f"open netlink in {ns}: {kernel_text(exc)}") from exc

    @classmethod
    def here(cls) -> NsLinks:
        """A handle on the caller's namespace (used for links made there)."""
        self = cls.__new__(cls)
        self.ns = caller_netns_label()
        try:
            self._ipr = iproute()
        except (NetlinkError, OSError) as exc:
            raise LinkError(f"open netlink in {self.ns}: {kernel_text(exc)}") from exc
        return self

    @property
    def ipr(self) -> Any:
        """The pyroute2 IPRoute of this handle, for steps this module has no method for."""
        return self._ipr

    def close(self) -> None:
        """Close the netlink socket (the namespace stays)."""
        self._ipr.close()

    def __enter__(self) -> NsLinks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ lookups

    def _msg(self, ifname: str) -> Any | None:
        """The link message of ``ifname``, or None."""
        check_ifname(ifname)
        try:
            found = self._ipr.link("get", ifname=ifname)
        except NetlinkError as exc:
            if errno_of(exc) == errno.ENODEV:
                return None
            raise LinkError(f"look up link {ifname} in {self.ns}: {kernel_text(exc)}") from exc
        return found[0] if found else None

    def index(self, ifname: str) -> int | None:
        """The ifindex of ``ifname`` in this namespace, or None."""
        msg = self._msg(ifname)
        return None if msg is None else int(msg["index"])

    def _require(self, ifname: str, why: str) -> int:
        idx = self.index(ifname)
        if idx is None:
            raise LinkError(f"{why}: no link {ifname} in {self.ns}")
        return idx

    def links(self) -> dict[str, LinkInfo]:
        """ifname -> LinkInfo for every link of this namespace."""
        with step("list links", self.ns):
            msgs = list(self._ipr.link("dump"))
        names = {int(m["index"]): str(m.get("ifname")) for m in msgs}
        return {str(m.get("ifname")): _link_info(m, names) for m in msgs}

    def addresses(self, ifname: str) -> list[str]:
        """The addresses of ``ifname`` as cidr text (IPv6 link-local left out)."""
        idx = self._require(ifname, "list addresses")
        with step(f"list addresses of {ifname}", self.ns):
            msgs = list(self._ipr.addr("dump", index=idx))
        out = []
        for m in msgs:
            if int(m["index"]) != idx:
                continue
            ip = ipaddress.ip_interface(f"{m.get('address')}/{m['prefixlen']}")
            if ip.version == 6 and ip.ip.is_link_local:
                continue
            out.append(str(ip))
        return out

    # ------------------------------------------------------------------ changes

    def set_up(self, ifname: str) -> None:
        """Bring ``ifname`` administratively up."""
        idx = self._require(ifname, f"set link {ifname} up")
        with step(f"set link {ifname} up", self.ns):
            self._ipr.link("set", index=idx, state="up")

    def _set_addresses(self, ifname: str, idx: int, wanted: list[str]) -> None:
        """Make the addresses of ``ifname`` exactly ``wanted`` (IPv6 link-local kept)."""
        want = {norm_cidr(c, f"address for {ifname}") for c in wanted}
        have = {norm_cidr(c, f"address of {ifname}") for c in self.addresses(ifname)}
        for ip, plen in sorted(have - want):
            with step(f"remove address {ip}/{plen} from {ifname}", self.ns):
                try:
                    self._ipr.addr("del", index=idx, address=ip, prefixlen=plen)
                except NetlinkError as exc:
                    if errno_of(exc) != errno.EADDRNOTAVAIL:
                        raise
        for ip, plen in sorted(want - have):
            with step(f"add address {ip}/{plen} to {ifname}", self.ns):
                self._ipr.addr("replace", index=idx, address=ip, prefixlen=plen)

    def ensure_bridge(self, name: str, *, mtu: int, mac: str, addrs: list[str]) -> None:
        """Bridge ``name`` up, with MAC ``mac``, MTU ``mtu``, exactly the addresses ``addrs``
        (cidr text), no STP and forward delay 0."""
        check_ifname(name)
        mac = norm_mac(mac, f"MAC of bridge {name}")
        msg = self._msg(name)
        what = f"create bridge {name}"
        if msg is not None and msg.get(("linkinfo", "kind")) != "bridge":
            kind = msg.get(("linkinfo", "kind")) or "device without a kind"
            raise LinkError(f"{what} in {self.ns}: a link {name} exists and is a {kind}")
        if msg is None:
            with step(what, self.ns):
                try:
                    self._ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu,
                                   br_stp_state=0, br_forward_delay=0)  # fmt: skip
                except NetlinkError as exc:
                    if errno_of(exc) != errno.EEXIST:
                        raise
        idx = self._require(name, what)
        with step(f"configure bridge {name} (mtu {mtu}, mac {mac})", self.ns):
            self._ipr.link("set", index=idx, kind="bridge", br_stp_state=0, br_forward_delay=0)
            self._ipr.link("set", index=idx, address=mac, mtu=mtu)
        self._set_addresses(name, idx, addrs)
        with step(f"set bridge {name} up", self.ns):
            self._ipr.link("set", index=idx, state="up")

    def set_route_source(self, ifname: str, subnet: str, src: str) -> None:
        """Make connections to ``subnet`` over ``ifname`` leave from ``src``.

        The bridge of an overlay holds the gateway (the same on every node) and the node's own
        endpoint address; a connection a node makes into the overlay (a VIP's or the routing
        mesh's relay) must leave from the endpoint address, which is unique, or replies would
        go to whichever node answers for the gateway."""
        idx = self._require(ifname, f"set the source of {subnet}")
        net = ipaddress.ip_network(subnet, strict=False)
        with step(f"route {subnet} dev {ifname} src {src}", self.ns):
            self._ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen,
                            oif=idx, prefsrc=src, scope=253, proto=2)  # fmt: skip

    def sync_host_addresses(self, ifname: str, wanted: set[str]) -> None:
        """Make the /32 addresses of ``ifname`` exactly ``wanted`` (the VIPs a node answers
        for itself); its other addresses are left alone."""
        idx = self._require(ifname, "set host addresses")
        have = {c.split("/")[0] for c in self.addresses(ifname) if c.endswith("/32")}
        for ip in sorted(have - wanted):
            with step(f"remove address {ip}/32 from {ifname}", self.ns):
                try:
                    self._ipr.addr("del", index=idx, address=ip, prefixlen=32)
                except NetlinkError as exc:
                    if errno_of(exc) != errno.EADDRNOTAVAIL:
                        raise
        for ip in sorted(wanted - have):
            with step(f"add address {ip}/32 to {ifname}", self.ns):
                self._ipr.addr("replace", index=idx, address=ip, prefixlen=32)

    def ensure_veth_to_task(
        self,
        *,
        bridge: str,
        local_ifname: str,
        task_ns: str,
        task_ifname: str,
        mac: str,
        addr_cidr: str,
        mtu: int,
    ) -> None:
        """A veth pair: ``local_ifname`` here, on ``bridge`` and up; its peer in ``task_ns``
        named ``task_ifname`` with MAC ``mac``, address ``addr_cidr`` (the subnet route
        comes with it), MTU ``mtu``, up."""
        check_ifname(local_ifname)
        check_ifname(task_ifname)
        mac = norm_mac(mac, f"MAC of {task_ifname} in {task_ns}")
        norm_cidr(addr_cidr, f"address of {task_ifname} in {task_ns}")
        what = f"attach veth {local_ifname} (in {self.ns}) to {task_ifname} in {task_ns}"
        br_idx = self._require(bridge, what)
        try:
            task = NsLinks(task_ns)
        except LinkError as exc:
            raise LinkError(f"{what}: {exc}") from exc
        with task:
            local = self._msg(local_ifname)
            peer = task._msg(task_ifname)
            paired = (
                local is not None
                and peer is not None
                and local.get(("linkinfo", "kind")) == "veth"
                and peer.get(("linkinfo", "kind")) == "veth"
                and local.get("link") == peer["index"]
                and peer.get("link") == local["index"]
            )
            if not paired:
                if local is not None:
                    self.delete_link(local_ifname)
                if peer is not None:
                    task.delete_link(task_ifname)
                fd = open_netns(task_ns)
                try:
                    with step(f"create veth pair {local_ifname} / {task_ifname} "
                               f"(peer into {task_ns})", self.ns):  # fmt: skip
                        self._ipr.link(
                            "add", ifname=local_ifname, kind="veth", mtu=mtu,
                            peer={"ifname": task_ifname, "net_ns_fd": fd, "mtu": mtu,
                                  "address": mac},
                        )  # fmt: skip
                finally:
                    os.close(fd)
            local_idx = self._require(local_ifname, what)
            with step(f"put {local_ifname} on bridge {bridge} (mtu {mtu})", self.ns):
                self._ipr.link("set", index=local_idx, master=br_idx, mtu=mtu)
                self._ipr.link("set", index=local_idx, state="up")
            peer_idx = task._require(task_ifname, what)
            with step(f"configure {task_ifname} (mac {mac}, mtu {mtu})", task_ns):
                task._ipr.link("set", index=peer_idx, address=mac, mtu=mtu)
            task._set_addresses(task_ifname, peer_idx, [addr_cidr])
            with step(f"set {task_ifname} up", task_ns):
                task._ipr.link("set", index=peer_idx, state="up")

    def delete_link(self, ifname: str) -> None:
        """Delete link ``ifname``; a missing one is fine."""
        idx = self.index(ifname)
        if idx is None:
            return
        with step(f"delete link {ifname}", self.ns):
            try:
                self._ipr.link("del", index=idx)
            except NetlinkError as exc:
                if errno_of(exc) != errno.ENODEV:
                    raise

    def attach(self, ifname: str, *, bridge: str, mtu: int) -> None:
        """Put ``ifname`` on ``bridge`` with MTU ``mtu`` and bring it up."""
        what = f"attach {ifname} to bridge {bridge}"
        idx = self._require(ifname, what)
        br_idx = self._require(bridge, what)
        with step(f"{what} (mtu {mtu})", self.ns):
            self._ipr.link("set", index=idx, master=br_idx, mtu=mtu)
            self._ipr.link("set", index=idx, state="up")

    # ------------------------------------------------------------------ fdb / neigh

    def fdb(self, dev: str) -> dict[str, str]:
        """The static unicast FDB entries of ``dev`` (a VXLAN link): mac -> dst IP."""
        idx = self._require(dev, "list fdb entries")
        with step(f"list fdb entries of {dev}", self.ns):
            msgs = list(self._ipr.fdb("dump", ifindex=idx))
        out: dict[str, str] = {}
        for m in msgs:
            mac = str(m.get("lladdr") or "").lower()
            dst = m.get("dst")
            if (
                int(m["ifindex"]) != idx
                or not dst
                or not m["flags"] & _NTF_SELF
                or not m["state"] & _NUD_PERMANENT
                or not MAC_RE.match(mac)
                or mac == "00:00:00:00:00:00"
                or int(mac[:2], 16) & 1
            ):
                continue
            out[mac] = str(dst)
        return out

    def fdb_replace(self, dev: str, mac: str, dst: str) -> None:
        """Add or change the static FDB entry ``mac -> dst`` on ``dev``."""
        mac = norm_mac(mac, f"fdb entry on {dev}")
        dst = norm_ip(dst, f"fdb entry {mac} on {dev}")
        idx = self._require(dev, f"set fdb entry {mac} -> {dst}")
        with step(f"set fdb entry {mac} -> {dst} on {dev}", self.ns):
            self._ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=dst,
                          state=_NUD_PERMANENT | _NUD_NOARP, flags=_NTF_SELF)  # fmt: skip

    def fdb_delete(self, dev: str, mac: str) -> None:
        """Remove the FDB entry for ``mac`` on ``dev``; a missing one is fine."""
        mac = norm_mac(mac, f"fdb entry on {dev}")
        idx = self._require(dev, f"delete fdb entry {mac}")
        with step(f"delete fdb entry {mac} on {dev}", self.ns):
            try:
                self._ipr.fdb("del", ifindex=idx, lladdr=mac,
                              state=_NUD_PERMANENT | _NUD_NOARP, flags=_NTF_SELF)  # fmt: skip
            except NetlinkError as exc:
                if errno_of(exc) != errno.ENOENT:
                    raise

    def neigh(self, dev: str) -> dict[str, str]:
        """The permanent neighbour entries of ``dev``: IP -> MAC."""
        idx = self._require(dev, "list neighbour entries")
        with step(f"list neighbour entries of {dev}", self.ns):
            msgs = list(self._ipr.neigh("dump", ifindex=idx))
        out: dict[str, str] = {}
        for m in msgs:
            if m["family"] not in (socket.AF_INET, socket.AF_INET6):
                continue
            if int(m["ifindex"]) != idx or not m["state"] & _NUD_PERMANENT:
                continue
            dst, mac = m.get("dst"), m.get("lladdr")
            if dst and mac:
                out[str(dst)] = str(mac).lower()
        return out

    def neigh_replace(self, dev: str, ip: str, mac: str) -> None:
        """Add or change the permanent neighbour entry ``ip -> mac`` on ``dev``."""
        ip = norm_ip(ip, f"neighbour entry on {dev}")
        mac = norm_mac(mac, f"neighbour entry {ip} on {dev}")
        idx = self._require(dev, f"set neighbour entry {ip} -> {mac}")
        with step(f"set neighbour entry {ip} -> {mac} on {dev}", self.ns):
            self._ipr.neigh("replace", ifindex=idx, dst=ip, lladdr=mac, state=_NUD_PERMANENT)

    def neigh_delete(self, dev: str, ip: str) -> None:
        """Remove the neighbour entry for ``ip`` on ``dev``; a missing one is fine."""
        ip = norm_ip(ip, f"neighbour entry on {dev}")
        idx = self._require(dev, f"delete neighbour entry {ip}")
        with step(f"delete neighbour entry {ip} on {dev}", self.ns):
            try:
                self._ipr.neigh("del", ifindex=idx, dst=ip)
            except NetlinkError as exc:
                if errno_of(exc) != errno.ENOENT:
                    raise


def ensure_netns(name: str) -> None:
    """Make network namespace ``name`` (/run/netns/<name>, like ``ip netns add``) with
    ``lo`` up; an existing one is kept, a stale unmounted file is replaced."""
    make_netns(name)
    with NsLinks(name) as ns:
        ns.set_up("lo")
