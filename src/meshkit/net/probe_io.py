"""The asyncio shell around the overlay probes: one UDP socket per network namespace.

A ``ProbeSocket`` is made inside a named network namespace (setns(2) in a short-lived thread
of its own, then back; the socket keeps the namespace it was made in) and is served by the
running event loop with ``add_reader``: it answers every probe request it receives and sends
this node's probes to its peers as ``meshkit.net.probe.PeerProbe`` says, ticking every half
second. ``control_reachable`` is the control-plane check: a TCP connect to a peer's API.

Path MTU probes leave with IP_MTU_DISCOVER = IP_PMTUDISC_PROBE. The choice, against the
other values:

- IP_PMTUDISC_DONT / WANT would let the kernel fragment a probe that is too big (WANT once
  it has learnt a smaller path MTU), so an oversized probe could still be answered and the
  search would find nothing.
- IP_PMTUDISC_DO sets DF but also refuses locally (EMSGSIZE) every send larger than the path
  MTU the kernel has cached from ICMP "fragmentation needed" messages. The probe would then
  measure the kernel's cache, not the path, and after the path recovers the cache keeps
  refusing the full size for up to ten minutes.
- IP_PMTUDISC_PROBE sets DF and ignores the cached path MTU: the probe really goes out, up to
  the interface MTU (beyond it nothing can leave anyway, and EMSGSIZE then counts as a loss
  at once). Replies go out the same way, so a probe is answered only if its size passes in
  both directions.

Small reachability probes go out with IP_PMTUDISC_DONT: they must not fail for their size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

from meshkit.base.netns import netns_path, setns
from meshkit.net.probe import (
    MAX_SENDER_BYTES,
    REPLY,
    REQUEST,
    PeerProbe,
    ProbeResult,
    decode,
    reply_to,
)

# Linux <linux/in.h>; Python's socket module does not export these.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_PROBE = 3

TICK = 0.5
FALLBACK_MTU = 1500  # when the interface holding the bound address cannot be found
READ_BATCH = 64  # datagrams read per wake-up, so a flood cannot starve the loop

T = TypeVar("T")


class ProbeError(OSError):
    """The probe socket cannot be made; the message names the namespace, address and cause.
    An OSError, since that is what it is: a socket that could not be opened."""


def _namespace_file(ns: str) -> str:
    return ns if "/" in ns else str(netns_path(ns))


def _in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` with the calling thread inside namespace ``ns``, then come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(_namespace_file(ns), os.O_RDONLY)
        except OSError as exc:
            raise ProbeError(f"network namespace {ns}: {exc.strerror}") from None
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            return fn()
        finally:
            # Should this fail the thread is lost with it; it is ours alone and ends now.
            setns(own)
    finally:
        os.close(own)


async def _run_in_netns(
    ns: str | None, fn: Callable[[], tuple[socket.socket, int | None]]
) -> tuple[socket.socket, int | None]:
    """``fn`` run inside ``ns`` on a thread of its own (a pool thread left in the wrong
    namespace would poison whatever runs on it next); the caller's namespace when None."""
    if ns is None:
        return await asyncio.to_thread(fn)  # a netlink dump is quick, but it is I/O
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[socket.socket, int | None]] = loop.create_future()

    def deliver(made: tuple[socket.socket, int | None] | None, exc: BaseException | None) -> None:
        if done.cancelled():
            if made is not None:
                made[0].close()  # the caller gave up waiting: nobody else will close it
        elif made is not None:
            done.set_result(made)
        else:
            done.set_exception(exc or ProbeError(f"namespace {ns}: the socket thread failed"))

    def worker() -> None:
        try:
            made = _in_netns(ns, fn)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, made, None)

    threading.Thread(target=worker, name=f"probe-netns-{ns}", daemon=True).start()
    return await done


