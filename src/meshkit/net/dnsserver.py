"""The task DNS server's I/O shell: UDP and TCP 127.0.0.11:53 inside one task's namespace,
served by the agent's own event loop, and the forwarder to the host's resolvers.

`DnsServer` makes its two sockets inside the task's namespace (nsock) and serves them from the
loop it is given (UDP through add_reader on a socket it owns, TCP through asyncio streams over
its listening socket); every query is decided by `dnsnames.answer` against the current
`Directory`, fetched per query so a netmap change is seen by the very next query.

`Forwarder` sends the names that are not ours to the resolvers of the agent's own
/etc/resolv.conf, from the agent's namespace with plain sockets: UDP with a timeout per upstream
then the next one, TCP for queries that came over TCP, each query on its own socket (a random
source port and its own id, so one slow upstream never holds up another client's answer).
The resolv.conf is followed, not read once: before forwarding, at most once a second, its
mtime, size and inode are looked at (in a worker thread) and the file read again when one
changed. The sockets are made in the agent's (the node's) namespace, so the node's resolvers
are reached the way the node reaches them, whatever the task's own routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import dns.flags
import dns.message
import dns.rcode

from meshkit.net import nsock
from meshkit.net.dnsnames import Answer, Directory, answer, servfail

log = logging.getLogger("meshkit.net.dnsserver")

DNS_ADDR = "127.0.0.11"
DNS_PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
RESOLV_RECHECK = 1.0  # seconds between two looks at the resolv.conf's mtime


def _resolv_signature(path: str) -> tuple[int, int, int] | None:
    """(mtime ns, size, inode) of the resolv.conf, None when it is missing: a change of any
    of them (an edit, or a resolver manager replacing the file) means read it again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


UPSTREAM_TIMEOUT = 2.0
# A TCP client that sends nothing for this long is dropped (RFC 7766 suggests some seconds).
TCP_IDLE_TIMEOUT = 10.0
# Datagrams read per readiness callback: enough to drain a burst, small enough to stay fair.
UDP_BATCH = 64
UDP_MAX = 65535

Upstream = tuple[str, int]


class DnsServerError(OSError):
    """The DNS server of a namespace could not be opened; the message names it and the cause."""


def parse_resolv_conf(text: str) -> list[Upstream]:
    """The nameservers of a resolv.conf, in order, port 53, skipping our own 127.0.0.11 (a
    host whose resolv.conf points at the task DNS would forward to itself)."""
    out: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        addr = fields[1].split("%", 1)[0]  # a scoped IPv6 link-local keeps no scope here
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if str(ip) == DNS_ADDR:
            continue
        if (str(ip), DNS_PORT) not in out:
            out.append((str(ip), DNS_PORT))
    return out


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _matches(reply: bytes, query_id: int, query: dns.message.Message) -> bool:
    """True when `reply` is the upstream's answer to our query (id and question)."""
    try:
        msg = dns.message.from_wire(reply, ignore_trailing=True, question_only=True)
    except Exception:  # anything unparseable is not our answer
        return False
    return (
        msg.id == query_id
        and bool(msg.flags & dns.flags.QR)
        and msg.opcode() == query.opcode()
        and msg.question == query.question
    )


def _with_id(reply: bytes, query_id: int) -> bytes:
    return struct.pack("!H", query_id) + reply[2:]


