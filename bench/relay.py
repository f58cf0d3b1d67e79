"""Benchmark of the TCP relay engine: C Relay vs PyRelay vs a direct connection.

    python bench/relay.py [--quick]

Measures, over one relayed pair on loopback:
- ping-pong: round trips per second of 100-byte messages (keep-alive request/response),
- bulk: MB/s of a one-way transfer (the receiver acknowledges EOF with one byte).

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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from meshkit._ext import load_fastpath
from meshkit.l4.relay import PyRelay, RelayLike

MSG = 100
CHUNK = 256 * 1024


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


def listen() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0), backlog=8)


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

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="finish in under 10 seconds")
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


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
