"""splice(2) in the C relay: bulk directions of TCP pairs go socket -> pipe -> socket.

C only: the Python twin copies (the bytes on the wire are the same, which the twin tests in
test_relay.py and test_ingress.py check for both). Pipes are counted in /proc/PID/fd.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from meshkit._ext import load_fastpath
from meshkit.base.netns import NetnsRef, entered
from meshkit.l4.relay import RelayLike
from support import netns
from support.peers import Proc, free_port, ingress_argv, wait_tcp

from .test_relay import Driver, Link, _abort, link, recv_eof, recv_exact

_fastpath = load_fastpath()
pytestmark = pytest.mark.skipif(_fastpath is None, reason="meshkit._fastpath not built")

Spawn = Callable[..., Proc]
MiB = 1 << 20


def count_pipes(pid: int | str = "self") -> int:
    n = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("pipe:"):
                n += 1
        except FileNotFoundError:
            pass
    return n


def c_relay(monkeypatch: pytest.MonkeyPatch, splice: str = "1", pipes: str = "") -> RelayLike:
    """A C relay made while MESHKIT_RELAY_SPLICE / MESHKIT_RELAY_PIPES say so ("1" splices
    on loopback too, where these tests run; "" leaves it unset: the default, auto)."""
    assert _fastpath is not None
    if splice:
        monkeypatch.setenv("MESHKIT_RELAY_SPLICE", splice)
    else:
        monkeypatch.delenv("MESHKIT_RELAY_SPLICE", raising=False)
    if pipes:
        monkeypatch.setenv("MESHKIT_RELAY_PIPES", pipes)
    relay: RelayLike = _fastpath.Relay(65536)
    return relay


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    lsock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    yield lsock
    lsock.close()


def pattern(seed: bytes, n: int) -> bytes:
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    return (block * (n // len(block) + 1))[:n]


# --------------------------------------------------------------------------- engine level


def test_small_exchanges_never_open_pipes(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    relay = c_relay(monkeypatch)
    drv = Driver(relay)
    before = count_pipes()
    links = [link(relay, listener) for _ in range(8)]
    for i in range(200):
        for lk in links:
            lk.client.sendall(b"q" * 300)
            assert recv_exact(drv, lk.backend, 300) == b"q" * 300
            lk.backend.sendall(b"r" * 2000)
            assert recv_exact(drv, lk.client, 2000) == b"r" * 2000
        assert count_pipes() == before, f"a pipe opened after {i + 1} exchanges"
    for lk in links:
        lk.close()


def _bulk_both_ways(
    relay: RelayLike,
    listener: socket.socket,
    npairs: int,
    size: int,
    make_link: Callable[[RelayLike, socket.socket], Link] = link,
) -> tuple[int, int]:
    """npairs pairs move size bytes each way at once; checks every byte, returns the most
    pipe fds seen open (beyond those before) and how many were left at the end."""
    drv = Driver(relay)
    base = count_pipes()
    links = [make_link(relay, listener) for _ in range(npairs)]
    data = [pattern(str(i).encode(), size) for i in range(npairs)]
    got: dict[tuple[int, int], str] = {}
    threads = []

    def send(sock: socket.socket, payload: bytes) -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    def read(key: tuple[int, int], sock: socket.socket) -> None:
        h = hashlib.sha256()
        while chunk := sock.recv(MiB):
            h.update(chunk)
        got[key] = h.hexdigest()

    for i, lk in enumerate(links):
        for sock in (lk.client, lk.backend):
            sock.setblocking(True)
        threads += [
            threading.Thread(target=send, args=(lk.client, data[i])),
            threading.Thread(target=send, args=(lk.backend, data[i][::-1])),
            threading.Thread(target=read, args=((i, 0), lk.backend)),
            threading.Thread(target=read, args=((i, 1), lk.client)),
        ]
    for t in threads:
        t.start()
    most = 0
    try:
        deadline = time.monotonic() + 120
        while len(drv.finished) < npairs:
            assert time.monotonic() < deadline, "bulk transfer did not finish"
            drv.step(0.005)
            most = max(most, count_pipes() - base)
    finally:
        for t in threads:
            t.join(timeout=60)
    for i, lk in enumerate(links):
        assert drv.result(lk.pid) == (lk.pid, size, size, "done")
        assert got[(i, 0)] == hashlib.sha256(data[i]).hexdigest()
        assert got[(i, 1)] == hashlib.sha256(data[i][::-1]).hexdigest()
        lk.close()
    return most, count_pipes() - base


def test_bulk_pairs_splice_within_the_pipe_cap(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    base = count_pipes()
    relay = c_relay(monkeypatch, pipes="4")
    most, left = _bulk_both_ways(relay, listener, npairs=12, size=4 * MiB)
    # Splice was used, and never by more than 4 pipes (2 fds each), idle ones included.
    assert 0 < most <= 8
    assert left <= 8
    del relay
    gc.collect()
    assert count_pipes() == base  # the pool's pipes close with the relay


def test_splice_off_copies(monkeypatch: pytest.MonkeyPatch, listener: socket.socket) -> None:
    relay = c_relay(monkeypatch, splice="0")
    most, _ = _bulk_both_ways(relay, listener, npairs=2, size=8 * MiB)
    assert most == 0


@pytest.mark.parametrize("splice", ["", "auto"], ids=["default", "auto"])
def test_auto_copies_over_loopback(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket, splice: str
) -> None:
    # Both legs run over lo here: splicing would make the receivers pay more per byte than
    # the relay saves (docs/notes/wip-relaybulk.md), so the default copies.
    relay = c_relay(monkeypatch, splice=splice)
    most, _ = _bulk_both_ways(relay, listener, npairs=2, size=8 * MiB)
    assert most == 0


@dataclass
class VethPair:
    """Two namespaces joined by a veth: the relay's sockets live in `near`, the client and the
    backend in `far`, so both of the relay's legs run over veth (not loopback)."""

    near: NetnsRef
    far: NetnsRef
    near_listener: socket.socket
    far_listener: socket.socket

    def link(self, relay: RelayLike, _unused: socket.socket) -> Link:
        with entered(self.far):
            client = socket.create_connection(self.near_listener.getsockname())
        relay_client, _ = self.near_listener.accept()
        with entered(self.near):
            relay_backend = socket.create_connection(self.far_listener.getsockname())
        backend, _ = self.far_listener.accept()
        relay_client.setblocking(False)
        relay_backend.setblocking(False)
        pid = relay.add(relay_client.detach(), relay_backend.detach(), 0.0, time.monotonic(), b"")
        return Link(pid, client, backend)


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    stem = f"mkt{os.getpid()}rb{secrets.token_hex(2)}"
    names = (f"{stem}n", f"{stem}f")
    refs: list[NetnsRef] = []
    socks: list[socket.socket] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        near, far = names
        for argv in (
            ["-n", near, "link", "add", "rbn", "type", "veth", "peer", "name", "rbf", "netns", far],
            ["-n", near, "addr", "add", "198.18.77.1/24", "dev", "rbn"],
            ["-n", far, "addr", "add", "198.18.77.2/24", "dev", "rbf"],
            ["-n", near, "link", "set", "rbn", "up"],
            ["-n", far, "link", "set", "rbf", "up"],
        ):
            subprocess.run(["ip", *argv], check=True, capture_output=True)
        refs = [NetnsRef.open_name(name) for name in names]
        addrs = ("198.18.77.1", "198.18.77.2")
        for ref, addr in zip(refs, addrs, strict=True):
            with entered(ref):
                socks.append(socket.create_server((addr, 0), backlog=64))
        yield VethPair(refs[0], refs[1], socks[0], socks[1])
    finally:
        for sock in socks:
            sock.close()
        for ref in refs:
            ref.close()
        for name in names:  # deleting a namespace removes its end of the veth, and the pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.mark.parametrize(("splice", "spliced"), [("", False), ("1", True)], ids=["auto", "on"])
