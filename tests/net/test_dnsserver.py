"""The task DNS server for real: a network namespace, a DnsServer on this test's uvloop loop
bound to 127.0.0.11:53 inside it, `dig` run inside it with `ip netns exec` (UDP and TCP), and
a small real upstream DNS server (dnspython over sockets on 127.0.0.x, same loop) or a dead one
to forward to.

Every dig runs as an asyncio subprocess: the server answers from the same loop, so nothing here
may block it. Waits are bounded by dig's own timeouts; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import uvloop

from meshkit.net import nsock
from meshkit.net.dnsnames import Directory
from meshkit.net.dnsserver import DnsServer, DnsServerError, Forwarder, parse_resolv_conf

pytestmark = pytest.mark.root

CLIENT = "c1"


def netmap(web_up: list[bool], big: int = 0) -> dict[str, Any]:
    tasks = [
        {
            "id": f"w{i}",
            "name": f"web.{i}",
            "slot": i,
            "node_id": "n",
            "up": up,
            "addrs": {"net1": f"198.19.1.{10 + i}"},
        }
        for i, up in enumerate(web_up, start=1)
    ]
    services: dict[str, Any] = {
        "s-web": {
            "id": "s-web",
            "name": "web",
            "endpoint_mode": "vip",
            "ports": [
                {
                    "target": 80,
                    "published": 8080,
                    "protocol": "tcp",
                    "mode": "ingress",
                    "proxy_protocol": False,
                }
            ],
            "vips": {"net1": "198.19.1.2"},
            "tasks": tasks,
        },
        "s-cli": {
            "id": "s-cli",
            "name": "client",
            "endpoint_mode": "vip",
            "ports": [],
            "vips": {"net1": "198.19.1.3"},
            "tasks": [
                {
                    "id": CLIENT,
                    "name": "client.1",
                    "slot": 1,
                    "node_id": "n",
                    "up": True,
                    "addrs": {"net1": "198.19.1.100"},
                }
            ],
        },
    }
    if big:
        services["s-big"] = {
            "id": "s-big",
            "name": "big",
            "endpoint_mode": "dnsrr",
            "ports": [],
            "vips": {},
            "tasks": [
                {
                    "id": f"b{i}",
                    "name": f"big.{i}",
                    "slot": i,
                    "node_id": "n",
                    "up": True,
                    "addrs": {"net1": f"198.19.{2 + i // 250}.{1 + i % 250}"},
                }
                for i in range(big)
            ],
        }
    return {
        "networks": {"net1": {"id": "net1", "subnet": "198.19.0.0/16"}},
        "services": services,
    }


# -- a real upstream DNS server --------------------------------------------------------------


class Upstream:
    """A tiny authoritative server for `example.test` on 127.0.0.x, UDP and TCP, on this loop.

    `slow.example.test` is answered after `delay` seconds (or, with `gate`, once the test sets
    it), everything else at once."""

    ZONE = {"www.example.test.": "192.0.2.10", "slow.example.test.": "192.0.2.11"}

    def __init__(self, host: str, delay: float = 1.5, gate: asyncio.Event | None = None) -> None:
        self.host = host
        self.delay = delay
        self.gate = gate
        self.queries: list[tuple[str, str]] = []  # (name, "udp"|"tcp")
        self._udp: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        sock.bind((self.host, 0))
        self._udp = sock
        port = sock.getsockname()[1]
        loop.add_reader(sock.fileno(), self._on_udp)
        self._server = await asyncio.start_server(self._on_tcp, self.host, port)
        return (self.host, port)

    def reply(self, wire: bytes, transport: str) -> tuple[bytes, float]:
        query = dns.message.from_wire(wire)
        name = query.question[0].name.to_text().lower()
        self.queries.append((name, transport))
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if name in self.ZONE:
            if query.question[0].rdtype == dns.rdatatype.A:
                resp.answer.append(dns.rrset.from_text(name, 60, "IN", "A", self.ZONE[name]))
        else:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        return resp.to_wire(), self.delay if name.startswith("slow.") else 0.0

    def _on_udp(self) -> None:
        assert self._udp is not None
        while True:
            try:
                wire, peer = self._udp.recvfrom(65535)
            except BlockingIOError:
                return
            data, delay = self.reply(wire, "udp")
            task = asyncio.get_running_loop().create_task(self._send_later(data, peer, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hold(self, delay: float) -> None:
        if delay and self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(delay)

    async def _send_later(self, data: bytes, peer: Any, delay: float) -> None:
        await self._hold(delay)
        if self._udp is not None:
            self._udp.sendto(data, peer)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            data, delay = self.reply(await reader.readexactly(size), "tcp")
            await self._hold(delay)
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            self._server = None


class Blackhole:
    """A UDP port on 127.0.0.x that takes queries and never answers (a resolver that hangs)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.addr: tuple[str, int] = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()


