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
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypedDict, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from meshkit.base.netns import CLONE_NEWNET, setns

NETNS_DIR = "/run/netns"
NETNS_RUN_B = NETNS_DIR.encode()

_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2

_IFF_UP = 0x1
_NTF_SELF = 0x02
_NUD_NOARP = 0x40
_NUD_PERMANENT = 0x80
_AF_BRIDGE = 7
_NETLINK_ROUTE = 0

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_MAX = 15

T = TypeVar("T")


class LinkError(Exception):
    """A netlink or namespace step failed; the message names the step, the device, the
    namespace and the kernel's error text."""


class LinkInfo(TypedDict):
    """What ``NsLinks.links`` reports about one link."""

    index: int
    kind: str  # "" for links without a kind (lo, physical NICs)
    mtu: int
    master: str | None  # name of the bridge it is a port of
    state: str  # operstate, lower case: "up", "down", "unknown", "lowerlayerdown", ...
    up: bool  # administratively up (IFF_UP)
    mac: str


# ---------------------------------------------------------------------- syscalls


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    """Raise OSError with errno when a libc call returned non-zero."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _netns_path(name: str) -> str:
    """/run/netns/<name>, refusing names that would leave that directory."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise LinkError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_DIR, name)


def _open_netns(name: str) -> int:
    """An fd on the named namespace; LinkError naming it when it does not exist."""
    path = _netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LinkError(f"network namespace {name} does not exist ({path} is missing)") from None
    except OSError as exc:
        raise LinkError(f"open network namespace {name}: {exc.strerror}") from exc


def _run_in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread and return its result or raise its exception there."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed back to the caller below
            box.append((False, exc))

    thread = threading.Thread(target=target, name="meshkit-netns", daemon=True)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside network namespace ``name`` (in a thread made for it) and return
    its result. Sockets and TAP devices ``fn`` makes belong to that namespace for good."""
    fd = _open_netns(name)

    def entered() -> T:
        try:
            setns(fd)  # NetnsError is an OSError: worded below as before
        except OSError as exc:
            raise LinkError(
                f"enter network namespace {name}: {os.strerror(exc.errno or 0)}"
            ) from exc
        return fn()

    try:
        return _run_in_thread(entered)
    finally:
        os.close(fd)


def caller_netns_label() -> str:
    """The name under /run/netns of the calling thread's namespace, else a description."""
    try:
        here = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net")
        for entry in os.scandir(NETNS_DIR):
            with contextlib.suppress(OSError):
                st = entry.stat()
                if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                    return entry.name
    except OSError:
        pass
    return "the caller's namespace"


# ---------------------------------------------------------------------- errors


def kernel_text(exc: BaseException) -> str:
    """The kernel's words for a failure: strerror, plus the extended ack text if any."""
    if isinstance(exc, NetlinkError):
        code = abs(int(exc.code)) if isinstance(exc.code, int) else 0
        base = os.strerror(code) if code else ""
        extra = str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else ""
        if base and extra and extra != base:
            return f"{base} ({extra})"
        return base or extra or repr(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, NetlinkError):
        return abs(int(exc.code)) if isinstance(exc.code, int) else 0
    if isinstance(exc, OSError):
        return exc.errno or 0
    return 0


@contextlib.contextmanager
def _step(what: str, ns: str) -> Iterator[None]:
    """Turn netlink/OS failures inside the block into LinkError('<what> in <ns>: <text>')."""
    try:
        yield
    except LinkError:
        raise
    except (NetlinkError, OSError) as exc:
        raise LinkError(f"{what} in {ns}: {kernel_text(exc)}") from exc


def _check_ifname(name: str) -> None:
    if not name or len(name) > _IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise LinkError(
            f"invalid interface name {name!r} (1-{_IFNAME_MAX} characters, no / or spaces)"
        )


