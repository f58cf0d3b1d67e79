"""The relay behind a namespace's VIPs on every port, where the kernel cannot DNAT them itself.

One listening TCP socket per overlay namespace; nftables ``redirect`` sends it the flows to a
VIP on ports the service does not declare (meshkit.net.vipnat, the ``relay`` path). Each
accepted client's original destination (VIP, port) comes from ``getsockopt(SO_ORIGINAL_DST)``
(conntrack keeps it across the redirect); the VIP's connection table (meshkit.lb, with its
policies: round robin here, flows pinned until they end) picks a task, and the relay engine
(meshkit.l4.relay: the C relay, or its Python twin) connects to that task on the same port and
moves the bytes. A task that leaves is taken out of its table and its open flows are closed.

Reading the original destination is one getsockopt per new connection, in Python for both
engines: the bytes themselves never pass through Python with the C relay.

UDP has no SO_ORIGINAL_DST: nftables ``tproxy`` hands the datagrams to one transparent UDP
socket (IP_TRANSPARENT), whose ``recvmsg`` says where each was going (IP_RECVORIGDSTADDR).
Each client flow (client, VIP, port) gets a connected socket to its task and a reply socket
bound to the VIP and port (a local address of the namespace), so the client hears back from
the address it asked; flows idle for UDP_IDLE seconds are let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from meshkit.base.netns import NetnsRef, entered
from meshkit.l4.endpoints import backend_id_for, fmt_addr
from meshkit.l4.relay import make_relay
from meshkit.lb import ConnTable, PyConnTable

log = logging.getLogger("meshkit.l4.origdst")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP_TRANSPARENT = 19  # linux/in.h
IP_RECVORIGDSTADDR = 20
TCP, UDP = 6, 17
ACCEPT_BATCH = 64
UDP_BATCH = 64
UDP_MAX = 65535
UDP_IDLE = 60.0


def original_dst(fd: int) -> tuple[str, int]:
    """(address, port) a redirected TCP client asked for (OSError when there is none)."""
    s = socket.socket(fileno=fd)
    try:
        raw = s.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    finally:
        s.detach()
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


def _sockaddr_in(raw: bytes) -> tuple[str, int]:
    return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


class _UdpFlow:
    """One client's datagrams to one task: a socket connected to the task, and one bound to
    the VIP and port the client asked, to answer from."""

    def __init__(self, relay: OrigDstRelay, key: tuple[int, str, int, str, int], ip: str) -> None:
        self.relay = relay
        self.key = key
        self.client = (key[1], key[2])
        self.last = relay.loop.time()
        with entered(relay.ns):
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            up.setblocking(False)
            up.connect((ip, key[4]))
            back.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            back.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            back.bind((key[3], key[4]))
            back.setblocking(False)
        except OSError:
            up.close()
            back.close()
            raise
        self.up, self.back = up, back
        relay.loop.add_reader(up.fileno(), self.on_reply)

    def send(self, data: bytes) -> None:
        self.last = self.relay.loop.time()
        with contextlib.suppress(OSError):  # a refused datagram: the task's ICMP, UDP's way
            self.up.send(data)

    def on_reply(self) -> None:
        for _ in range(UDP_BATCH):
            try:
                data = self.up.recv(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.last = self.relay.loop.time()
            with contextlib.suppress(OSError):
                self.back.sendto(data, self.client)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.relay.loop.remove_reader(self.up.fileno())
        self.up.close()
        self.back.close()


@dataclass
class _Vip:
    table: PyConnTable
    ids: dict[str, int] = field(default_factory=dict)  # task ip -> backend id
    ips: dict[int, str] = field(default_factory=dict)


class OrigDstRelay:
    """The relay of one namespace: a listening socket, a table per VIP, one relay engine."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ns: NetnsRef | None,
        *,
        policy: str = "round_robin",
        connect_timeout: float = 2.0,
        idle_timeout: float = 3600.0,
    ) -> None:
        self.loop = loop
        self.ns = ns
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.relay = make_relay()
        self.vips: dict[str, _Vip] = {}
        self.pairs: dict[int, tuple[str, tuple[int, str, int, str, int]]] = {}
        self.sock: socket.socket | None = None
        self.udp: socket.socket | None = None
        self.udp_flows: dict[tuple[int, str, int, str, int], _UdpFlow] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.port = 0
        self.udp_port = 0
        self.accepted = 0
        self.no_backend = 0

    def start(self) -> tuple[int, int]:
        """Listen in the namespace, TCP and (transparent) UDP, on free ports: the ports."""
        with entered(self.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", 0))
            sock.listen(4096)
            sock.setblocking(False)
            udp.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            udp.bind(("0.0.0.0", 0))
            udp.setblocking(False)
        except OSError:
            sock.close()
            udp.close()
            raise
        self.sock, self.udp = sock, udp
        self.port, self.udp_port = sock.getsockname()[1], udp.getsockname()[1]
        self.loop.add_reader(sock.fileno(), self._on_accept)
        self.loop.add_reader(udp.fileno(), self._on_datagrams)
        self.loop.add_reader(self.relay.fileno(), self._on_relay)
        self._sweep = self.loop.call_later(UDP_IDLE / 4, self._expire)
        return self.port, self.udp_port

    # -- backends ----------------------------------------------------------------------------

    def set_vips(self, wanted: dict[str, tuple[str, ...]]) -> None:
        """VIP -> its up tasks. A VIP or a task that left: its open flows are closed."""
        for vip in [v for v in self.vips if v not in wanted]:
            state = self.vips.pop(vip)
            for bid in list(state.ips):
                self._drop(state, bid)
        for vip, ips in wanted.items():
            if vip not in self.vips:
                self.vips[vip] = _Vip(ConnTable(self.policy))
            state = self.vips[vip]
            for ip in [i for i in state.ids if i not in ips]:
                self._drop(state, state.ids[ip])
            for ip in ips:
                if ip in state.ids:
                    continue
                bid = backend_id_for(ip, 0, set(state.ips))
                state.table.add_backend(bid, 1, True)
                state.ids[ip], state.ips[bid] = bid, ip

    def _drop(self, state: _Vip, bid: int) -> None:
        keys = set(state.table.remove_backend(bid))
        for pair, (_vip, key) in list(self.pairs.items()):
            if key in keys:
                self.relay.close(pair)
                del self.pairs[pair]
        for key in keys & set(self.udp_flows):
            self.udp_flows.pop(key).close()
        ip = state.ips.pop(bid, "")
        state.ids.pop(ip, None)

    # -- flows -------------------------------------------------------------------------------

    def _on_accept(self) -> None:
        if self.sock is None:
            return
        try:
            clients = self.relay.accept(self.sock.fileno(), ACCEPT_BATCH)
        except OSError as exc:
            log.error("VIP relay: accept: %s", exc.strerror or exc)
            return
        now = self.loop.time()
        for fd, cip, cport in clients:
            self.accepted += 1
            try:
                vip, port = original_dst(fd)
            except OSError:
                os.close(fd)  # reached directly, not redirected: nothing to relay to
                continue
            state = self.vips.get(vip)
            key = (TCP, cip, cport, vip, port)
            bid = None if state is None else state.table.lookup(*key, now)
            if state is None or bid is None:
                self.no_backend += 1
                os.close(fd)
                continue
            try:
                with entered(self.ns):
                    pair = self.relay.connect(
                        fd, state.ips[bid], port, self.idle_timeout, now, b"",
                        self.connect_timeout,
                    )  # fmt: skip
            except OSError as exc:
                log.error("VIP relay: client %s: %s", fmt_addr(cip, cport), exc.strerror or exc)
                state.table.release(*key)
                os.close(fd)
                continue
            self.pairs[pair] = (vip, key)

    def _on_datagrams(self) -> None:
        if self.udp is None:
            return
        now = self.loop.time()
        for _ in range(UDP_BATCH):
            try:
                data, anc, _flags, addr = self.udp.recvmsg(UDP_MAX, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            dst = next((d for lvl, t, d in anc if t == IP_RECVORIGDSTADDR), None)
            if dst is None:
                continue
            vip, port = _sockaddr_in(dst)
            key = (UDP, addr[0], addr[1], vip, port)
            flow = self.udp_flows.get(key)
            if flow is None:
                state = self.vips.get(vip)
                bid = None if state is None else state.table.lookup(*key, now)
                if state is None or bid is None:
                    self.no_backend += 1
                    continue
                try:
                    flow = self.udp_flows[key] = _UdpFlow(self, key, state.ips[bid])
                except OSError as exc:
                    log.error("VIP relay: UDP client %s: %s", fmt_addr(addr[0], addr[1]), exc)
                    state.table.release(*key)
                    continue
            flow.send(data)

    def _expire(self) -> None:
        now = self.loop.time()
        for key, flow in list(self.udp_flows.items()):
            if now - flow.last > UDP_IDLE:
                self.udp_flows.pop(key).close()
                state = self.vips.get(key[3])
                if state is not None:
                    state.table.release(*key)
        self._sweep = self.loop.call_later(UDP_IDLE / 4, self._expire)

    def _on_relay(self) -> None:
        for pair, _up, _down, _reason in self.relay.poll(self.loop.time()):
            entry = self.pairs.pop(pair, None)
            if entry is None:
                continue
            state = self.vips.get(entry[0])
            if state is not None:
                state.table.release(*entry[1])

    def open_flows(self) -> int:
        return len(self.relay) + len(self.udp_flows)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for lsock in (self.sock, self.udp):
            if lsock is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(lsock.fileno())
                lsock.close()
        self.sock = self.udp = None
        for flow in self.udp_flows.values():
            flow.close()
        self.udp_flows.clear()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.relay.fileno())
        self.relay.close_all()
        self.pairs.clear()
        self.vips.clear()