def free_udp_port(host: str) -> tuple[str, int]:
    """A port on `host` with nothing bound: queries there get ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()


# -- the namespace and the loop --------------------------------------------------------------


@pytest.fixture
def netns_name() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"mkt-test-dns-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Lab:
    """The server under test, its directory holder and a dig runner, for one test body."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.directory = Directory.from_netmap(netmap([True, True, False]))
        self.servers: list[DnsServer] = []
        self.refs: list[nsock.NetnsRef] = []
        self.closers: list[Callable[[], None]] = []

    def server(self, forwarder: Forwarder, task_id: str = CLIENT) -> DnsServer:
        ref = nsock.NetnsRef.open_name(self.ns)
        self.refs.append(ref)
        srv = DnsServer(asyncio.get_running_loop(), ref, task_id, lambda: self.directory, forwarder)
        self.servers.append(srv)
        return srv

    async def dig(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.ns,
            "dig",
            "@127.0.0.11",
            "+time=5",
            "+tries=1",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return out.decode()

    async def short(self, *args: str) -> list[str]:
        out = await self.dig("+short", *args)
        return sorted(line for line in out.split() if line)

    def close(self) -> None:
        for srv in self.servers:
            srv.close()
        for closer in self.closers:
            closer()
        for ref in self.refs:
            ref.close()


def run(netns_name: str, body: Callable[[Lab], Awaitable[None]]) -> None:
    async def main() -> None:
        lab = Lab(netns_name)
        try:
            await body(lab)
        finally:
            lab.close()

    uvloop.run(main())


def status(dig_output: str) -> str:
    for line in dig_output.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    raise AssertionError(f"no status in dig output:\n{dig_output}")


def flags(dig_output: str) -> set[str]:
    for line in dig_output.splitlines():
        if line.startswith(";; flags:"):
            return set(line.split("flags:")[1].split(";")[0].split())
    raise AssertionError(f"no flags in dig output:\n{dig_output}")


# -- tests -----------------------------------------------------------------------------------


def test_answers_over_udp_and_tcp(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        srv = lab.server(Forwarder([]))
        await srv.start()
        assert await lab.short("web") == ["198.19.1.2"]
        assert await lab.short("+tcp", "web") == ["198.19.1.2"]
        assert await lab.short("tasks.web") == ["198.19.1.11", "198.19.1.12"]
        assert await lab.short("+tcp", "tasks.web") == ["198.19.1.11", "198.19.1.12"]
        assert await lab.short("web.1") == ["198.19.1.11"]
        assert await lab.short("-x", "198.19.1.2") == ["web."]
        srv_records = await lab.short("SRV", "_80._tcp.web")
        assert srv_records == sorted(["0", "0", "10", "10", "80", "80", "web.1.w1.", "web.2.w2."])
        out = await lab.dig("nosuch")
        assert status(out) == "NXDOMAIN" and "aa" in flags(out)
        out = await lab.dig("AAAA", "web")
        assert status(out) == "NOERROR" and "ANSWER: 0" in out
        out = await lab.dig("web")
        assert {"qr", "aa", "rd", "ra"} <= flags(out)
        assert "\t0\tIN\tA\t198.19.1.2" in out  # TTL 0
        c = srv.counters
        assert c.queries == 10 and c.answered == 10 and c.nxdomain == 1 and c.forwarded == 0

    run(netns_name, body)


def test_directory_changes_are_seen_by_the_next_query(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        await lab.server(Forwarder([])).start()
        assert await lab.short("tasks.web") == ["198.19.1.11", "198.19.1.12"]
        lab.directory = Directory.from_netmap(netmap([False, True, True]))
        assert await lab.short("tasks.web") == ["198.19.1.12", "198.19.1.13"]
        lab.directory = Directory.from_netmap(netmap([False, False, False]))
        assert await lab.short("tasks.web") == []
        assert status(await lab.dig("web.2")) == "NXDOMAIN"

    run(netns_name, body)


def test_long_answer_is_truncated_then_retried_over_tcp(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        lab.directory = Directory.from_netmap(netmap([True], big=300))
        srv = lab.server(Forwarder([]))
        await srv.start()
        out = await lab.dig("+ignore", "+noedns", "tasks.big")
        assert "tc" in flags(out) and "ANSWER: 0" in out
        # dig, like a libc resolver, asks again over TCP on TC and gets all 300
        out = await lab.dig("tasks.big")
        assert "ANSWER: 300" in out and "tc" not in flags(out)
        assert await lab.short("+tcp", "big") == await lab.short("tasks.big")
        assert len(await lab.short("big")) == 300

    run(netns_name, body)


def test_forwarding_to_a_real_upstream_udp_and_tcp(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        upstream = Upstream("127.0.0.153")
        addr = await upstream.start()
        lab.closers.append(upstream.close)
        srv = lab.server(Forwarder([addr]))
        await srv.start()
        assert await lab.short("www.example.test") == ["192.0.2.10"]
        assert await lab.short("+tcp", "www.example.test") == ["192.0.2.10"]
        out = await lab.dig("nope.example.test")
        assert status(out) == "NXDOMAIN"
        assert upstream.queries == [
            ("www.example.test.", "udp"),
            ("www.example.test.", "tcp"),
            ("nope.example.test.", "udp"),
        ]
        assert srv.counters.forwarded == 3 and srv.counters.failures == 0
        # cluster names never reach the upstream
        assert await lab.short("web") == ["198.19.1.2"]
        assert status(await lab.dig("nosuch")) == "NXDOMAIN"
        assert len(upstream.queries) == 3

    run(netns_name, body)


def test_a_slow_upstream_answer_does_not_hold_up_others(netns_name: str) -> None:
    # the slow answer is held by a gate, not a delay: on a loaded machine ten digs can take
    # longer than any fixed delay (CI), and the claim is only that they finish while it waits
    async def body(lab: Lab) -> None:
        gate = asyncio.Event()
        upstream = Upstream("127.0.0.154", gate=gate)
        addr = await upstream.start()
        lab.closers.append(upstream.close)
        srv = lab.server(Forwarder([addr], timeout=25.0))
        await srv.start()
        slow = asyncio.ensure_future(lab.short("+time=28", "slow.example.test"))
        while not any(name.startswith("slow.") for name, _ in upstream.queries):
            await asyncio.sleep(0.02)
        fast = await asyncio.gather(*(lab.short("www.example.test") for _ in range(10)))
        local = await lab.short("web")
        assert not slow.done()  # the slow reply is still held upstream
        assert fast == [["192.0.2.10"]] * 10 and local == ["198.19.1.2"]
        gate.set()
        assert await slow == ["192.0.2.11"]

    run(netns_name, body)


def test_dead_upstreams_give_servfail_and_the_next_upstream_is_tried(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        hole = Blackhole("127.0.0.155")
        lab.closers.append(hole.close)
        refused = free_udp_port("127.0.0.156")
        upstream = Upstream("127.0.0.157")
        addr = await upstream.start()
        lab.closers.append(upstream.close)

        # a resolver that never answers: SERVFAIL after its 2 s timeout, within dig's 5 s
        srv = lab.server(Forwarder([hole.addr]))
        await srv.start()
        out = await lab.dig("www.example.test")
        assert status(out) == "SERVFAIL", out
        assert srv.counters.failures == 1
        out = await lab.dig("+tcp", "www.example.test")
        assert status(out) == "SERVFAIL", out
        srv.close()

        # nobody listening, then a hanging one, then a live one: the live one answers
        srv = lab.server(Forwarder([refused, hole.addr, addr], timeout=1.0))
        await srv.start()
        assert await lab.short("www.example.test") == ["192.0.2.10"]
        srv.close()

        # no upstream configured at all
        srv = lab.server(Forwarder([]))
        await srv.start()
        assert status(await lab.dig("www.example.test")) == "SERVFAIL"
        assert await lab.short("web") == ["198.19.1.2"]

    run(netns_name, body)


def test_a_task_missing_from_the_map_has_everything_forwarded(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        upstream = Upstream("127.0.0.158")
        addr = await upstream.start()
        lab.closers.append(upstream.close)
        await lab.server(Forwarder([addr]), task_id="ghost").start()
        assert status(await lab.dig("web")) == "NXDOMAIN"
        assert upstream.queries == [("web.", "udp")]

    run(netns_name, body)


def test_open_errors_name_the_namespace_and_close_is_idempotent(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        first = lab.server(Forwarder([]))
        await first.start()
        second = lab.server(Forwarder([]))
        with pytest.raises(DnsServerError, match=f"namespace {netns_name}.*in use"):
            await second.start()
        assert second.closed
        first.close()
        first.close()
        # the port is free again once closed
        third = lab.server(Forwarder([]))
        await third.start()
        assert await lab.short("web") == ["198.19.1.2"]
        third.close()
        with pytest.raises(DnsServerError, match="closed"):
            await third.start()

    run(netns_name, body)


def test_a_server_serves_only_its_own_namespace(netns_name: str) -> None:
    async def body(lab: Lab) -> None:
        await lab.server(Forwarder([])).start()
        # 127.0.0.11:53 in the test's own namespace is not ours
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.11", 53))
            except OSError as exc:  # something else of the host's may hold it
                assert exc.errno == 98
        assert await lab.short("web") == ["198.19.1.2"]

    run(netns_name, body)


def test_parse_resolv_conf(tmp_path: Path) -> None:
    text = (
        "# a comment\nsearch example.test\nnameserver 127.0.0.11\nnameserver 192.0.2.53\n"
        "nameserver fe80::1%eth0\nnameserver bogus\nnameserver 192.0.2.53\noptions ndots:0\n"
        "nameserver 198.51.100.53\n"
    )
    assert parse_resolv_conf(text) == [("192.0.2.53", 53), ("fe80::1", 53), ("198.51.100.53", 53)]
    conf = tmp_path / "resolv.conf"
    conf.write_text(text)
    assert Forwarder(resolv_conf=str(conf)).upstreams[0] == ("192.0.2.53", 53)
    conf.write_text("nameserver 127.0.0.11\n")
    assert Forwarder(resolv_conf=str(conf)).upstreams == []
    assert Forwarder(resolv_conf=str(tmp_path / "missing")).upstreams == []


def test_forwarder_follows_resolv_conf_changes(tmp_path: Path) -> None:
    from meshkit.net import dnsserver

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    fwd = Forwarder(resolv_conf=str(conf))
    assert fwd.upstreams == [("192.0.2.1", 53)]

    async def refresh() -> None:
        fwd._resolv_checked = -1e9  # past the once-a-second limit
        await fwd.refresh()

    conf.write_text("nameserver 198.51.100.7\nnameserver 127.0.0.11\nnameserver 192.0.2.9\n")
    os.utime(conf, ns=(1, 1))  # a different mtime even on a coarse clock
    asyncio.run(refresh())
    assert fwd.upstreams == [("198.51.100.7", 53), ("192.0.2.9", 53)]
    # unchanged: not read again
    fwd.upstreams = [("203.0.113.1", 53)]
    asyncio.run(refresh())
    assert fwd.upstreams == [("203.0.113.1", 53)]
    # fixed upstreams never look at a file
    fixed = Forwarder([("192.0.2.2", 53)], resolv_conf=str(conf))
    conf.write_text("nameserver 192.0.2.3\n")
    asyncio.run(fixed.refresh())
    assert fixed.upstreams == [("192.0.2.2", 53)]
    assert dnsserver.RESOLV_RECHECK > 0
