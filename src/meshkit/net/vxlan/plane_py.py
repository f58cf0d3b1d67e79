"""The pure-Python twin of the C VXLAN data plane (meshkit/_vxlan.c): same rules, same
counters, two Python threads. It only needs to be correct, not fast; the rules themselves are
the sans-IO functions of vxlan_wire. It reads plain TAPs only (no IFF_VNET_HDR, so no
offloads) and refuses a vnet TAP by name.

Threads: TX waits (selectors) on every TAP fd plus a wake pipe, reads frames and routes them
(send / ARP reply / drop); RX waits on the UDP socket plus the wake pipe and delivers good
datagrams to the VNI's TAP. Both handle a batch while holding ``_lock``; every table change
takes the same lock and swaps whole immutable tables, so no thread ever sees a half-made one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from meshkit.net.vxlan import seal, wire

BATCH = 64
MAX_FRAME = 65535
TX_ROUND_FRAMES = 256


TUNGETIFF = 0x800454D2
IFF_VNET_HDR = 0x4000


def _tap_flags(fd: int) -> int:
    """The flags a TAP fd was opened with; 0 for anything that is not a TUN/TAP fd."""
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError:
        return 0
    return int(struct.unpack_from("16xH", ifr)[0])


class DataplaneError(Exception):
    """A data-plane request was refused; the message says which network or fd and why."""


@dataclass
class _Peer:
    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0


@dataclass
class _Net:
    vni: int
    fd: int
    tables: wire.Tables = field(default_factory=lambda: wire.Tables({}, {}))
    keys: _Keys | None = None  # set for good by set_keys: the network is encrypted


@dataclass
class _Keys:
    """An encrypted network's keys: TX state (TX thread) and replay windows (RX thread)."""

    cipher: int
    by_id: dict[int, seal.NetKey]
    tx: seal.NetKey | None
    counters: dict[int, int]  # key id -> last TX counter
    windows: dict[tuple[int, str], seal.ReplayWindow]  # (key id, peer) -> window