def test_auto_copies_over_veth(
    monkeypatch: pytest.MonkeyPatch, veth_pair: VethPair, splice: str, spliced: bool
) -> None:
    # Over veth the receivers are on this host, as on loopback: auto copies; "1" splices
    # (which shows that this path could splice, so that the auto case means something).
    relay = c_relay(monkeypatch, splice=splice)
    most, _ = _bulk_both_ways(
        relay, veth_pair.near_listener, npairs=2, size=8 * MiB, make_link=veth_pair.link
    )
    assert (most > 0) is spliced


def link_small_backend(relay: RelayLike, listener: socket.socket) -> Link:
    """A relayed pair whose backend side has tiny socket buffers (set before the handshake,
    so the window is small too): the relay's pipe toward it fills and stays full, while the
    client side still takes the whole payload and its FIN."""
    client = socket.create_connection(listener.getsockname())
    relay_client, _ = listener.accept()
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    small.bind(("127.0.0.1", 0))
    small.listen(1)
    relay_backend = socket.socket()
    relay_backend.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    relay_backend.connect(small.getsockname())
    backend, _ = small.accept()
    small.close()
    relay_client.setblocking(False)
    relay_backend.setblocking(False)
    pid = relay.add(relay_client.detach(), relay_backend.detach(), 0.0, time.monotonic(), b"")
    return Link(pid, client, backend)


