"""The userspace VXLAN data plane as the agent sees it: ``open_tap`` and ``UserspaceDataplane``.

``UserspaceDataplane`` owns one UDP socket bound (in the caller's network namespace) to the
node's underlay address and the data-path port, and runs the C plane (meshkit._vxlan_ffi,
built from meshkit/_vxlan.c) unless MESHKIT_NO_EXTENSIONS=1 or the module is missing, when
it runs the pure-Python twin (dataplane_py). Both behave the same; see vxlan_wire for the rules.

``UserspaceDataplane.open_tap`` opens a TAP the way the chosen plane reads it: with
IFF_VNET_HDR for the C plane, which then uses TSO/checksum offloads from the TAP, UDP GSO/GRO
on the socket and GSO super-frames into the TAP (see includes/vxlan.h); plain for the twin.
The module-level ``open_tap`` always opens a plain TAP, which both planes serve.

TAP fds stay the caller's: ``add_network`` makes them non-blocking, ``remove_network`` and
``close`` never close them (after ``remove_network`` returns no thread touches the fd, so the
caller may close it). The plane closes only what it opened: its UDP socket and its own
epoll/eventfd (C) or wake pipe (Python).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import socket
import struct
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

from meshkit._ext import extensions_disabled
from meshkit.net.vxlan import seal, wire
from meshkit.net.vxlan.plane_py import DataplaneError, PyDataplane

__all__ = ["DataplaneError", "UserspaceDataplane", "load_vxlan_ffi", "open_tap"]

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SOCKET_BUFFER = 4 << 20  # room for a few batches of full-size datagrams per direction
# SCHED_FIFO priority the C threads take while they move a bulk stream (see
# vx_plane_set_burst_priority in includes/vxlan.h); MESHKIT_VXLAN_BURST_PRIO=N turns it on.
# Off by default: it wins CPU from other processes on a busy host (measured: 1.17x vs 0.80x the
# kernel's TCP on a loaded 2-vCPU VM) at 20-50% more CPU per byte, and a real-time thread under a
# sustained stream is bounded only by the kernel's RT throttling; that trade is the operator's.
BURST_PRIORITY = 0
BURST_PRIORITY_ENV = "MESHKIT_VXLAN_BURST_PRIO"
VNET_OFFLOADS = True  # UserspaceDataplane.open_tap asks for IFF_VNET_HDR for the C plane
# MESHKIT_VXLAN_TAP_USO=0: the C plane never writes UDP GSO (USO) super-frames into its TAPs
# (one datagram per write); read once when a plane is made. Unset or 1: it tries USO and turns
# it off for good when a TAP refuses it (kernels before 6.2).
TAP_USO_ENV = "MESHKIT_VXLAN_TAP_USO"


def open_tap(name: str) -> int:
    """A new TAP device ``name`` (IFF_TAP | IFF_NO_PI) in the caller's namespace; its fd.

    The device lives while the fd is open. DataplaneError names the device when it fails.
    ``UserspaceDataplane.open_tap`` opens it the way a given plane serves it fastest."""
    return _open_tap(name, IFF_TAP | IFF_NO_PI)


def _open_tap(name: str, flags: int) -> int:
    if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        raise DataplaneError(f"invalid TAP name {name!r}: 1..15 characters, no '/' or spaces")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DataplaneError(f"cannot open /dev/net/tun for TAP {name}: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        raise DataplaneError(f"cannot create TAP {name}: {exc.strerror}") from None
    return fd


def tap_uso_setting() -> bool:
    """Whether the C plane may try USO super-frames into TAPs: $MESHKIT_VXLAN_TAP_USO, 1
    (default) or 0. DataplaneError names the setting when it is neither."""
    text = os.environ.get(TAP_USO_ENV, "").strip()
    if text not in ("", "0", "1"):
        raise DataplaneError(f"{TAP_USO_ENV}={text!r}: expected 0 (off) or 1 (on)")
    return text != "0"


def burst_priority_setting(prio: int | None) -> int:
    """The burst priority to use: ``prio``, else $MESHKIT_VXLAN_BURST_PRIO, else
    BURST_PRIORITY. DataplaneError names the setting when it is not 0..99."""
    where = "burst_priority"
    if prio is None:
        text = os.environ.get(BURST_PRIORITY_ENV, "").strip()
        if not text:
            return BURST_PRIORITY
        where = BURST_PRIORITY_ENV
        try:
            prio = int(text)
        except ValueError:
            raise DataplaneError(f"{where}={text!r}: not a SCHED_FIFO priority (0..99)") from None
    if not 0 <= prio <= 99:
        raise DataplaneError(f"{where}={prio}: must be 0 (off) .. 99")
    return prio


def load_vxlan_ffi() -> ModuleType | None:
    """The compiled ``meshkit._vxlan_ffi`` module, or None when disabled or not built."""
    if extensions_disabled():
        return None
    try:
        return importlib.import_module("meshkit._vxlan_ffi")
    except ImportError:
        return None


class _Plane(Protocol):
    implementation: str

    def add_network(self, vni: int, tap_fd: int) -> None: ...
    def remove_network(self, vni: int) -> None: ...
    def set_peers(self, vni: int, tables: wire.Tables) -> None: ...
    def set_keys(self, vni: int, keys: list[seal.NetKey], tx_id: int, cipher: int) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def set_burst_priority(self, prio: int) -> None: ...
    def set_tap_uso(self, on: bool) -> None: ...
    def stats(self) -> tuple[dict[str, dict[str, int]], dict[str, int], int]: ...
    def offload_stats(self) -> dict[str, int]: ...


class _CPlane:
    """The C plane through cffi; calls release the GIL, the packet threads never take it."""

    implementation = "c"

    def __init__(self, mod: ModuleType, sock: socket.socket) -> None:
        self._ffi: Any = mod.ffi
        self._lib: Any = mod.lib
        self._p: Any = self._lib.vx_plane_new(sock.fileno())
        if self._p == self._ffi.NULL:
            raise DataplaneError(f"cannot create the VXLAN data plane: {self._strerror()}")
        names = [self._ffi.string(self._lib.vx_drop_name(i)).decode()
                 for i in range(self._lib.VX_DROP_COUNT)]  # fmt: skip
        if tuple(names) != wire.DROP_REASONS:  # the C enum and the Python list must agree
            self.close()
            raise DataplaneError(f"C drop reasons {names} differ from {wire.DROP_REASONS}")
        if len(wire.OFFLOAD_STATS) != self._lib.VX_OFFLOAD_COUNT:
            self.close()
            raise DataplaneError(f"C has {self._lib.VX_OFFLOAD_COUNT} offload counters, "
                                 f"Python names {len(wire.OFFLOAD_STATS)}")  # fmt: skip

    def _strerror(self) -> str:
        return os.strerror(self._ffi.errno)

    def add_network(self, vni: int, tap_fd: int) -> None:
        wire.check_vni(vni)
        if self._lib.vx_plane_add_network(self._p, vni, tap_fd) < 0:
            why = self._ffi.errno
            if why == 17:  # EEXIST
                raise DataplaneError(f"VNI {vni} or TAP fd {tap_fd} is already added")
            raise DataplaneError(f"cannot add VNI {vni} (TAP fd {tap_fd}): {os.strerror(why)}")

    def remove_network(self, vni: int) -> None:
        if self._lib.vx_plane_remove_network(self._p, vni) < 0:
            raise DataplaneError(f"no network with VNI {vni}")

    def set_peers(self, vni: int, tables: wire.Tables) -> None:
        fdb = b"".join(mac + wire.ip_to_bytes(ip) for mac, ip in tables.fdb.items())
        neigh = b"".join(ip + mac for ip, mac in tables.neigh.items())
        rc = self._lib.vx_plane_set_peers(self._p, vni, fdb, len(tables.fdb), neigh,
                                          len(tables.neigh))  # fmt: skip
        if rc < 0:
            if self._ffi.errno == 2:  # ENOENT
                raise DataplaneError(f"no network with VNI {vni}")
            raise DataplaneError(f"cannot set peers of VNI {vni}: {self._strerror()}")

    def set_keys(self, vni: int, keys: list[seal.NetKey], tx_id: int, cipher: int) -> None:
        arr = self._ffi.new("vx_key_t[]", max(len(keys), 1))
        for i, key in enumerate(keys):
            arr[i].id = key.id
            arr[i].aes = key.aes_key
            arr[i].chacha = key.chacha_key
            arr[i].salt = key.salt
        if self._lib.vx_plane_set_keys(self._p, vni, arr, len(keys), tx_id, cipher) < 0:
            why = self._ffi.errno
            if why == 2:  # ENOENT
                raise DataplaneError(f"no network with VNI {vni}")
            raise DataplaneError(f"cannot set the keys of VNI {vni}: {os.strerror(why)}")

    def start(self) -> None:
        if self._lib.vx_plane_start(self._p) < 0:
            raise DataplaneError(f"cannot start the data plane: {self._strerror()}")

    def stop(self) -> None:
        self._lib.vx_plane_stop(self._p)

    def set_burst_priority(self, prio: int) -> None:
        self._lib.vx_plane_set_burst_priority(self._p, prio)

    def set_tap_uso(self, on: bool) -> None:
        self._lib.vx_plane_set_tap_uso(self._p, int(on))

    def test_refuse_uso(self, after: int) -> None:
        """TEST HOOK (tests, bench/overlay.py's runner): after ``after`` more USO super-frames
        into TAPs, the next fails as on a kernel before 6.2 (EINVAL); -1 never."""
        self._lib.vx_plane_test_refuse_uso(self._p, after)

    def close(self) -> None:
        if self._p is not None and self._p != self._ffi.NULL:
            self._lib.vx_plane_free(self._p)
        self._p = None

    def stats(self) -> tuple[dict[str, dict[str, int]], dict[str, int], int]:
        cap = self._lib.vx_plane_peer_count(self._p) + 16  # peers added meanwhile are left out
        out = self._ffi.new("vx_peer_stats_t[]", cap)
        drops = self._ffi.new("uint64_t[]", self._lib.VX_DROP_COUNT)
        arp = self._ffi.new("uint64_t *")
        n = self._lib.vx_plane_read_stats(self._p, out, cap, drops, arp)
        peers = {
            wire.ip_to_text(out[i].ip.to_bytes(4, "big")): {
                "tx_frames": out[i].tx_frames,
                "tx_bytes": out[i].tx_bytes,
                "rx_frames": out[i].rx_frames,
                "rx_bytes": out[i].rx_bytes,
            }
            for i in range(n)
        }
        return peers, dict(zip(wire.DROP_REASONS, drops, strict=True)), int(arp[0])

    def offload_stats(self) -> dict[str, int]:
        out = self._ffi.new("uint64_t[]", self._lib.VX_OFFLOAD_COUNT)
        self._lib.vx_plane_offload_stats(self._p, out)
        return {name: int(out[i]) for i, name in enumerate(wire.OFFLOAD_STATS)}


class UserspaceDataplane:
    """TAP <-> VXLAN/UDP for any number of networks, C or pure Python (see the module doc)."""

    implementation: str

    def __init__(
        self,
        bind: str,
        port: int,
        implementation: str | None = None,
        socket_buffer: int = SOCKET_BUFFER,
        burst_priority: int | None = None,
    ) -> None:
        """Bind the UDP socket to ``bind:port`` in the caller's namespace. ``implementation``
        ("c" or "python") overrides the automatic choice (benches and tests use it);
        ``socket_buffer``: SO_RCVBUF/SO_SNDBUF bytes (bench/overlay.py compares sizes);
        ``burst_priority``: the SCHED_FIFO priority of the C threads during bulk streams, 0 off
        (None: $MESHKIT_VXLAN_BURST_PRIO, else BURST_PRIORITY; the Python twin ignores it)."""
        prio = burst_priority_setting(burst_priority)
        tap_uso = tap_uso_setting()
        try:
            wire.ip_to_bytes(bind)
        except wire.WireError as exc:
            raise DataplaneError(f"invalid bind address: {exc}") from None
        if not 1 <= port <= 65535:
            raise DataplaneError(f"invalid data-path port {port}: must be 1..65535")
        mod = load_vxlan_ffi() if implementation != "python" else None
        if implementation == "c" and mod is None:
            raise DataplaneError("the C data plane (meshkit._vxlan_ffi) is not available")
        if implementation not in (None, "c", "python"):
            raise DataplaneError(f"invalid implementation {implementation!r}: 'c' or 'python'")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
                try:  # SO_RCVBUFFORCE/SO_SNDBUFFORCE pass net.core.*mem_max as root
                    self._sock.setsockopt(socket.SOL_SOCKET, force, socket_buffer)
                except OSError:
                    self._sock.setsockopt(socket.SOL_SOCKET, opt, socket_buffer)
            self._sock.bind((bind, port))
        except OSError as exc:
            self._sock.close()
            raise DataplaneError(f"cannot bind the VXLAN socket to {bind}:{port}: "
                                 f"{exc.strerror}") from None  # fmt: skip
        try:
            self._plane: _Plane = _CPlane(mod, self._sock) if mod else PyDataplane(self._sock)
        except BaseException:
            self._sock.close()
            raise
        self.implementation = self._plane.implementation
        self._plane.set_burst_priority(prio)
        self._plane.set_tap_uso(tap_uso)
        self._closed = False

    def open_tap(self, name: str) -> int:
        """A new TAP ``name`` opened the way this plane serves it: with IFF_VNET_HDR for the
        C plane (TSO/checksum offloads, GSO super-frames on receive), plain for the Python
        twin. Pass the fd to ``add_network``; the caller closes it. DataplaneError names the
        device when it fails."""
        flags = IFF_TAP | IFF_NO_PI
        if self.implementation == "c" and VNET_OFFLOADS:
            flags |= IFF_VNET_HDR
        return _open_tap(name, flags)

    def add_network(self, vni: int, tap_fd: int) -> None:
        """Serve network ``vni`` through ``tap_fd`` (made non-blocking, never closed here)."""
        try:
            wire.check_vni(vni)
        except wire.WireError as exc:
            raise DataplaneError(f"network {vni}: {exc}") from None
        self._plane.add_network(vni, tap_fd)

    def remove_network(self, vni: int) -> None:
        """Stop serving ``vni``; closes nothing: the caller may close the TAP fd afterwards."""
        self._plane.remove_network(vni)

    def set_peers(self, vni: int, fdb: Mapping[str, str], neigh: Mapping[str, str]) -> None:
        """Replace network ``vni``'s whole FDB (MAC text -> peer underlay IPv4) and neighbour
        table (IPv4 -> MAC text, answered by the ARP proxy)."""
        try:
            tables = wire.Tables.from_text(fdb, neigh)
        except wire.WireError as exc:
            raise DataplaneError(f"peers of VNI {vni}: {exc}") from None
        self._plane.set_peers(vni, tables)

    def set_keys(
        self, vni: int, keys: list[seal.NetKey], tx_id: int, cipher: int | None = None
    ) -> None:
        """Make network ``vni`` encrypted, for good: datagrams are sealed with key ``tx_id``
        (none: frames are dropped as no_key) and ``cipher`` (default: AES-256-GCM where the CPU
        has AES instructions, else ChaCha20-Poly1305), and opened with any of ``keys``. Call it
        again with the new list to rotate."""
        self._plane.set_keys(vni, list(keys), tx_id, cipher or seal.preferred_cipher())

    def start(self) -> None:
        """Start the packet threads."""
        self._plane.start()

    def stop(self) -> None:
        """Stop the packet threads (they may be started again)."""
        self._plane.stop()

    def close(self) -> None:
        """Stop the threads and close the socket and the plane's own fds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._plane.close()
        finally:
            self._sock.close()

    def stats(self) -> dict[str, Any]:
        """``{"peers": {ip: {tx_frames, tx_bytes, rx_frames, rx_bytes}}, "drops": {reason: n},
        "arp_replies": n, "implementation": "c" | "python", "offload": {name: n}}``; offload
        counts TSO frames read, UDP_SEGMENT trains sent, GRO buffers received, GSO super-frames
        written, whether UDP GSO/GRO are on (1/0), the burst priority in effect (0: off or
        refused), how many times a thread took it, and whether USO super-frames into TAPs are in
        use (1/0: off by $MESHKIT_VXLAN_TAP_USO=0 or refused by the kernel; 0 for the twin)."""
        peers, drops, arp = self._plane.stats()
        return {"peers": peers, "drops": drops, "arp_replies": arp,
                "implementation": self.implementation,
                "offload": self._plane.offload_stats()}  # fmt: skip

    def __enter__(self) -> UserspaceDataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