class PyDataplane:
    """The twin; ``sock`` is a bound IPv4 UDP socket the caller owns (made non-blocking)."""

    implementation = "python"

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        self._self_ip = wire.ip_to_bytes(sock.getsockname()[0])
        self._lock = threading.Lock()
        self._nets: dict[int, _Net] = {}
        self._peers: dict[str, _Peer] = {}
        self._active: frozenset[str] = frozenset()
        self._drops = dict.fromkeys(wire.DROP_REASONS, 0)
        self._arp_replies = 0
        # TX drains its wake pipe; the stop pipe stays readable until both threads are
        # joined, so one thread draining can never leave the other asleep
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._generation = 0  # bumped by table changes that the TX selector must follow
        self._synced = 0
        self._synced_cond = threading.Condition(self._lock)
        self._closed = False

    # ------------------------------------------------------------------ configuration

    def add_network(self, vni: int, tap_fd: int) -> None:
        """Serve ``tap_fd`` as network ``vni``; the fd is made non-blocking, never closed."""
        wire.check_vni(vni)
        if _tap_flags(tap_fd) & IFF_VNET_HDR:
            raise DataplaneError(
                f"TAP fd {tap_fd} for VNI {vni} was opened with IFF_VNET_HDR, "
                "which the Python data plane does not read; open it plain"
            )
        with self._lock:
            for net in self._nets.values():
                if net.vni == vni:
                    raise DataplaneError(f"network with VNI {vni} is already added")
                if net.fd == tap_fd:
                    raise DataplaneError(f"TAP fd {tap_fd} already serves VNI {net.vni}")
            try:
                os.set_blocking(tap_fd, False)
            except OSError as exc:
                raise DataplaneError(f"TAP fd {tap_fd} for VNI {vni}: {exc.strerror}") from None
            self._nets[vni] = _Net(vni, tap_fd)
            self._generation += 1
        self._wake()

    def remove_network(self, vni: int) -> None:
        """Stop serving ``vni``; when this returns no thread uses its TAP fd (not closed)."""
        with self._lock:
            if vni not in self._nets:
                raise DataplaneError(f"no network with VNI {vni}")
            del self._nets[vni]
            self._active = self._active_peers()
            self._generation += 1
            target = self._generation
        self._wake()
        with self._synced_cond:
            # the TX selector must drop the fd before the caller may close it (and the
            # number be reused); with no TX thread running there is nothing to wait for
            while self._tx_running() and self._synced < target:
                self._synced_cond.wait(0.5)

    def set_peers(self, vni: int, tables: wire.Tables) -> None:
        """Replace network ``vni``'s FDB and neighbour table."""
        with self._lock:
            net = self._nets.get(vni)
            if net is None:
                raise DataplaneError(f"no network with VNI {vni}")
            net.tables = tables
            for ip in tables.fdb.values():
                self._peers.setdefault(ip, _Peer())
            self._active = self._active_peers()

    def set_keys(self, vni: int, keys: list[seal.NetKey], tx_id: int, cipher: int) -> None:
        """Make network ``vni`` encrypted (for good) with ``keys``; TX seals with key
        ``tx_id`` and ``cipher``. Kept key ids keep their counters and replay windows."""
        if cipher not in seal.CIPHER_NAMES:
            raise DataplaneError(f"unknown cipher {cipher} for VNI {vni}")
        if self._self_ip == bytes(4):
            raise DataplaneError("an encrypted network needs the socket bound to an address")
        start = time.time_ns()
        with self._lock:
            net = self._nets.get(vni)
            if net is None:
                raise DataplaneError(f"no network with VNI {vni}")
            old = net.keys
            by_id = {k.id: k for k in keys}
            counters = {k.id: start for k in keys}
            windows: dict[tuple[int, str], seal.ReplayWindow] = {}
            if old is not None:
                for key_id, key in by_id.items():
                    if old.by_id.get(key_id) != key:
                        continue
                    counters[key_id] = max(old.counters[key_id], start)
                    for (kid, peer), win in old.windows.items():
                        if kid == key_id:
                            windows[(kid, peer)] = win.copy()
            net.keys = _Keys(cipher, by_id, by_id.get(tx_id), counters, windows)

    def _active_peers(self) -> frozenset[str]:
        return frozenset(ip for net in self._nets.values() for ip in net.tables.fdb.values())

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Start the TX and RX threads."""
        if self._threads:
            raise DataplaneError("the data plane is already started")
        if self._closed:
            raise DataplaneError("the data plane is closed")
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._tx_main, name="mk-vxlan-tx-py", daemon=True),
            threading.Thread(target=self._rx_main, name="mk-vxlan-rx-py", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Wake both threads and join them; idempotent."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._stop_w, b"s")
        for thread in self._threads:
            thread.join()
        self._threads = []
        for fd in (self._wake_r, self._stop_r):
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 4096):
                    pass

    def close(self) -> None:
        """Stop and close the wake and stop pipes (the socket and TAP fds stay the caller's)."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        for fd in (self._wake_r, self._wake_w, self._stop_r, self._stop_w):
            os.close(fd)

    def set_burst_priority(self, prio: int) -> None:
        """Accepted for the C plane's sake: the twin's threads keep their scheduling (they hold
        the GIL, and a real-time thread spinning on it would starve the rest)."""

    def set_tap_uso(self, on: bool) -> None:
        """Accepted for the C plane's sake: the twin writes one plain frame per TAP write and
        never a USO super-frame (it refuses vnet TAPs), so there is nothing to turn off."""

    def stats(self) -> tuple[dict[str, dict[str, int]], dict[str, int], int]:
        """(peers, drops, ARP replies) counters, copied under the lock."""
        with self._lock:
            peers = {ip: dict(vars(p)) for ip, p in self._peers.items()}
            return peers, dict(self._drops), self._arp_replies

    def offload_stats(self) -> dict[str, int]:
        """The twin uses no offloads: all zero."""
        return dict.fromkeys(wire.OFFLOAD_STATS, 0)

    def _tx_running(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes
            os.write(self._wake_w, b"w")

    # ------------------------------------------------------------------ TX

    def _tx_main(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        sel.register(self._stop_r, selectors.EVENT_READ, None)
        watched: dict[int, int] = {}  # fd -> vni
        try:
            while not self._stopping:
                with self._lock:
                    wanted = {net.fd: net.vni for net in self._nets.values()}
                    for fd in [fd for fd in watched if watched[fd] != wanted.get(fd)]:
                        with contextlib.suppress(KeyError, ValueError, OSError):
                            sel.unregister(fd)
                        del watched[fd]
                    for fd, vni in wanted.items():
                        if fd not in watched:
                            with contextlib.suppress(OSError, ValueError, KeyError):
                                sel.register(fd, selectors.EVENT_READ, vni)
                                watched[fd] = vni
                    self._synced = self._generation
                    self._synced_cond.notify_all()
                events = sel.select()
                with self._lock:
                    for key, _ in events:
                        if key.data is None:
                            with contextlib.suppress(BlockingIOError):
                                os.read(self._wake_r, 4096)
                            continue
                        net = self._nets.get(key.data)
                        if net is not None and net.fd == key.fd:
                            self._drain_tap(net)
        finally:
            sel.close()

    def _drain_tap(self, net: _Net) -> None:
        out: list[tuple[bytes, str, int]] = []
        for _ in range(TX_ROUND_FRAMES):
            try:
                frame = os.read(net.fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drops["tap_read_error"] += 1
                break
            if not frame:
                break
            action = wire.route_frame(frame, net.tables)
            if isinstance(action, wire.ArpReply):
                if self._write_tap(net.fd, action.frame):
                    self._arp_replies += 1
                else:
                    self._drops["tap_write_error"] += 1
            elif isinstance(action, wire.Drop):
                self._drops[action.reason] += 1
            elif len(frame) + wire.HEADER_LEN + (seal.OVERHEAD if net.keys else 0) > (
                wire.MAX_UDP_PAYLOAD
            ):
                self._drops["too_big"] += 1
            elif net.keys is not None:
                keys = net.keys
                if keys.tx is None:
                    self._drops["no_key"] += 1
                    continue
                ctr = keys.counters[keys.tx.id] = keys.counters[keys.tx.id] + 1
                datagram = seal.seal(keys.cipher, keys.tx, self._self_ip, ctr, net.vni, frame)
                out.append((datagram, action.peer, len(frame)))
            else:
                out.append((wire.encode_header(net.vni) + frame, action.peer, len(frame)))
                if len(out) == BATCH:
                    self._send(out)
                    out = []
        self._send(out)

    def _send(self, out: list[tuple[bytes, str, int]]) -> None:
        for datagram, peer, frame_len in out:
            try:
                self._sock.sendto(datagram, (peer, self._port))
            except OSError as exc:
                self._drops["too_big" if exc.errno == errno.EMSGSIZE else "send_error"] += 1
                continue
            counters = self._peers[peer]
            counters.tx_frames += 1
            counters.tx_bytes += frame_len

    @staticmethod
    def _write_tap(fd: int, frame: bytes) -> bool:
        try:
            return os.write(fd, frame) == len(frame)
        except OSError:
            return False

    # ------------------------------------------------------------------ RX

    def _rx_main(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._stop_r, selectors.EVENT_READ)
        sel.register(self._sock, selectors.EVENT_READ)
        try:
            while not self._stopping:
                sel.select()
                batch: list[tuple[bytes, str]] = []
                while len(batch) < BATCH:
                    try:
                        data, addr = self._sock.recvfrom(MAX_FRAME + wire.HEADER_LEN)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        with self._lock:
                            self._drops["recv_error"] += 1
                        continue
                    batch.append((data, addr[0]))
                if batch:
                    with self._lock:
                        self._deliver(batch)
        finally:
            sel.close()

    def _deliver(self, batch: list[tuple[bytes, str]]) -> None:
        for data, source in batch:
            checked = wire.check_datagram(data)
            if isinstance(checked, str):
                self._drops[checked] += 1
                continue
            vni, frame = checked
            net = self._nets.get(vni)
            if net is None:
                self._drops["unknown_vni"] += 1
                continue
            if source not in self._active:
                self._drops["unknown_peer"] += 1
                continue
            if (net.keys is not None) != (data[3] != 0):
                self._drops["not_sealed"] += 1
                continue
            if net.keys is not None:
                opened = self._open(net.keys, source, data)
                if isinstance(opened, str):
                    self._drops[opened] += 1
                    continue
                frame = opened
            if not self._write_tap(net.fd, frame):
                self._drops["tap_write_error"] += 1
                continue
            counters = self._peers[source]
            counters.rx_frames += 1
            counters.rx_bytes += len(frame)

    @staticmethod
    def _open(keys: _Keys, source: str, data: bytes) -> bytes | str:
        """The inner frame of a sealed datagram from ``source``, or the drop reason; the
        window moves only for a frame that opened (as vx_open_in_place)."""
        head = seal.parse(data)
        if isinstance(head, str):
            return head
        key = keys.by_id.get(head.key_id)
        if key is None:
            return "unknown_key"
        win = keys.windows.setdefault((key.id, source), seal.ReplayWindow())
        verdict = win.check(head.counter, time.time_ns())
        if verdict is not None:
            return verdict
        frame = seal.open_frame(key, wire.ip_to_bytes(source), data)
        if isinstance(frame, bytes):
            win.update(head.counter)
        return frame
