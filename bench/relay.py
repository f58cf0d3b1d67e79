"""Benchmark of the TCP relay engine: C Relay vs PyRelay vs a direct connection.

    python bench/relay.py [--quick]

Measures, over one relayed pair on loopback:
- ping-pong: round trips per second of 100-byte messages (keep-alive request/response),
- bulk: MB/s of a one-way transfer (the receiver acknowledges EOF with one byte).

And new connections per second (like wrk with `Connection: close`): a client keeps
CONNS_INFLIGHT connections going, each sends a request, reads the reply to EOF and closes; the
backend answers and closes. Three ways to take a new connection, each with C Relay and PyRelay:
- "serve": relay.serve() (the fast lane): accept, connection-table lookup (round robin over one
  backend) and backend connect all inside the engine, flow released by the engine at the end,
- "accept+connect": relay.accept() on the listening socket, table.lookup() of the flow in
  Python, relay.connect() to the backend (the engine makes and watches the backend socket),
  and table.release() when poll() reports the pair finished (what the ingress does today),
- "python path": sock.accept(), a Python backend socket, connect_ex, loop.add_writer and a
  call_later timer until connected, SO_ERROR, then relay.add() (what the ingress did before).

When haproxy is installed it is measured too (mode tcp, one thread), as the yardstick the
ingress is held to.

The client and the echo/sink backend run in their own processes; the relay runs in this
process on an asyncio (uvloop when installed) loop with add_reader, as the ingress drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any, cast

try:
    import meshkit  # noqa: F401  (the installed one, with its compiled fast path)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from meshkit._ext import load_fastpath
from meshkit.l4.relay import PyRelay, RelayLike
from meshkit.lb.conntable import PyConnTable

MSG = 100
CHUNK = 256 * 1024
CONNS_INFLIGHT = 32
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def echo_server(lsock: socket.socket) -> None:
    while True:  # serially, so that a readiness probe does not use up the server
        conn, _ = lsock.accept()
        nodelay(conn)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()


def sink_server(lsock: socket.socket) -> None:
    buf = bytearray(CHUNK)
    while True:
        conn, _ = lsock.accept()
        while conn.recv_into(buf):
            pass
        conn.sendall(b"k")
        conn.close()


def close_server(lsock: socket.socket) -> None:
    """Answers each request and closes (HTTP with Connection: close), on an event loop."""

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            self.transport.write(REPLY)
            self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Answer, sock=lsock, backlog=4096)
        await server.serve_forever()

    run_loop(main())


def conns_client(addr: tuple[str, int], seconds: float, out: Connection) -> None:
    """Keeps CONNS_INFLIGHT request/reply/close connections going; sends connections/s."""
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, bytearray]] = {}

    def start() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.connect_ex(addr)
        socks[sock.fileno()] = (sock, bytearray())
        ep.register(sock.fileno(), select.EPOLLOUT)

    for _ in range(CONNS_INFLIGHT):
        start()
    n = errors = 0
    start_t = time.perf_counter()
    end = start_t + seconds
    while time.perf_counter() < end:
        for fd, ev in ep.poll(0.5):
            sock, got = socks[fd]
            if ev & select.EPOLLOUT:
                try:
                    sock.send(REQUEST)
                except OSError:
                    errors += 1
                else:
                    ep.modify(fd, select.EPOLLIN)
                    continue
            else:
                try:
                    while chunk := sock.recv(4096):
                        got += chunk
                except BlockingIOError:
                    continue
                except OSError:
                    errors += 1
                else:
                    if got == REPLY:
                        n += 1
                    else:
                        errors += 1
            ep.unregister(fd)
            del socks[fd]
            sock.close()
            start()
    out.send(n / (time.perf_counter() - start_t) if not errors else -float(errors))
    for sock, _ in socks.values():
        sock.close()


def pingpong_client(addr: tuple[str, int], seconds: float, out: Connection) -> None:
    sock = nodelay(socket.create_connection(addr))
    msg = b"x" * MSG
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            sock.sendall(msg)
            got = 0
            while got < MSG:
                got += len(sock.recv(MSG - got))
        n += 100
        if time.perf_counter() >= end:
            break
    out.send(n / (time.perf_counter() - start))
    sock.close()


def bulk_client(addr: tuple[str, int], total: int, out: Connection) -> None:
    sock = socket.create_connection(addr)
    block = os.urandom(CHUNK)
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b"k"
    out.send(total / (time.perf_counter() - start) / 1e6)
    sock.close()


def listen(backlog: int = 8) -> socket.socket:
    return socket.create_server(("127.0.0.1", 0), backlog=backlog)


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_haproxy(
    server: Callable[[socket.socket], None], client: Callable[..., None], arg: float
) -> float:
    backend = listen()
    srv = mp.Process(target=server, args=(backend,), daemon=True)
    srv.start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(
                "global\n  nbthread 1\n"
                "defaults\n  mode tcp\n  timeout connect 5s\n"
                "  timeout client 60s\n  timeout server 60s\n"
                f"listen relay\n  bind 127.0.0.1:{port}\n"
                f"  server b1 127.0.0.1:{backend.getsockname()[1]}\n"
            )
        proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not start")
                time.sleep(0.02)
            rx, tx = mp.Pipe(duplex=False)
            cli = mp.Process(target=client, args=(("127.0.0.1", port), arg, tx), daemon=True)
            cli.start()
            result = float(rx.recv())
            cli.join()
        finally:
            proc.terminate()
            proc.wait()
    srv.terminate()
    srv.join()
    backend.close()
    return result


def run(
    make: Callable[[], RelayLike] | None,
    server: Callable[[socket.socket], None],
    client: Callable[..., None],
    arg: float,
) -> float:
    backend = listen()
    srv = mp.Process(target=server, args=(backend,), daemon=True)
    srv.start()
    front = listen() if make is not None else None
    target = (front or backend).getsockname()
    rx, tx = mp.Pipe(duplex=False)
    cli = mp.Process(target=client, args=(target, arg, tx), daemon=True)
    cli.start()
    if make is not None and front is not None:
        relay_pair(make(), front, backend.getsockname())
    result = float(rx.recv())
    cli.join()
    srv.terminate()
    srv.join()
    backend.close()
    if front is not None:
        front.close()
    return result


def relay_pair(relay: RelayLike, front: socket.socket, backend: tuple[str, int]) -> None:
    """Relays one connection through `relay` on an event loop until it finishes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, _ = front.accept()
        upstream = socket.create_connection(backend)
        for s in (client, upstream):
            nodelay(s).setblocking(False)
        finished = asyncio.Event()

        def on_ready() -> None:
            if relay.poll(loop.time()):
                finished.set()

        loop.add_reader(relay.fileno(), on_ready)
        relay.add(client.detach(), upstream.detach(), 60.0, loop.time())
        await finished.wait()
        loop.remove_reader(relay.fileno())

    run_loop(main())


