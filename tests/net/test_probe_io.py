"""The probe socket for real: sockets made inside host namespaces, a veth path between them,
a tc filter that drops the probes' port, and a lowered MTU that the DF search must find.

The probe timing is shortened (probes every 0.5 s) so that a flip takes seconds; the waits
poll with a deadline and nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import subprocess
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from meshkit.net.probe import PROBE_PORT, REPLY, REQUEST, decode, encode
from meshkit.net.probe_io import ProbeError, ProbeSocket, control_reachable
from support import netns
from support.nettools import drop_udp_port_program
from support.polling import eventually_async

pytestmark = pytest.mark.root

FAST = {"interval": 0.5, "timeout": 0.5, "tick": 0.1}


def run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr.strip()}"


def block(ns: str, port: int) -> None:
    run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "clsact")
    run("ip", "netns", "exec", ns, "tc", "filter", "add", "dev", "eth0", "egress",
        "bpf", "da", "bytecode", drop_udp_port_program(port))  # fmt: skip


def unblock(ns: str) -> None:
    run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "clsact")


# poll until a condition holds, failing with what() after 40 s
wait_until = functools.partial(eventually_async, timeout=40.0)


def thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def run_async(body: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(body())  # type: ignore[arg-type]


def test_peers_see_each_other_then_a_dropped_port_then_recovery(
    netns_lab: netns.NetnsLab,
) -> None:
    a, b = netns_lab.add_host("a"), netns_lab.add_host("b")

    async def body() -> None:
        before = thread_netns()
        pa = await ProbeSocket.open(a.netns, a.address, PROBE_PORT, node_id="node-a", **FAST)
        try:
            pb = await ProbeSocket.open(b.netns, b.address, PROBE_PORT, node_id="node-b", **FAST)
        except BaseException:
            pa.close()
            raise
        try:
            assert thread_netns() == before  # the loop's thread never left its namespace
            assert pa.address == (a.address, PROBE_PORT)
            pa.set_peers({"node-b": b.address})
            pb.set_peers({"node-a": a.address})

            def both(value: bool) -> bool:
                return (
                    pa.results()["node-b"].reachable is value
                    and pb.results()["node-a"].reachable is value
                )

            def state() -> str:
                return f"a sees {pa.results()}, b sees {pb.results()}"

            await wait_until(lambda: both(True), state)
            await wait_until(lambda: pa.results()["node-b"].path_mtu is not None, state)
            assert pa.results()["node-b"].path_mtu == 1500  # the veth's MTU, end to end
            assert pa.results()["node-b"].rtt_ms is not None

            block(a.netns, PROBE_PORT)  # a's requests and a's answers both dropped
            try:
                await wait_until(lambda: both(False), state)
                res = pa.results()["node-b"]
                assert res.lost >= 3 and res.since is not None
            finally:
                unblock(a.netns)
            await wait_until(lambda: both(True), state)
            assert pa.results()["node-b"].lost == 0
        finally:
            pa.close()
            pb.close()

    run_async(body)


def test_the_mtu_search_finds_a_lowered_veth_mtu(netns_lab: netns.NetnsLab) -> None:
    a, b = netns_lab.add_host("a"), netns_lab.add_host("b")
    run("ip", "-n", a.netns, "link", "set", "eth0", "mtu", "1200")

    async def body() -> None:
        pa = await ProbeSocket.open(a.netns, a.address, PROBE_PORT, node_id="node-a", **FAST)
        try:
            pb = await ProbeSocket.open(b.netns, b.address, PROBE_PORT, node_id="node-b", **FAST)
        except BaseException:
            pa.close()
            raise
        try:
            # The largest probe is the MTU of the interface holding the bound address.
            assert (pa.max_size, pb.max_size) == (1200, 1500)
            pa.set_peers({"node-b": b.address})
            pb.set_peers({"node-a": a.address})

            def found() -> bool:
                return (
                    pa.results()["node-b"].path_mtu is not None
                    and pb.results()["node-a"].path_mtu is not None
                )

            await wait_until(found, lambda: f"a sees {pa.results()}, b sees {pb.results()}")
            # b's probes over 1200 reach a (a veth lets a few bytes over its MTU in), but a's
            # DF answer of that size cannot leave: the search counts both ways.
            assert pb.results()["node-a"].path_mtu == 1200
            assert pa.results()["node-b"].path_mtu == 1200
        finally:
            pa.close()
            pb.close()

    run_async(body)


def free_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def test_in_the_callers_namespace_it_answers_any_request_at_its_size() -> None:
    async def body() -> None:
        port = free_udp_port("127.0.0.2")
        pa = await ProbeSocket.open(None, "127.0.0.2", port, node_id="a", max_size=1500, **FAST)
        try:
            pb = await ProbeSocket.open(None, "127.0.0.3", port, node_id="b", max_size=1500, **FAST)
        except BaseException:
            pa.close()
            raise
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            pa.set_peers({"b": "127.0.0.3"})
            pb.set_peers({"a": "127.0.0.2"})
            await wait_until(
                lambda: pa.results()["b"].path_mtu == 1500 and pb.results()["a"].reachable is True,
                lambda: f"a sees {pa.results()}, b sees {pb.results()}",
            )
            # Anyone's request is answered, at the size asked, with the answerer's id
            # (sent with a plain sendto: uvloop has no sock_sendto, and a UDP send never waits).
            loop = asyncio.get_running_loop()
            client.bind(("127.0.0.1", 0))
            client.sendto(encode(REQUEST, 77, "stranger", 5.5, 1000), ("127.0.0.3", port))
            data = await asyncio.wait_for(loop.sock_recv(client, 65535), 10)
            reply = decode(data)
            assert reply is not None
            assert (reply.kind, reply.seq, reply.sender, reply.sent, reply.size) == (
                REPLY, 77, "b", 5.5, 1000,
            )  # fmt: skip
            # Garbage is not answered and does not stop the socket.
            client.sendto(b"MKPR nonsense", ("127.0.0.3", port))
            client.sendto(encode(REQUEST, 78, "s", 1.0, 600), ("127.0.0.3", port))
            reply = decode(await asyncio.wait_for(loop.sock_recv(client, 65535), 10))
            assert reply is not None and reply.seq == 78
            # A peer dropped from the list is no longer probed or reported.
            pa.set_peers({})
            assert pa.results() == {}
        finally:
            client.close()
            pa.close()
            pb.close()
            pa.close()  # closing twice is harmless

    run_async(body)


def test_open_errors_name_the_namespace_and_the_address(netns_lab: netns.NetnsLab) -> None:
    a = netns_lab.add_host("a")

    async def body() -> None:
        with pytest.raises(ProbeError, match=f"network namespace {netns_lab.prefix}-nosuch"):
            await ProbeSocket.open(f"{netns_lab.prefix}-nosuch", a.address, PROBE_PORT)
        with pytest.raises(
            ProbeError, match=rf"198\.18\.0\.99:{PROBE_PORT} in namespace {a.netns}"
        ):
            await ProbeSocket.open(a.netns, "198.18.0.99", PROBE_PORT)
        with pytest.raises(ProbeError, match="node id"):
            await ProbeSocket.open(a.netns, a.address, PROBE_PORT, node_id="n" * 65)

    run_async(body)


def test_control_reachable_is_a_tcp_connect() -> None:
    async def body() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert await control_reachable("127.0.0.1", port) is True
        finally:
            server.close()
            await server.wait_closed()
        assert await control_reachable("127.0.0.1", port) is False  # refused now

    run_async(body)