def _interface_mtu(ip: str) -> int | None:
    """The MTU of the interface holding ``ip`` in the current namespace, or None."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=socket.AF_INET):
            if ip in (addr.get_attr("IFA_LOCAL"), addr.get_attr("IFA_ADDRESS")):
                links = ipr.get_links(addr["index"])
                if links:
                    mtu = links[0].get_attr("IFLA_MTU")
                    return int(mtu) if mtu else None
    return None


def _make_socket(bind_ip: str, port: int, want_mtu: bool) -> tuple[socket.socket, int | None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.bind((bind_ip, port))
        mtu = None
        if want_mtu:
            try:
                mtu = _interface_mtu(bind_ip)
            except Exception:  # netlink trouble only costs the default size, not the probes
                mtu = None
    except BaseException:
        sock.close()
        raise
    return sock, mtu


class ProbeSocket:
    """Answers probes and sends ours, on one network namespace (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        ns: str | None,
        port: int,
        node_id: str,
        max_size: int,
        min_size: int,
        interval: float,
        timeout: float,
        tick: float,
    ) -> None:
        """Serve ``sock`` on the running loop; use ``open`` to make one."""
        self._sock = sock
        self.ns = ns
        self.port = port
        self.node_id = node_id
        self.max_size = max_size
        self.min_size = min(min_size, max_size)
        self._interval = interval
        self._timeout = timeout
        self._tick_every = tick
        self._loop = asyncio.get_running_loop()
        self._peers: dict[str, PeerProbe] = {}
        self._by_addr: dict[str, PeerProbe] = {}
        self._df: bool | None = False
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._timer: asyncio.Handle | None = self._loop.call_soon(self._tick)

    @classmethod
    async def open(
        cls,
        ns: str | None,
        bind_ip: str,
        port: int,
        *,
        node_id: str = "",
        max_size: int | None = None,
        min_size: int = 576,
        interval: float = 2.0,
        timeout: float = 1.0,
        tick: float = TICK,
    ) -> ProbeSocket:
        """A probe socket bound to ``bind_ip:port`` inside namespace ``ns`` (a name under
        /run/netns or a path; None: the caller's own). ``max_size`` (the overlay MTU, the
        largest probe) defaults to the MTU of the interface holding ``bind_ip`` there."""
        where = f"namespace {ns}" if ns is not None else "this namespace"
        if len(node_id.encode()) > MAX_SENDER_BYTES:
            raise ProbeError(f"node id {node_id!r} is longer than {MAX_SENDER_BYTES} bytes")
        try:
            sock, found = await _run_in_netns(
                ns, lambda: _make_socket(bind_ip, port, max_size is None)
            )
        except ProbeError:
            raise
        except OSError as exc:
            raise ProbeError(
                f"cannot open the probe socket {bind_ip}:{port} in {where}: {exc.strerror or exc}"
            ) from None
        size = max_size if max_size is not None else (found or FALLBACK_MTU)
        try:
            return cls(
                sock,
                ns=ns,
                port=port,
                node_id=node_id,
                max_size=size,
                min_size=min_size,
                interval=interval,
                timeout=timeout,
                tick=tick,
            )
        except BaseException:
            sock.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        """The address the socket is bound to."""
        host, port = self._sock.getsockname()
        return str(host), int(port)

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Probe exactly these peers (node id -> endpoint IP); kept peers keep their state."""
        kept: dict[str, PeerProbe] = {}
        for peer_id, addr in peers.items():
            old = self._peers.get(peer_id)
            if old is not None and old.peer_addr == addr:
                kept[peer_id] = old
            else:
                kept[peer_id] = PeerProbe(
                    peer_id,
                    addr,
                    interval=self._interval,
                    timeout=self._timeout,
                    max_size=self.max_size,
                    min_size=self.min_size,
                    sender_id=self.node_id,
                )
        self._peers = kept
        self._by_addr = {p.peer_addr: p for p in kept.values()}
        if not self._closed:
            for peer in kept.values():
                self._send_due(peer, self._loop.time())

    def results(self) -> dict[str, ProbeResult]:
        """What probing found, by peer node id."""
        now = self._loop.time()
        return {peer_id: peer.result(now) for peer_id, peer in self._peers.items()}

    def close(self) -> None:
        """Stop serving and close the socket (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    # ---------------------------------------------------------------- inside

    def _tick(self) -> None:
        if self._closed:
            return
        # Answers already waiting count before their probes can time out: a busy loop must
        # not turn its own lateness into lost probes.
        self._on_readable()
        now = self._loop.time()
        for peer in list(self._peers.values()):
            self._send_due(peer, now)
        self._timer = self._loop.call_later(self._tick_every, self._tick)

    def _send_due(self, peer: PeerProbe, now: float) -> None:
        for out in peer.due(now):
            if not self._sendto(out.payload, out.addr, out.df):
                probe = decode(out.payload)
                if probe is not None:
                    peer.on_send_failed(now, probe.seq)

    def _sendto(self, payload: bytes, addr: str, df: bool) -> bool:
        if self._df != df:
            self._set_df(df)
        try:
            self._sock.sendto(payload, (addr, self.port))
        except OSError:
            # EMSGSIZE (over the interface MTU), no route, a full buffer: a lost probe.
            return False
        return True

    def _on_readable(self) -> None:
        for _ in range(READ_BATCH):
            try:
                data, (src, src_port) = self._sock.recvfrom(65535)
            except OSError:
                return  # drained (EAGAIN), or an error queued on the socket: next wake-up
            self._on_datagram(data, src, src_port)

    def _on_datagram(self, data: bytes, src: str, src_port: int) -> None:
        probe = decode(data)
        if probe is None:
            return
        if probe.kind == REQUEST:
            # Echo at the same size with DF, so the size must pass both ways.
            payload = reply_to(probe, self.node_id)
            if self._df is not True:
                self._set_df(True)
            with contextlib.suppress(OSError):
                self._sock.sendto(payload, (src, src_port))
            return
        if probe.kind == REPLY:
            peer = self._by_addr.get(src)
            if peer is None:
                return
            now = self._loop.time()
            peer.on_reply(now, probe.seq, probe.size)
            # The next MTU probe goes out at once rather than at the next tick.
            self._send_due(peer, now)

    def _set_df(self, df: bool) -> None:
        mode = IP_PMTUDISC_PROBE if df else IP_PMTUDISC_DONT
        try:
            self._sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, mode)
        except OSError:
            self._df = None
        else:
            self._df = df


async def control_reachable(addr: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``addr:port`` (a peer's API) opens within ``timeout``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