class Forwarder:
    """Forwards queries to upstream resolvers (None: the agent's own /etc/resolv.conf)."""

    def __init__(
        self,
        upstreams: list[Upstream] | None = None,
        *,
        timeout: float = UPSTREAM_TIMEOUT,
        resolv_conf: str = RESOLV_CONF,
    ) -> None:
        # with no fixed upstreams, the resolv.conf is followed: read again when its mtime,
        # size or inode changes (checked at most every RESOLV_RECHECK seconds, off the loop)
        self._resolv_conf = resolv_conf if upstreams is None else None
        self._resolv_sig: tuple[int, int, int] | None = None
        self._resolv_checked = -1e9
        self.upstreams: list[Upstream] = []
        if upstreams is None:
            self._reload(_resolv_signature(resolv_conf), log_missing=True)
        else:
            self.upstreams = list(upstreams)
        self.timeout = timeout

    def _reload(self, sig: tuple[int, int, int] | None, *, log_missing: bool) -> None:
        """Read the resolv.conf again (its signature is `sig`)."""
        assert self._resolv_conf is not None
        path = self._resolv_conf
        self._resolv_sig = sig
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                upstreams = parse_resolv_conf(f.read())
        except OSError as exc:
            log.warning("DNS forwarding: cannot read %s: %s", path, exc.strerror)
            upstreams = []
        if not upstreams and (log_missing or self.upstreams):
            log.warning(
                "DNS forwarding: no usable nameserver in %s; names outside the cluster "
                "get SERVFAIL",
                path,
            )
        elif not log_missing and upstreams != self.upstreams:
            log.info(
                "DNS forwarding: %s changed; forwarding to %s",
                path,
                ", ".join(f"{h}:{p}" for h, p in upstreams),
            )
        self.upstreams = upstreams

    def _check_resolv_conf(self) -> None:
        """Re-read the resolv.conf when it changed (runs in a worker thread)."""
        if self._resolv_conf is None:
            return
        sig = _resolv_signature(self._resolv_conf)
        if sig != self._resolv_sig:
            self._reload(sig, log_missing=False)

    async def refresh(self) -> None:
        """Follow changes to the resolv.conf (at most one stat every RESOLV_RECHECK s)."""
        if self._resolv_conf is None:
            return
        now = time.monotonic()
        if now - self._resolv_checked < RESOLV_RECHECK:
            return
        self._resolv_checked = now
        await asyncio.to_thread(self._check_resolv_conf)

    async def query(self, query: dns.message.Message, *, tcp: bool) -> bytes | None:
        """The upstream's reply, with the client's id, or None when every upstream failed.

        A SERVFAIL or REFUSED from one upstream makes the next one be tried; the last such
        reply is returned when no upstream does better."""
        await self.refresh()
        client_id = query.id
        fallback: bytes | None = None
        for upstream in self.upstreams:
            query_id = secrets.randbelow(65536)
            query.id = query_id
            try:
                wire = query.to_wire()
            finally:
                query.id = client_id
            reply: bytes | None
            try:
                if tcp:
                    reply = await asyncio.wait_for(self._tcp(upstream, wire), self.timeout)
                else:
                    reply = await self._udp(upstream, wire, query_id, query)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("DNS upstream %s:%d failed: %r", *upstream, exc)
                continue
            if reply is None or not _matches(reply, query_id, query):
                continue
            reply = _with_id(reply, client_id)
            if reply[3] & 0x0F not in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                return reply
            fallback = reply
        return fallback

    async def _udp(
        self, upstream: Upstream, wire: bytes, query_id: int, query: dns.message.Message
    ) -> bytes | None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(
            _family(upstream[0]), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        done: asyncio.Future[bytes | None] = loop.create_future()

        def readable() -> None:
            while not done.done():
                try:
                    data = sock.recv(UDP_MAX)
                except BlockingIOError:
                    return
                except OSError as exc:  # ICMP port unreachable: nobody listens there
                    done.set_exception(exc)
                    return
                if _matches(data, query_id, query):
                    done.set_result(data)

        try:
            # connect() makes the kernel drop datagrams from any other source for us
            sock.connect(upstream)
            sock.send(wire)
            loop.add_reader(sock.fileno(), readable)
            try:
                return await asyncio.wait_for(done, self.timeout)
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    async def _tcp(self, upstream: Upstream, wire: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(size)
        finally:
            writer.close()


@dataclass
class DnsCounters:
    """What a DNS server did, for `doctor` and metrics.

    queries: packets received; answered: replies made here (NOERROR/NXDOMAIN/errors);
    forwarded: queries sent upstream; nxdomain: NXDOMAIN answers made here; failures:
    forwarded queries no upstream answered (SERVFAIL) and replies that could not be sent."""

    queries: int = 0
    answered: int = 0
    forwarded: int = 0
    nxdomain: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DnsServer:
    """The DNS server at 127.0.0.11:53 (UDP and TCP) of one task's namespace."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ns: nsock.NetnsRef,
        task_id: str,
        directory: Callable[[], Directory],
        forwarder: Forwarder,
        *,
        address: str = DNS_ADDR,
        port: int = DNS_PORT,
    ) -> None:
        self.loop = loop
        self.ns = ns
        self.task_id = task_id
        self.directory = directory
        self.forwarder = forwarder
        self.address = address
        self.port = port
        self.counters = DnsCounters()
        self._udp: socket.socket | None = None
        self._reading = False
        self._tcp: asyncio.Server | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._rotate = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"DnsServer({self.ns.label!r}, task={self.task_id!r})"

    async def start(self) -> None:
        """Bind UDP and TCP inside the namespace and start serving them."""
        if self._closed:
            raise DnsServerError(0, f"DNS server of network namespace {self.ns.label} is closed")
        where = f"{self.address}:{self.port}"
        try:
            try:
                udp = nsock.socket_in(self.ns, socket.AF_INET, socket.SOCK_DGRAM)
                self._udp = udp
                udp.bind((self.address, self.port))
            except OSError as exc:
                raise self._error(f"bind {where}/udp", exc) from None
            try:
                tcp = nsock.socket_in(self.ns, socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise self._error(f"bind {where}/tcp", exc) from None
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.address, self.port))
                tcp.listen(128)
                self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
            except OSError as exc:
                tcp.close()
                raise self._error(f"listen {where}/tcp", exc) from None
            self.loop.add_reader(udp.fileno(), self._on_udp)
            self._reading = True
        except BaseException:
            self.close()
            raise

    def _error(self, what: str, exc: OSError) -> DnsServerError:
        reason = exc.strerror or str(exc)
        return DnsServerError(
            exc.errno or 0,
            f"DNS server in network namespace {self.ns.label}: {what}: {reason}",
        )

    def close(self) -> None:
        """Stop serving and close every socket (idempotent)."""
        self._closed = True
        if self._udp is not None:
            if self._reading:
                self.loop.remove_reader(self._udp.fileno())
                self._reading = False
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for task in list(self._pending):
            task.cancel()
        self._pending.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- deciding -------------------------------------------------------------------------------

    def _decide(self, wire: bytes, *, tcp: bool) -> Answer | dns.message.Message | None:
        """Count and decide one query: a reply to send, a query to forward, or nothing."""
        self.counters.queries += 1
        self._rotate = (self._rotate + 1) & 0xFFFF
        reply = answer(self.directory(), wire, self.task_id, tcp=tcp, rotate=self._rotate)
        if reply is None:
            return None
        if isinstance(reply, Answer):
            self.counters.answered += 1
            if reply.rcode == dns.rcode.NXDOMAIN:
                self.counters.nxdomain += 1
            return reply
        self.counters.forwarded += 1
        return reply.query

    async def _forwarded(self, query: dns.message.Message, *, tcp: bool) -> bytes:
        reply = await self.forwarder.query(query, tcp=tcp)
        if reply is None:
            self.counters.failures += 1
            return servfail(query, tcp=tcp)
        return reply

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    # -- UDP ------------------------------------------------------------------------------------

    def _on_udp(self) -> None:
        sock = self._udp
        if sock is None:
            return
        for _ in range(UDP_BATCH):
            try:
                wire, peer = sock.recvfrom(UDP_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket: nothing to read
                continue
            decided = self._decide(wire, tcp=False)
            if isinstance(decided, Answer):
                self._send_udp(decided.wire, peer)
            elif decided is not None:
                self._spawn(self._forward_udp(decided, peer))

    def _send_udp(self, wire: bytes, peer: tuple[str, int]) -> None:
        if self._udp is None:
            return
        try:
            self._udp.sendto(wire, peer)
        except OSError:  # a full socket buffer drops the reply; the client retries
            self.counters.failures += 1

    async def _forward_udp(self, query: dns.message.Message, peer: tuple[str, int]) -> None:
        self._send_udp(await self._forwarded(query, tcp=False), peer)

    # -- TCP ------------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        forwards: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    (size,) = struct.unpack("!H", head)
                    wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
                    return
                decided = self._decide(wire, tcp=True)
                if isinstance(decided, Answer):
                    self._write_tcp(writer, decided.wire)
                elif decided is not None:
                    # pipelined queries are answered as they complete (RFC 7766 6.2.1.1)
                    task = self._spawn(self._forward_tcp(decided, writer))
                    forwards.add(task)
                    task.add_done_callback(forwards.discard)
                else:
                    return
                with contextlib.suppress(OSError):
                    await writer.drain()
        finally:
            # a client may half-close after its last query: its answers still go out
            if forwards:
                await asyncio.gather(*forwards, return_exceptions=True)
                with contextlib.suppress(OSError):
                    await writer.drain()
            self._writers.discard(writer)
            writer.close()

    def _write_tcp(self, writer: asyncio.StreamWriter, wire: bytes) -> None:
        if writer.is_closing():
            self.counters.failures += 1
            return
        writer.write(struct.pack("!H", len(wire)) + wire)

    async def _forward_tcp(self, query: dns.message.Message, writer: asyncio.StreamWriter) -> None:
        self._write_tcp(writer, await self._forwarded(query, tcp=True))