def test_half_close_with_bytes_still_in_a_pipe(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    relay = c_relay(monkeypatch)
    drv = Driver(relay)
    base = count_pipes()
    lk = link_small_backend(relay, listener)
    payload = pattern(b"half", 3 * MiB // 2)
    lk.client.setblocking(True)
    sender = threading.Thread(target=lambda: lk.client.sendall(payload))
    sender.start()
    # The backend reads the first MiB (the direction turns bulk and splices), then stops:
    # the relay's pipe toward it fills and stays full.
    head = recv_exact(drv, lk.backend, MiB)
    drv.until(lambda: count_pipes() > base, timeout=20)
    sender.join(timeout=30)
    assert not sender.is_alive()
    lk.client.shutdown(socket.SHUT_WR)  # FIN while bytes still sit in the pipe
    for _ in range(20):
        drv.step(0.005)
    assert drv.result(lk.pid) is None
    stats = relay.stats(lk.pid)
    assert stats is not None and stats[0] < len(payload)
    # All the bytes, then the FIN; the other direction still works after it.
    got = head + recv_eof(drv, lk.backend)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    reply = pattern(b"reply", 2 * MiB)
    lk.backend.setblocking(True)
    replier = threading.Thread(target=lambda: (lk.backend.sendall(reply), lk.backend.close()))
    replier.start()
    back = recv_eof(drv, lk.client)
    replier.join(timeout=30)
    assert back == reply
    assert drv.wait_finished(lk.pid) == (lk.pid, len(payload), len(reply), "done")
    lk.client.close()


def test_backend_reset_mid_transfer(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    relay = c_relay(monkeypatch)
    drv = Driver(relay)
    base = count_pipes()
    lk = link(relay, listener)
    stop = threading.Event()

    def pour() -> None:
        block = b"z" * MiB
        try:
            while not stop.is_set():
                lk.client.sendall(block)
        except OSError:
            pass

    lk.client.setblocking(True)
    lk.client.settimeout(10)
    t = threading.Thread(target=pour)
    t.start()
    try:
        recv_exact(drv, lk.backend, 4 * MiB)  # well past the splice threshold
        _abort(lk.backend)
        fin = drv.wait_finished(lk.pid)
    finally:
        stop.set()
        t.join(timeout=30)
    assert fin[0] == lk.pid and fin[3] == "reset" and fin[1] >= 4 * MiB
    assert len(relay) == 0
    # A pipe with bytes left in it was closed, not pooled: only clean pipes stay.
    assert count_pipes() - base <= 2
    lk.client.close()


# --------------------------------------------------------------------------- through ingress


def _serve_bulk(lsock: socket.socket, payload: bytes, out: dict[str, str]) -> None:
    """A backend: every connection gets payload while what it sends is hashed; the one that
    sent something (the relayed client, not the ingress's probe) is recorded in out."""

    def handle(conn: socket.socket) -> None:
        with conn:

            def send() -> None:
                with contextlib.suppress(OSError):
                    conn.sendall(payload)
                    conn.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            h = hashlib.sha256()
            n = 0
            with contextlib.suppress(OSError):
                while chunk := conn.recv(MiB):
                    h.update(chunk)
                    n += len(chunk)
            sender.join()
            if n:
                out["hash"], out["n"] = h.hexdigest(), str(n)

    handlers = []
    lsock.settimeout(0.2)
    deadline = time.monotonic() + 120
    while "n" not in out and time.monotonic() < deadline:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        conn.settimeout(60)
        t = threading.Thread(target=handle, args=(conn,))
        t.start()
        handlers.append(t)
    for t in handlers:
        t.join(timeout=60)


@pytest.mark.parametrize("splice", ["1", "0"], ids=["splice", "copy"])
def test_64mib_both_ways_through_ingress(spawn: Spawn, splice: str) -> None:
    size = 64 * MiB
    up, down = os.urandom(size), pattern(b"down", size)
    backend = socket.create_server(("127.0.0.1", 0))
    port = free_port()
    env = {"MESHKIT_NO_EXTENSIONS": "0", "MESHKIT_RELAY_SPLICE": splice}
    argv = ingress_argv(
        "--publish",
        f"127.0.0.1:{port}:80",
        "--backend",
        f"127.0.0.1:{backend.getsockname()[1]}",
        "--health-interval",
        "0s",
    )
    proc = spawn(argv, env)
    wait_tcp(port, proc)
    base = count_pipes(proc.pid)
    seen: dict[str, str] = {}
    server = threading.Thread(target=_serve_bulk, args=(backend, down, seen))
    server.start()
    most = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        sender = threading.Thread(target=lambda: (s.sendall(up), s.shutdown(socket.SHUT_WR)))
        sender.start()
        h = hashlib.sha256()
        n = 0
        while chunk := s.recv(MiB):
            h.update(chunk)
            n += len(chunk)
            most = max(most, count_pipes(proc.pid) - base)
        sender.join(timeout=60)
    server.join(timeout=60)
    backend.close()
    assert n == size and h.hexdigest() == hashlib.sha256(down).hexdigest()
    assert seen == {"hash": hashlib.sha256(up).hexdigest(), "n": str(size)}
    if splice == "1":
        assert most > 0, "the ingress never opened a pipe"
    else:
        assert most == 0