def run_conns(make: Callable[[], RelayLike] | None, mode: str, seconds: float) -> float:
    """New connections/s through a relay taking them in `mode` (direct when make is None)."""
    backend = listen(4096)
    srv = mp.Process(target=close_server, args=(backend,), daemon=True)
    srv.start()
    front = listen(4096) if make is not None else None
    target = (front or backend).getsockname()
    rx, tx = mp.Pipe(duplex=False)
    cli = mp.Process(target=conns_client, args=(target, seconds, tx), daemon=True)
    proxy = None
    if make is not None and front is not None:
        proxy = mp.Process(
            target=serve_conns, args=(make, mode, front, backend.getsockname()), daemon=True
        )
        proxy.start()
    cli.start()
    result = float(rx.recv())
    cli.join()
    for proc in (proxy, srv):
        if proc is not None:
            proc.terminate()
            proc.join()
    backend.close()
    if front is not None:
        front.close()
    if result < 0:
        raise RuntimeError(f"{-result:.0f} connections failed")
    return result


def serve_conns(
    make: Callable[[], RelayLike],
    mode: str,
    front: socket.socket,
    backend: tuple[str, int],
) -> None:
    """An ingress-like proxy for new connections, until terminated.

    mode: "serve" (relay.serve), "engine" (relay.accept + table.lookup + relay.connect) or
    "python" (Python sockets, then relay.add)."""
    relay = make()
    fastpath = load_fastpath()
    table: PyConnTable
    if fastpath is not None and isinstance(relay, fastpath.Relay):
        table = fastpath.ConnTable("round_robin")
    else:
        table = PyConnTable("round_robin")
    table.add_backend(1)
    table.set_address(1, *backend)
    front.setblocking(False)
    ip, port = backend
    fip, fport = front.getsockname()
    flows: dict[int, tuple[int, str, int, str, int]] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def on_relay() -> None:
            for pid, up, down, reason in relay.poll(loop.time()):
                key = flows.pop(pid, None)
                if key is not None:
                    table.release(*key)
                    table.add_bytes(1, up + down)
                if reason == "connect":
                    flow = relay.flow_of(pid)
                    if flow is not None:
                        table.release(*flow[0])
                    relay.close(pid)

        def on_accept_serve() -> None:
            relay.serve(front.fileno(), table, fip, fport, 60.0, 3.0, loop.time())

        def on_accept_engine() -> None:
            now = loop.time()
            for fd, peer_ip, peer_port in relay.accept(front.fileno()):
                key = (6, peer_ip, peer_port, fip, fport)
                if table.lookup(*key, now) is None:
                    os.close(fd)
                    continue
                flows[relay.connect(fd, ip, port, 60.0, now)] = key

        def on_accept_python() -> None:
            for _ in range(64):
                try:
                    client, _ = front.accept()
                except BlockingIOError:
                    return
                client.setblocking(False)
                nodelay(client)
                upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                upstream.setblocking(False)
                nodelay(upstream)
                upstream.connect_ex(backend)
                PendingConnect(client, upstream)

        class PendingConnect:
            def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
                self.client, self.upstream = client, upstream
                loop.add_writer(upstream.fileno(), self.on_writable)
                self.timer = loop.call_later(3.0, self.on_timeout)

            def on_writable(self) -> None:
                loop.remove_writer(self.upstream.fileno())
                self.timer.cancel()
                if self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self.client.close()
                    self.upstream.close()
                    return
                relay.add(self.client.detach(), self.upstream.detach(), 60.0, loop.time())

            def on_timeout(self) -> None:
                loop.remove_writer(self.upstream.fileno())
                self.client.close()
                self.upstream.close()

        loop.add_reader(relay.fileno(), on_relay)
        handlers = {
            "serve": on_accept_serve,
            "engine": on_accept_engine,
            "python": on_accept_python,
        }
        loop.add_reader(front.fileno(), handlers[mode])

        async def tick() -> None:
            while True:
                await asyncio.sleep(1.0)
                on_relay()

        await tick()

    run_loop(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="finish in under 10 seconds")
    ap.add_argument(
        "--only-conns", action="store_true", help="measure only new connections per second"
    )
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 3.0
    bulk = (1 << 30) if args.quick else (4 << 30)
    fastpath = load_fastpath()
    impls: list[tuple[str, Callable[[], RelayLike] | None, int]] = [("direct", None, bulk)]
    if fastpath is not None:
        impls.append(("C Relay", fastpath.Relay, bulk))
    else:
        print("meshkit._fastpath is not built: C Relay skipped")
    impls.append(("PyRelay", PyRelay, bulk // 4))

    conns_table(fastpath, seconds)
    if args.only_conns:
        return
    pp: dict[str, float] = {}
    mbs: dict[str, float] = {}
    names = [name for name, _, _ in impls]
    for name, make, size in impls:
        pp[name] = run(make, echo_server, pingpong_client, seconds)
        mbs[name] = run(make, sink_server, bulk_client, size)
    if shutil.which("haproxy"):
        names.append("haproxy")
        pp["haproxy"] = run_haproxy(echo_server, pingpong_client, seconds)
        mbs["haproxy"] = run_haproxy(sink_server, bulk_client, bulk)

    print(f"{'':10} {'ping-pong rt/s':>15} {'vs direct':>10} {'bulk MB/s':>11} {'vs direct':>10}")
    for name in names:
        print(
            f"{name:10} {pp[name]:15,.0f} {pp[name] / pp['direct']:10.2f}"
            f" {mbs[name]:11,.0f} {mbs[name] / mbs['direct']:10.2f}"
        )
    if "C Relay" in pp:
        print(
            f"C Relay vs PyRelay: ping-pong {pp['C Relay'] / pp['PyRelay']:.2f}x,"
            f" bulk {mbs['C Relay'] / mbs['PyRelay']:.2f}x"
            f" (bulk {mbs['C Relay'] * 8 / 1000:.1f} Gbit/s)"
        )
    if "C Relay" in pp and "haproxy" in pp:
        print(
            f"C Relay vs haproxy: ping-pong {pp['C Relay'] / pp['haproxy']:.2f}x,"
            f" bulk {mbs['C Relay'] / mbs['haproxy']:.2f}x"
        )


def conns_table(fastpath: Any, seconds: float) -> None:
    makers: list[tuple[str, Callable[[], RelayLike]]] = []
    if fastpath is not None:
        makers.append(("C Relay", fastpath.Relay))
    makers.append(("PyRelay", PyRelay))
    rows: list[tuple[str, float]] = [("direct", run_conns(None, "engine", seconds))]
    for name, make in makers:
        rows.append((f"{name} serve", run_conns(make, "serve", seconds)))
        rows.append((f"{name} accept+connect", run_conns(make, "engine", seconds)))
        rows.append((f"{name} python path", run_conns(make, "python", seconds)))
    if shutil.which("haproxy"):
        rows.append(("haproxy", run_haproxy(close_server, conns_client, seconds)))
    base = dict(rows)
    print(f"new connections/s ({CONNS_INFLIGHT} in flight, request, reply, close):")
    for name, rate in rows:
        print(f"  {name:26} {rate:10,.0f} conn/s {rate / base['direct']:6.2f} of direct")
    for name, _ in makers:
        fast = base[f"{name} serve"]
        new, old = base[f"{name} accept+connect"], base[f"{name} python path"]
        line = (
            f"  {name}: serve vs accept+connect {fast / new:.2f}x,"
            f" accept+connect vs python path {new / old:.2f}x"
        )
        if "haproxy" in base:
            hap = base["haproxy"]
            line += (
                f", vs haproxy: serve {fast / hap:.2f}x, accept+connect {new / hap:.2f}x"
                f" (python path {old / hap:.2f}x)"
            )
        print(line)
    print()


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