def _norm_mac(mac: str, where: str) -> str:
    text = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(text):
        raise LinkError(f"{where}: {mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    return text


def _norm_ip(ip: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise LinkError(f"{where}: {ip!r} is not an IP address") from None


def _norm_cidr(cidr: str, where: str) -> tuple[str, int]:
    try:
        iface = ipaddress.ip_interface(cidr.strip())
    except ValueError:
        raise LinkError(f"{where}: {cidr!r} is not an address with a prefix (a.b.c.d/n)") from None
    if "/" not in cidr:
        raise LinkError(f"{where}: {cidr!r} has no prefix length (a.b.c.d/n)")
    return str(iface.ip), iface.network.prefixlen


# ---------------------------------------------------------------------- namespaces


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def _is_netns_mount(path: str) -> bool:
    """True when ``path`` is a bind mount of a network namespace (lives on nsfs)."""
    try:
        return os.stat(path).st_dev == _nsfs_dev()
    except OSError:
        return False


def _share_rundir() -> None:
    """Make /run/netns a shared mount, as ``ip netns add`` does, so namespace mounts made
    here show in other mount namespaces too."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    bound = False
    while _libc.mount(b"", NETNS_RUN_B, b"none", _MS_SHARED | _MS_REC, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL or bound:
            raise OSError(err, f"make {NETNS_DIR} shared: {os.strerror(err)}")
        _check(_libc.mount(NETNS_RUN_B, NETNS_RUN_B, b"none", _MS_BIND | _MS_REC, None),
               f"bind {NETNS_DIR}")  # fmt: skip
        bound = True


def ensure_netns(name: str) -> None:
    """Make network namespace ``name`` (/run/netns/<name>, like ``ip netns add``) with
    ``lo`` up; an existing one is kept, a stale unmounted file is replaced."""
    path = _netns_path(name)
    if _is_netns_mount(path):
        _lo_up(name)
        return
    with _step(f"create network namespace {name}", NETNS_DIR):
        _share_rundir()
        with contextlib.suppress(FileNotFoundError):
            _libc.umount2(path.encode(), _MNT_DETACH)
            os.unlink(path)
        # FileExistsError: another thread is making the same namespace; checked below
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

        def make() -> None:
            # unshare() gives only this throwaway thread the new namespace
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(src, path.encode(), b"none", _MS_BIND, None), "mount")

        if not _is_netns_mount(path):
            try:
                _run_in_thread(make)
            except OSError:
                if not _is_netns_mount(path):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    raise
    _lo_up(name)


def _lo_up(name: str) -> None:
    with NsLinks(name) as ns:
        ns.set_up("lo")


def delete_netns(name: str) -> None:
    """Remove network namespace ``name``; a missing one is fine. The kernel frees it (and
    its links) once no process or open fd holds it."""
    path = _netns_path(name)
    if not os.path.lexists(path):
        return
    with _step(f"delete network namespace {name}", NETNS_DIR):
        if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise OSError(err, os.strerror(err))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _netlink_socket_in(name: str) -> int:
    """A raw rtnetlink socket fd living in namespace ``name``."""

    def make() -> int:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             _NETLINK_ROUTE)  # fmt: skip
        return sock.detach()

    return in_netns(name, make)


def _iproute(fileno: int | None = None) -> Any:
    """A pyroute2 IPRoute on ``fileno`` (or a new socket in the caller's namespace), not
    subscribed to events so replies are all it reads."""
    return IPRoute(fileno=fileno, groups=0, ext_ack=True)


# ---------------------------------------------------------------------- links in one ns


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
        fd = _netlink_socket_in(ns)
        try:
            self._ipr = _iproute(fd)
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
            self._ipr = _iproute()
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
        _check_ifname(ifname)
        try:
            found = self._ipr.link("get", ifname=ifname)
        except NetlinkError as exc:
            if _errno_of(exc) == errno.ENODEV:
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
        with _step("list links", self.ns):
            msgs = list(self._ipr.link("dump"))
        names = {int(m["index"]): str(m.get("ifname")) for m in msgs}
        return {str(m.get("ifname")): _link_info(m, names) for m in msgs}

    def addresses(self, ifname: str) -> list[str]:
        """The addresses of ``ifname`` as cidr text (IPv6 link-local left out)."""
        idx = self._require(ifname, "list addresses")
        with _step(f"list addresses of {ifname}", self.ns):
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
        with _step(f"set link {ifname} up", self.ns):
            self._ipr.link("set", index=idx, state="up")

    def _set_addresses(self, ifname: str, idx: int, wanted: list[str]) -> None:
        """Make the addresses of ``ifname`` exactly ``wanted`` (IPv6 link-local kept)."""
        want = {_norm_cidr(c, f"address for {ifname}") for c in wanted}
        have = {_norm_cidr(c, f"address of {ifname}") for c in self.addresses(ifname)}
        for ip, plen in sorted(have - want):
            with _step(f"remove address {ip}/{plen} from {ifname}", self.ns):
                try:
                    self._ipr.addr("del", index=idx, address=ip, prefixlen=plen)
                except NetlinkError as exc:
                    if _errno_of(exc) != errno.EADDRNOTAVAIL:
                        raise
        for ip, plen in sorted(want - have):
            with _step(f"add address {ip}/{plen} to {ifname}", self.ns):
                self._ipr.addr("replace", index=idx, address=ip, prefixlen=plen)

    def ensure_bridge(self, name: str, *, mtu: int, mac: str, addrs: list[str]) -> None:
        """Bridge ``name`` up, with MAC ``mac``, MTU ``mtu``, exactly the addresses ``addrs``
        (cidr text), no STP and forward delay 0."""
        _check_ifname(name)
        mac = _norm_mac(mac, f"MAC of bridge {name}")
        msg = self._msg(name)
        what = f"create bridge {name}"
        if msg is not None and msg.get(("linkinfo", "kind")) != "bridge":
            kind = msg.get(("linkinfo", "kind")) or "device without a kind"
            raise LinkError(f"{what} in {self.ns}: a link {name} exists and is a {kind}")
        if msg is None:
            with _step(what, self.ns):
                try:
                    self._ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu,
                                   br_stp_state=0, br_forward_delay=0)  # fmt: skip
                except NetlinkError as exc:
                    if _errno_of(exc) != errno.EEXIST:
                        raise
        idx = self._require(name, what)
        with _step(f"configure bridge {name} (mtu {mtu}, mac {mac})", self.ns):
            self._ipr.link("set", index=idx, kind="bridge", br_stp_state=0, br_forward_delay=0)
            self._ipr.link("set", index=idx, address=mac, mtu=mtu)
        self._set_addresses(name, idx, addrs)
        with _step(f"set bridge {name} up", self.ns):
            self._ipr.link("set", index=idx, state="up")

    def set_route_source(self, ifname: str, subnet: str, src: str) -> None:
        """Make connections to ``subnet`` over ``ifname`` leave from ``src``.

        The bridge of an overlay holds the gateway (the same on every node) and the node's own
        endpoint address; a connection a node makes into the overlay (a VIP's or the routing
        mesh's relay) must leave from the endpoint address, which is unique, or replies would
        go to whichever node answers for the gateway."""
        idx = self._require(ifname, f"set the source of {subnet}")
        net = ipaddress.ip_network(subnet, strict=False)
        with _step(f"route {subnet} dev {ifname} src {src}", self.ns):
            self._ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen,
                            oif=idx, prefsrc=src, scope=253, proto=2)  # fmt: skip

    def sync_host_addresses(self, ifname: str, wanted: set[str]) -> None:
        """Make the /32 addresses of ``ifname`` exactly ``wanted`` (the VIPs a node answers
        for itself); its other addresses are left alone."""
        idx = self._require(ifname, "set host addresses")
        have = {c.split("/")[0] for c in self.addresses(ifname) if c.endswith("/32")}
        for ip in sorted(have - wanted):
            with _step(f"remove address {ip}/32 from {ifname}", self.ns):
                try:
                    self._ipr.addr("del", index=idx, address=ip, prefixlen=32)
                except NetlinkError as exc:
                    if _errno_of(exc) != errno.EADDRNOTAVAIL:
                        raise
        for ip in sorted(wanted - have):
            with _step(f"add address {ip}/32 to {ifname}", self.ns):
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
        _check_ifname(local_ifname)
        _check_ifname(task_ifname)
        mac = _norm_mac(mac, f"MAC of {task_ifname} in {task_ns}")
        _norm_cidr(addr_cidr, f"address of {task_ifname} in {task_ns}")
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
                fd = _open_netns(task_ns)
                try:
                    with _step(f"create veth pair {local_ifname} / {task_ifname} "
                               f"(peer into {task_ns})", self.ns):  # fmt: skip
                        self._ipr.link(
                            "add", ifname=local_ifname, kind="veth", mtu=mtu,
                            peer={"ifname": task_ifname, "net_ns_fd": fd, "mtu": mtu,
                                  "address": mac},
                        )  # fmt: skip
                finally:
                    os.close(fd)
            local_idx = self._require(local_ifname, what)
            with _step(f"put {local_ifname} on bridge {bridge} (mtu {mtu})", self.ns):
                self._ipr.link("set", index=local_idx, master=br_idx, mtu=mtu)
                self._ipr.link("set", index=local_idx, state="up")
            peer_idx = task._require(task_ifname, what)
            with _step(f"configure {task_ifname} (mac {mac}, mtu {mtu})", task_ns):
                task._ipr.link("set", index=peer_idx, address=mac, mtu=mtu)
            task._set_addresses(task_ifname, peer_idx, [addr_cidr])
            with _step(f"set {task_ifname} up", task_ns):
                task._ipr.link("set", index=peer_idx, state="up")

    def delete_link(self, ifname: str) -> None:
        """Delete link ``ifname``; a missing one is fine."""
        idx = self.index(ifname)
        if idx is None:
            return
        with _step(f"delete link {ifname}", self.ns):
            try:
                self._ipr.link("del", index=idx)
            except NetlinkError as exc:
                if _errno_of(exc) != errno.ENODEV:
                    raise

    def attach(self, ifname: str, *, bridge: str, mtu: int) -> None:
        """Put ``ifname`` on ``bridge`` with MTU ``mtu`` and bring it up."""
        what = f"attach {ifname} to bridge {bridge}"
        idx = self._require(ifname, what)
        br_idx = self._require(bridge, what)
        with _step(f"{what} (mtu {mtu})", self.ns):
            self._ipr.link("set", index=idx, master=br_idx, mtu=mtu)
            self._ipr.link("set", index=idx, state="up")

    # ------------------------------------------------------------------ fdb / neigh

    def fdb(self, dev: str) -> dict[str, str]:
        """The static unicast FDB entries of ``dev`` (a VXLAN link): mac -> dst IP."""
        idx = self._require(dev, "list fdb entries")
        with _step(f"list fdb entries of {dev}", self.ns):
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
                or not _MAC_RE.match(mac)
                or mac == "00:00:00:00:00:00"
                or int(mac[:2], 16) & 1
            ):
                continue
            out[mac] = str(dst)
        return out

    def fdb_replace(self, dev: str, mac: str, dst: str) -> None:
        """Add or change the static FDB entry ``mac -> dst`` on ``dev``."""
        mac = _norm_mac(mac, f"fdb entry on {dev}")
        dst = _norm_ip(dst, f"fdb entry {mac} on {dev}")
        idx = self._require(dev, f"set fdb entry {mac} -> {dst}")
        with _step(f"set fdb entry {mac} -> {dst} on {dev}", self.ns):
            self._ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=dst,
                          state=_NUD_PERMANENT | _NUD_NOARP, flags=_NTF_SELF)  # fmt: skip

    def fdb_delete(self, dev: str, mac: str) -> None:
        """Remove the FDB entry for ``mac`` on ``dev``; a missing one is fine."""
        mac = _norm_mac(mac, f"fdb entry on {dev}")
        idx = self._require(dev, f"delete fdb entry {mac}")
        with _step(f"delete fdb entry {mac} on {dev}", self.ns):
            try:
                self._ipr.fdb("del", ifindex=idx, lladdr=mac,
                              state=_NUD_PERMANENT | _NUD_NOARP, flags=_NTF_SELF)  # fmt: skip
            except NetlinkError as exc:
                if _errno_of(exc) != errno.ENOENT:
                    raise

    def neigh(self, dev: str) -> dict[str, str]:
        """The permanent neighbour entries of ``dev``: IP -> MAC."""
        idx = self._require(dev, "list neighbour entries")
        with _step(f"list neighbour entries of {dev}", self.ns):
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
        ip = _norm_ip(ip, f"neighbour entry on {dev}")
        mac = _norm_mac(mac, f"neighbour entry {ip} on {dev}")
        idx = self._require(dev, f"set neighbour entry {ip} -> {mac}")
        with _step(f"set neighbour entry {ip} -> {mac} on {dev}", self.ns):
            self._ipr.neigh("replace", ifindex=idx, dst=ip, lladdr=mac, state=_NUD_PERMANENT)

    def neigh_delete(self, dev: str, ip: str) -> None:
        """Remove the neighbour entry for ``ip`` on ``dev``; a missing one is fine."""
        ip = _norm_ip(ip, f"neighbour entry on {dev}")
        idx = self._require(dev, f"delete neighbour entry {ip}")
        with _step(f"delete neighbour entry {ip} on {dev}", self.ns):
            try:
                self._ipr.neigh("del", ifindex=idx, dst=ip)
            except NetlinkError as exc:
                if _errno_of(exc) != errno.ENOENT:
                    raise


# ---------------------------------------------------------------------- caller's namespace


def underlay_for(addr: str) -> tuple[str, int]:
    """(ifname, mtu) of the interface holding ``addr`` in the caller's namespace."""
    ip = _norm_ip(addr, "underlay address")
    with NsLinks.here() as here, _step(f"find the interface holding {ip}", here.ns):
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
    _check_ifname(name)
    local = _norm_ip(local, f"local address of vxlan link {name}")
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
            with _step(what, here.ns):
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
    fd = _open_netns(ns)
    try:
        with _step(f"move {ifname} into {ns}", here.ns):
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
    _check_ifname(ifname)
    with NsLinks(ns) as target:
        if target.index(ifname) is None:
            with NsLinks.here() as here:
                idx = here._require(ifname, f"move {ifname} into {ns}")
                fd = _open_netns(ns)
                try:
                    with _step(f"move {ifname} into {ns}", here.ns):
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
        _norm_mac(mac, f"fdb entry on {dev}"): _norm_ip(dst, f"fdb entry {mac} on {dev}")
        for mac, dst in fdb.items()
    }
    want_neigh = {
        _norm_ip(ip, f"neighbour entry on {dev}"): _norm_mac(mac, f"neighbour entry {ip} on {dev}")
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
