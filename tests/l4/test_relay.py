"""The TCP relay engine, run against real sockets for both the C Relay and PyRelay."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.l4.relay import Finished, PyRelay, RelayLike, make_relay

_fastpath = load_fastpath()
RelayFactory = Callable[..., RelayLike]


def _c_relay(bufsize: int = 65536) -> RelayLike:
    assert _fastpath is not None
    relay: RelayLike = _fastpath.Relay(bufsize)
    return relay


IMPLS = [
    pytest.param(
        _c_relay,
        id="c",
        marks=pytest.mark.skipif(_fastpath is None, reason="meshkit._fastpath not built"),
    ),
    pytest.param(PyRelay, id="py"),
]


@pytest.fixture(params=IMPLS)
def new_relay(request: pytest.FixtureRequest) -> RelayFactory:
    factory: RelayFactory = request.param
    return factory


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    lsock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    yield lsock
    lsock.close()


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(connecting end, accepted end) of a fresh loopback TCP connection."""
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    return a, b


@dataclass
class Link:
    """One relayed pair: the real client's socket and the real backend's socket."""

    pid: int
    client: socket.socket
    backend: socket.socket

    def close(self) -> None:
        self.client.close()
        self.backend.close()


def link(
    relay: RelayLike,
    listener: socket.socket,
    idle: float = 0.0,
    now: float | None = None,
    preamble: bytes = b"",
    before_add: Callable[[socket.socket, socket.socket], None] | None = None,
) -> Link:
    client, relay_client = tcp_pair(listener)
    relay_backend, backend = tcp_pair(listener)
    if before_add is not None:
        before_add(client, backend)
    relay_client.setblocking(False)
    relay_backend.setblocking(False)
    pid = relay.add(
        relay_client.detach(),
        relay_backend.detach(),
        idle,
        time.monotonic() if now is None else now,
        preamble,
    )
    return Link(pid, client, backend)


@dataclass
class Driver:
    """Polls a relay the way the ingress does: when its fd is readable."""

    relay: RelayLike
    finished: list[Finished] = field(default_factory=list)

    def step(self, timeout: float = 0.01, now: float | None = None) -> None:
        select.select([self.relay.fileno()], [], [], timeout)
        self.finished += self.relay.poll(time.monotonic() if now is None else now)

    def until(self, cond: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError("relay did not get there in time")
            self.step()

    def result(self, pid: int) -> Finished | None:
        for fin in self.finished:
            if fin[0] == pid:
                return fin
        return None

    def wait_finished(self, pid: int, timeout: float = 30.0) -> Finished:
        self.until(lambda: self.result(pid) is not None, timeout)
        fin = self.result(pid)
        assert fin is not None
        return fin


def recv_exact(drv: Driver, sock: socket.socket, n: int) -> bytes:
    sock.setblocking(False)
    got = bytearray()

    def have() -> bool:
        try:
            while len(got) < n:
                chunk = sock.recv(n - len(got))
                if not chunk:
                    break
                got.extend(chunk)
        except BlockingIOError:
            pass
        return len(got) >= n

    drv.until(have)
    return bytes(got)


def recv_eof(drv: Driver, sock: socket.socket) -> bytes:
    sock.setblocking(False)
    got = bytearray()
    eof = False

    def done() -> bool:
        nonlocal eof
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    eof = True
                    return True
                got.extend(chunk)
        except BlockingIOError:
            return False

    drv.until(done)
    assert eof
    return bytes(got)


def exchange(
    relay: RelayLike,
    lk: Link,
    c2b: list[bytes],
    b2c: list[bytes],
    timeout: float = 30.0,
) -> tuple[bytes, bytes, Finished]:
    """Both peers send their chunks, then shut their write side and read to EOF."""
    drv = Driver(relay)
    ends = [lk.client, lk.backend]
    outgoing = [list(c2b), list(b2c)]
    received = [bytearray(), bytearray()]
    shut = [False, False]
    eof = [False, False]
    for s in ends:
        s.setblocking(False)
    deadline = time.monotonic() + timeout
    while not (all(eof) and drv.result(lk.pid) is not None):
        if time.monotonic() > deadline:
            raise TimeoutError("exchange did not finish")
        for i, s in enumerate(ends):
            while outgoing[i]:
                try:
                    n = s.send(outgoing[i][0])
                except BlockingIOError:
                    break
                if n < len(outgoing[i][0]):
                    outgoing[i][0] = outgoing[i][0][n:]
                    break
                outgoing[i].pop(0)
            if not outgoing[i] and not shut[i]:
                s.shutdown(socket.SHUT_WR)
                shut[i] = True
            try:
                while not eof[i]:
                    chunk = s.recv(65536)
                    if not chunk:
                        eof[i] = True
                    received[i].extend(chunk)
            except BlockingIOError:
                pass
        writers = [s for i, s in enumerate(ends) if outgoing[i]]
        readers = [s for i, s in enumerate(ends) if not eof[i]]
        select.select([relay.fileno(), *readers], writers, [], 0.01)
        drv.finished += relay.poll(time.monotonic())
    fin = drv.result(lk.pid)
    assert fin is not None
    return bytes(received[1]), bytes(received[0]), fin


def test_make_relay_picks_an_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = make_relay()
    assert isinstance(relay, PyRelay) == (_fastpath is None)
    monkeypatch.setenv("MESHKIT_NO_EXTENSIONS", "1")
    assert isinstance(make_relay(), PyRelay)


def test_relays_bytes_both_ways(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    drv = Driver(relay)
    lk = link(relay, listener)
    assert len(relay) == 1
    lk.client.sendall(b"hello backend")
    assert recv_exact(drv, lk.backend, 13) == b"hello backend"
    lk.backend.sendall(b"hi client")
    assert recv_exact(drv, lk.client, 9) == b"hi client"
    assert relay.stats(lk.pid) == (13, 9)
    # keep-alive style ping-pong on the same pair
    for i in range(200):
        msg = b"ping %d" % i
        lk.client.sendall(msg)
        assert recv_exact(drv, lk.backend, len(msg)) == msg
        lk.backend.sendall(msg.upper())
        assert recv_exact(drv, lk.client, len(msg)) == msg.upper()
    lk.client.shutdown(socket.SHUT_WR)
    assert recv_eof(drv, lk.backend) == b""
    lk.backend.shutdown(socket.SHUT_WR)
    assert recv_eof(drv, lk.client) == b""
    fin = drv.wait_finished(lk.pid)
    sent = 13 + sum(len(b"ping %d" % i) for i in range(200))
    assert fin == (lk.pid, sent, sent - 4, "done")
    assert len(relay) == 0
    assert relay.stats(lk.pid) is None
    lk.close()


def test_large_transfer_with_slow_reader(new_relay: RelayFactory, listener: socket.socket) -> None:
    bufsize = 65536
    relay = new_relay(bufsize)
    drv = Driver(relay)
    lk = link(relay, listener)
    block = os.urandom(1 << 20)
    total = 50 * len(block)
    expected = hashlib.sha256(block * 50).hexdigest()
    lk.client.setblocking(True)
    lk.backend.setblocking(True)
    sender_done = threading.Event()
    start_reading = threading.Event()
    got = {"n": 0, "hash": ""}

    def send() -> None:
        for _ in range(50):
            lk.client.sendall(block)
        lk.client.shutdown(socket.SHUT_WR)
        sender_done.set()

    def read() -> None:
        start_reading.wait()
        h = hashlib.sha256()
        while True:
            chunk = lk.backend.recv(16384)
            if not chunk:
                break
            h.update(chunk)
            got["n"] += len(chunk)
        got["hash"] = h.hexdigest()
        lk.backend.close()

    threads = [threading.Thread(target=send), threading.Thread(target=read)]
    for t in threads:
        t.start()
    try:
        # The reader is stalled: once the kernel buffers fill, the relay must stop reading.
        stalled_at = -1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for _ in range(20):
                drv.step(0.005)
            stats = relay.stats(lk.pid)
            assert stats is not None
            if stats[0] == stalled_at:
                break
            stalled_at = stats[0]
        assert 0 < stalled_at < total
        assert not sender_done.is_set()
        # Nothing gets lost in the relay's buffer while the destination is full.
        for _ in range(10):
            drv.step(0.01)
        assert relay.stats(lk.pid) == (stalled_at, 0)
        start_reading.set()
        fin = drv.wait_finished(lk.pid, timeout=120)
    finally:
        start_reading.set()
        for t in threads:
            t.join(timeout=120)
    assert fin[1:] == (total, 0, "done")
    assert got["n"] == total
    assert got["hash"] == expected
    lk.client.close()


def test_half_close_reply_after_eof(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    drv = Driver(relay)
    lk = link(relay, listener)
    lk.client.sendall(b"request")
    lk.client.shutdown(socket.SHUT_WR)
    # The backend sees the request and then EOF, and only then answers.
    assert recv_eof(drv, lk.backend) == b"request"
    assert relay.stats(lk.pid) == (7, 0)
    assert drv.result(lk.pid) is None
    lk.backend.sendall(b"the reply")
    lk.backend.close()
    assert recv_eof(drv, lk.client) == b"the reply"
    assert drv.wait_finished(lk.pid) == (lk.pid, 7, 9, "done")
    lk.client.close()


def _abort(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_reset_from_backend_resets_client(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    drv = Driver(relay)
    lk = link(relay, listener)
    lk.client.sendall(b"abc")
    assert recv_exact(drv, lk.backend, 3) == b"abc"
    _abort(lk.backend)
    assert drv.wait_finished(lk.pid) == (lk.pid, 3, 0, "reset")
    assert len(relay) == 0
    # The reset is passed on as an RST, not a polite FIN.
    lk.client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        lk.client.recv(10)
    lk.client.close()


def test_reset_from_client_after_half_close(
    new_relay: RelayFactory, listener: socket.socket
) -> None:
    """No read or write is pending on the client when its RST arrives: EPOLLERR must catch it."""
    relay = new_relay()
    drv = Driver(relay)
    lk = link(relay, listener)
    lk.client.sendall(b"q")
    lk.client.shutdown(socket.SHUT_WR)
    assert recv_eof(drv, lk.backend) == b"q"
    _abort(lk.client)
    assert drv.wait_finished(lk.pid) == (lk.pid, 1, 0, "reset")
    lk.backend.settimeout(5)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        lk.backend.send(b"late reply" * 1000)
        lk.backend.recv(10)
    lk.backend.close()


def test_idle_expiry(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    drv = Driver(relay)
    t0 = 1000.0
    lk = link(relay, listener, idle=5.0, now=t0)
    forever = link(relay, listener, idle=0.0, now=t0)
    drv.step(now=t0 + 1)
    assert drv.finished == []
    # Traffic at t0 + 3 moves the deadline of that pair to t0 + 8.
    lk.client.sendall(b"x")
    lk.client.setblocking(False)
    lk.backend.setblocking(False)
    deadline = time.monotonic() + 10
    while relay.stats(lk.pid) != (1, 0):
        assert time.monotonic() < deadline
        drv.step(now=t0 + 3)
    assert lk.backend.recv(10) == b"x"
    drv.step(0, now=t0 + 7.9)
    assert drv.finished == []
    drv.step(0, now=t0 + 8.0)
    assert drv.finished == [(lk.pid, 1, 0, "idle")]
    assert recv_eof(Driver(relay), lk.client) == b""
    # idle_timeout <= 0: never expires
    drv.step(0, now=t0 + 1e9)
    assert len(relay) == 1
    assert relay.stats(forever.pid) == (0, 0)
    relay.close_all()
    lk.close()
    forever.close()


def test_close_pair(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    drv = Driver(relay)
    a = link(relay, listener)
    b = link(relay, listener)
    a.client.sendall(b"12345")
    assert recv_exact(drv, a.backend, 5) == b"12345"
    assert relay.close(a.pid) == (a.pid, 5, 0, "closed")
    assert relay.close(a.pid) is None
    assert relay.close(12345) is None
    assert relay.stats(a.pid) is None
    assert len(relay) == 1
    assert recv_eof(drv, a.client) == b""
    assert recv_eof(drv, a.backend) == b""
    # the other pair is untouched and the freed id is handed out again
    b.client.sendall(b"still here")
    assert recv_exact(drv, b.backend, 10) == b"still here"
    c = link(relay, listener)
    assert c.pid == a.pid
    assert sorted(relay.close_all()) == sorted([(b.pid, 10, 0, "closed"), (c.pid, 0, 0, "closed")])
    assert len(relay) == 0
    assert relay.close_all() == []
    for lk in (a, b, c):
        lk.close()


def test_preamble_first_and_not_counted(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    header = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 80\r\n"

    def client_speaks_first(client: socket.socket, backend: socket.socket) -> None:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")

    lk = link(relay, listener, preamble=header, before_add=client_speaks_first)
    got, back, fin = exchange(relay, lk, [b"more"], [b"HTTP/1.0 200 OK\r\n\r\n"])
    assert got == header + b"GET / HTTP/1.0\r\n\r\nmore"
    assert back == b"HTTP/1.0 200 OK\r\n\r\n"
    assert fin == (lk.pid, 22, 19, "done")
    lk.close()


def test_add_rejects_oversized_preamble(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay(64)
    with pytest.raises(ValueError):
        link(relay, listener, preamble=b"x" * 65)
    assert len(relay) == 0


def test_many_pairs(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay(4096)
    drv = Driver(relay)
    links = [link(relay, listener) for _ in range(150)]
    assert sorted(lk.pid for lk in links) == list(range(150))
    assert len(relay) == 150
    for i, lk in enumerate(links):
        lk.client.sendall(b"c%d" % i * 100)
        lk.backend.sendall(b"b%d" % i * 50)
    for i, lk in enumerate(links):
        assert recv_exact(drv, lk.backend, len(b"c%d" % i) * 100) == b"c%d" % i * 100
        assert recv_exact(drv, lk.client, len(b"b%d" % i) * 50) == b"b%d" % i * 50
        lk.client.shutdown(socket.SHUT_WR)
        lk.backend.shutdown(socket.SHUT_WR)
    drv.until(lambda: len(drv.finished) == 150)
    assert len(relay) == 0
    for i, lk in enumerate(links):
        assert drv.result(lk.pid) == (
            lk.pid,
            len(b"c%d" % i) * 100,
            len(b"b%d" % i) * 50,
            "done",
        )
        lk.close()


def test_busy_pair_yields_and_keeps_fd_readable(
    new_relay: RelayFactory, listener: socket.socket
) -> None:
    """A burst larger than one poll's budget is carried over, and fileno() says so."""
    relay = new_relay(1024)
    lk = link(relay, listener)
    lk.client.sendall(os.urandom(1 << 20))
    time.sleep(0.05)
    select.select([relay.fileno()], [], [], 1)
    relay.poll(time.monotonic())
    stats = relay.stats(lk.pid)
    assert stats is not None and 0 < stats[0] < 1 << 20
    readable, _, _ = select.select([relay.fileno()], [], [], 0)
    assert readable
    got, _, fin = exchange(relay, lk, [], [])
    assert len(got) == 1 << 20
    assert fin[1:] == (1 << 20, 0, "done")
    lk.close()


def test_asyncio_integration(new_relay: RelayFactory, listener: socket.socket) -> None:
    """The ingress's way: add_reader on fileno(), poll() from the callback and a timer."""

    async def main() -> list[Finished]:
        loop = asyncio.get_running_loop()
        relay = new_relay()
        finished: list[Finished] = []
        all_done = asyncio.Event()

        def on_ready() -> None:
            finished.extend(relay.poll(loop.time()))
            if len(finished) == 3:
                all_done.set()

        loop.add_reader(relay.fileno(), on_ready)

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.05)
                on_ready()

        ticker = asyncio.create_task(tick())
        links = [link(relay, listener, idle=5.0, now=loop.time()) for _ in range(2)]
        idler = link(relay, listener, idle=0.2, now=loop.time())
        for lk in [*links, idler]:
            lk.client.setblocking(False)
            lk.backend.setblocking(False)

        async def echo(lk: Link) -> None:
            while data := await loop.sock_recv(lk.backend, 65536):
                await loop.sock_sendall(lk.backend, data)
            lk.backend.shutdown(socket.SHUT_WR)

        async def client(lk: Link) -> bytes:
            got = bytearray()
            for i in range(50):
                msg = b"message %d" % i
                await loop.sock_sendall(lk.client, msg)
                while len(got) < sum(len(b"message %d" % j) for j in range(i + 1)):
                    got += await loop.sock_recv(lk.client, 65536)
            lk.client.shutdown(socket.SHUT_WR)
            assert await loop.sock_recv(lk.client, 10) == b""
            return bytes(got)

        echoes = [asyncio.create_task(echo(lk)) for lk in links]
        replies = await asyncio.gather(*(client(lk) for lk in links))
        await asyncio.gather(*echoes)
        await asyncio.wait_for(all_done.wait(), 10)
        ticker.cancel()
        loop.remove_reader(relay.fileno())
        expected = b"".join(b"message %d" % i for i in range(50))
        assert replies == [expected, expected]
        for lk in [*links, idler]:
            lk.close()
        return finished

    finished = asyncio.run(main())
    reasons = sorted(f[3] for f in finished)
    assert reasons == ["done", "done", "idle"]


chunks = st.lists(st.binary(min_size=1, max_size=3000), max_size=12)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    c2b=chunks,
    b2c=chunks,
    bufsize=st.sampled_from([1, 7, 512, 4096, 65536]),
    preamble=st.binary(max_size=1),
)
def test_c_and_python_agree(
    listener: socket.socket, c2b: list[bytes], b2c: list[bytes], bufsize: int, preamble: bytes
) -> None:
    factories: list[RelayFactory] = [PyRelay]
    if _fastpath is not None:
        factories.append(_c_relay)
    results = []
    for factory in factories:
        relay = factory(bufsize)
        lk = link(relay, listener, preamble=preamble)
        got_backend, got_client, fin = exchange(relay, lk, c2b, b2c)
        lk.close()
        assert got_backend == preamble + b"".join(c2b)
        assert got_client == b"".join(b2c)
        assert fin == (lk.pid, len(b"".join(c2b)), len(b"".join(b2c)), "done")
        assert len(relay) == 0
        results.append((got_backend, got_client, fin))
    assert all(r == results[0] for r in results)


# --- accept() and connect(): the engine makes the sockets itself --------------------------


def _listen(host: str = "127.0.0.1", backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, 0))
    lsock.listen(backlog)
    lsock.setblocking(False)
    return lsock


@pytest.mark.parametrize("on_listener", [True, False], ids=["inherited", "set-per-fd"])
def test_accepted_fds_have_nodelay(new_relay: RelayFactory, on_listener: bool) -> None:
    # The C relay skips the per-connection setsockopt when the listener has TCP_NODELAY
    # (children inherit it); either way every accepted fd must have it.
    relay = new_relay()
    lsock = socket.socket()
    if on_listener:
        lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.setblocking(False)
    clients = [socket.create_connection(lsock.getsockname()) for _ in range(3)]
    got: list[tuple[int, str, int]] = []
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        select.select([lsock], [], [], 0.05)
        got += relay.accept(lsock.fileno())
    assert len(got) == 3
    for fd, _ip, _port in got:
        _check_accepted(fd).close()
    for c in clients:
        c.close()
    lsock.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connects to it are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def full_backend() -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full, so that new SYNs are dropped (never connects)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(lsock.getsockname())
        fillers.append(s)
    time.sleep(0.05)
    yield lsock.getsockname()
    for s in fillers:
        s.close()
    lsock.close()


def _accept_all(lsock: socket.socket, n: int, timeout: float = 10.0) -> list[socket.socket]:
    got: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, "backend did not see the connection"
        select.select([lsock], [], [], 0.05)
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            continue
        conn.setblocking(False)
        got.append(conn)
    return got


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _check_accepted(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    assert not os.get_blocking(fd)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return sock


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
        ),
    ],
)
def test_accept_returns_fds_and_peers(new_relay: RelayFactory, host: str) -> None:
    relay = new_relay()
    lsock = _listen(host)
    assert relay.accept(lsock.fileno()) == []
    clients = [socket.create_connection(lsock.getsockname()[:2]) for _ in range(5)]
    time.sleep(0.05)
    got = relay.accept(lsock.fileno(), 3)
    got += relay.accept(lsock.fileno())
    assert len(got) == 5
    assert relay.accept(lsock.fileno()) == []
    peers = sorted((ip, port) for _, ip, port in got)
    assert peers == sorted(c.getsockname()[:2] for c in clients)
    for (fd, _, _), c in zip(
        sorted(got, key=lambda g: g[2]),
        sorted(clients, key=lambda c: c.getsockname()[1]),
        strict=True,
    ):
        sock = _check_accepted(fd)
        c.sendall(b"hi")
        sock.setblocking(True)
        assert sock.recv(2) == b"hi"
        sock.close()
        c.close()
    assert len(relay) == 0
    lsock.close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6")
def test_accept_ipv4_mapped_peer(new_relay: RelayFactory) -> None:
    relay = new_relay()
    lsock = socket.socket(socket.AF_INET6)
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.bind(("::", 0))
    lsock.listen(8)
    lsock.setblocking(False)
    c = socket.create_connection(("127.0.0.1", lsock.getsockname()[1]))
    time.sleep(0.05)
    [(fd, ip, port)] = relay.accept(lsock.fileno())
    assert (ip, port) == ("::ffff:127.0.0.1", c.getsockname()[1])
    os.close(fd)
    c.close()
    lsock.close()


def test_accept_errors(new_relay: RelayFactory) -> None:
    relay = new_relay()
    s = socket.socket()
    s.setblocking(False)
    with pytest.raises(OSError) as exc:
        relay.accept(s.fileno())  # not listening
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        relay.accept(s.fileno(), 0)
    assert _fd_open(s.fileno())  # the listening socket stays the caller's
    s.close()


def _client_end(listener: socket.socket) -> tuple[socket.socket, int]:
    """(the real client, the fd the relay gets for it)."""
    client, relay_client = tcp_pair(listener)
    relay_client.setblocking(False)
    return client, relay_client.detach()


def test_connect_relays_with_preamble_first(
    new_relay: RelayFactory, listener: socket.socket
) -> None:
    relay = new_relay()
    backend_l = _listen()
    client, cfd = _client_end(listener)
    header = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 80\r\n"
    pid = relay.connect(cfd, "127.0.0.1", backend_l.getsockname()[1], 5.0, time.monotonic(), header)
    assert len(relay) == 1
    assert relay.stats(pid) == (0, 0)
    assert relay.connect_error(pid) == 0
    # The client speaks (and half-closes) before the backend connection is even accepted.
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    [backend] = _accept_all(backend_l, 1)
    lk = Link(pid, client, backend)
    got, back, fin = exchange(relay, lk, [b"more"], [b"HTTP/1.0 200 OK\r\n\r\n"])
    assert got == header + b"GET / HTTP/1.0\r\n\r\nmore"
    assert back == b"HTTP/1.0 200 OK\r\n\r\n"
    assert fin == (pid, 22, 19, "done")
    assert len(relay) == 0
    lk.close()
    backend_l.close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_connect_ipv6_backend(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    backend_l = _listen("::1")
    client, cfd = _client_end(listener)
    pid = relay.connect(cfd, "::1", backend_l.getsockname()[1], 0.0, time.monotonic())
    [backend] = _accept_all(backend_l, 1)
    got, back, fin = exchange(relay, Link(pid, client, backend), [b"six"], [b"ok"])
    assert (got, back, fin) == (b"six", b"ok", (pid, 3, 2, "done"))
    client.close()
    backend.close()
    backend_l.close()


def test_connect_refused_then_retry(
    new_relay: RelayFactory, listener: socket.socket, dead_port: int
) -> None:
    relay = new_relay()
    drv = Driver(relay)
    client, cfd = _client_end(listener)
    pid = relay.connect(cfd, "127.0.0.1", dead_port, 5.0, time.monotonic(), b"pre1|")
    fin = drv.wait_finished(pid)
    assert fin == (pid, 0, 0, "connect")
    assert relay.connect_error(pid) == errno.ECONNREFUSED
    assert len(relay) == 1
    assert relay.stats(pid) == (0, 0)
    # The client is still connected: no EOF, no reset, and it may keep talking.
    assert _fd_open(cfd)
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)
    client.sendall(b"early")
    for _ in range(5):
        drv.step(0.01)
    assert drv.finished == [fin]
    with pytest.raises(ValueError):
        relay.retry(pid, "not an ip", 80, time.monotonic())
    backend_l = _listen()
    drv.finished.clear()
    relay.retry(pid, "127.0.0.1", backend_l.getsockname()[1], time.monotonic(), b"pre2|")
    assert relay.connect_error(pid) == 0
    with pytest.raises(ValueError):  # only a FAILED pair can be retried
        relay.retry(pid, "127.0.0.1", backend_l.getsockname()[1], time.monotonic())
    [backend] = _accept_all(backend_l, 1)
    assert recv_exact(drv, backend, 10) == b"pre2|early"
    backend.sendall(b"reply")
    assert recv_exact(drv, client, 5) == b"reply"
    assert relay.stats(pid) == (5, 5)
    got, back, fin = exchange(relay, Link(pid, client, backend), [b"!"], [b"?"])
    assert (got, back, fin) == (b"!", b"?", (pid, 6, 6, "done"))
    client.close()
    backend.close()
    backend_l.close()


def test_connect_fails_at_once(new_relay: RelayFactory, listener: socket.socket) -> None:
    """connect() itself fails (TCP to a multicast address): reported by the next poll."""
    relay = new_relay()
    client, cfd = _client_end(listener)
    pid = relay.connect(cfd, "224.0.0.1", 80, 5.0, 1000.0)
    assert len(relay) == 1
    assert relay.connect_error(pid) == 0  # not reported yet
    readable, _, _ = select.select([relay.fileno()], [], [], 1)
    assert readable
    assert relay.poll(1000.0) == [(pid, 0, 0, "connect")]
    assert relay.connect_error(pid) == errno.ENETUNREACH
    assert relay.poll(1000.0) == []
    readable, _, _ = select.select([relay.fileno()], [], [], 0)
    assert not readable
    assert relay.close(pid) == (pid, 0, 0, "closed")
    client.close()


def test_connect_timeout(
    new_relay: RelayFactory, listener: socket.socket, full_backend: tuple[str, int]
) -> None:
    relay = new_relay()
    t0 = 1000.0
    client, cfd = _client_end(listener)
    pid = relay.connect(cfd, *full_backend, 0.05, t0, connect_timeout=0.2)
    forever, cfd2 = _client_end(listener)
    pid2 = relay.connect(cfd2, *full_backend, 0.05, t0, connect_timeout=0)
    time.sleep(0.05)
    # connecting pairs are governed by connect_timeout only, not by the idle timeout
    assert relay.poll(t0 + 0.19) == []
    assert relay.poll(t0 + 0.2) == [(pid, 0, 0, "connect")]
    assert relay.connect_error(pid) == errno.ETIMEDOUT
    assert relay.poll(t0 + 1e9) == []
    assert relay.connect_error(pid2) == 0
    assert len(relay) == 2
    assert sorted(relay.close_all()) == [(pid, 0, 0, "closed"), (pid2, 0, 0, "closed")]
    for c in (client, forever):
        c.settimeout(5)
        assert c.recv(10) == b""
        c.close()


def test_close_failed_and_connecting_pairs(
    new_relay: RelayFactory,
    listener: socket.socket,
    dead_port: int,
    full_backend: tuple[str, int],
) -> None:
    relay = new_relay()
    drv = Driver(relay)
    failed, cfd = _client_end(listener)
    pid = relay.connect(cfd, "127.0.0.1", dead_port, 0.0, time.monotonic())
    assert drv.wait_finished(pid)[3] == "connect"
    connecting, cfd2 = _client_end(listener)
    pid2 = relay.connect(cfd2, *full_backend, 0.0, time.monotonic(), b"x")
    assert relay.close(pid) == (pid, 0, 0, "closed")
    assert relay.close(pid) is None
    assert relay.connect_error(pid) == 0
    assert relay.stats(pid) is None
    assert not _fd_open(cfd) or cfd == cfd2
    assert recv_eof(drv, failed) == b""
    assert relay.close(pid2) == (pid2, 0, 0, "closed")
    assert recv_eof(drv, connecting) == b""
    assert len(relay) == 0
    with pytest.raises(ValueError):
        relay.retry(pid, "127.0.0.1", dead_port, time.monotonic())
    failed.close()
    connecting.close()


def test_connect_rejects_bad_arguments(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay(64)
    client, cfd = _client_end(listener)
    bad = [
        ("localhost", 80, b""),
        ("127.0.0.1\0", 80, b""),
        ("1.2.3", 80, b""),
        ("fe80::1%lo", 80, b""),
        ("127.0.0.1", 0, b""),
        ("127.0.0.1", 65536, b""),
        ("127.0.0.1", -1, b""),
        ("127.0.0.1", 80, b"x" * 65),
    ]
    for ip, port, pre in bad:
        with pytest.raises(ValueError):
            relay.connect(cfd, ip, port, 0.0, time.monotonic(), pre)
        assert _fd_open(cfd)  # not taken
    with pytest.raises(ValueError):
        relay.connect(-1, "127.0.0.1", 80, 0.0, time.monotonic())
    assert len(relay) == 0
    with pytest.raises(ValueError):
        relay.retry(0, "127.0.0.1", 80, time.monotonic())
    assert relay.connect_error(0) == 0
    assert relay.connect_error(-5) == 0
    os.close(cfd)
    client.close()


def test_idle_counts_from_relaying(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    t0 = 1000.0
    backend_l = _listen()
    client, cfd = _client_end(listener)
    pid = relay.connect(cfd, "127.0.0.1", backend_l.getsockname()[1], 5.0, t0)
    [backend] = _accept_all(backend_l, 1)
    # The connect completes in a poll 100 s later; the idle clock starts there.
    select.select([relay.fileno()], [], [], 1)
    assert relay.poll(t0 + 100) == []
    assert relay.poll(t0 + 104.9) == []
    assert relay.poll(t0 + 105) == [(pid, 0, 0, "idle")]
    client.close()
    backend.close()
    backend_l.close()


def test_client_reset_while_connecting(new_relay: RelayFactory, listener: socket.socket) -> None:
    relay = new_relay()
    drv = Driver(relay)
    backend_l = _listen()
    client, cfd = _client_end(listener)
    pid = relay.connect(cfd, "127.0.0.1", backend_l.getsockname()[1], 0.0, time.monotonic())
    client.sendall(b"abc")
    _abort(client)
    time.sleep(0.05)
    [backend] = _accept_all(backend_l, 1)
    assert drv.wait_finished(pid) == (pid, 0, 0, "reset")
    backend.settimeout(5)
    with pytest.raises(ConnectionResetError):
        backend.recv(10)
    backend.close()
    backend_l.close()


def test_accept_and_connect_many(new_relay: RelayFactory) -> None:
    """The ingress's new-connection path: accept + connect, backend answers and closes."""
    relay = new_relay(4096)
    front = _listen()
    backend_l = _listen()
    n = 60
    stop = threading.Event()

    def backend_server() -> None:
        backend_l.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = backend_l.accept()
            except (TimeoutError, BlockingIOError):
                continue
            conn.setblocking(True)
            req = conn.recv(100)
            conn.sendall(b"re:" + req)
            conn.close()

    server = threading.Thread(target=backend_server)
    server.start()
    replies: list[bytes] = []

    def clients() -> None:
        for i in range(n):
            with socket.create_connection(front.getsockname()) as c:
                c.sendall(b"%d" % i)
                c.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := c.recv(100):
                    data += chunk
                replies.append(data)

    cl = threading.Thread(target=clients)
    cl.start()
    drv = Driver(relay)
    accepted = 0
    try:
        deadline = time.monotonic() + 30
        while len([f for f in drv.finished if f[3] == "done"]) < n:
            assert time.monotonic() < deadline
            select.select([relay.fileno(), front.fileno()], [], [], 0.01)
            for fd, ip, _port in relay.accept(front.fileno()):
                assert ip == "127.0.0.1"
                relay.connect(fd, "127.0.0.1", backend_l.getsockname()[1], 10.0, time.monotonic())
                accepted += 1
            drv.finished += relay.poll(time.monotonic())
    finally:
        stop.set()
        cl.join(30)
        server.join(30)
    assert accepted == n
    assert replies == [b"re:%d" % i for i in range(n)]
    assert len(relay) == 0
    front.close()
    backend_l.close()


@dataclass
class _Targets:
    live: socket.socket
    dead: int


def _drive_connects(
    relay: RelayLike, listener: socket.socket, tg: _Targets, ops: list[tuple[str, int, str]]
) -> list[object]:
    """Runs ops against relay and returns everything observable, for C/Python comparison."""
    out: list[object] = []
    pairs: dict[int, socket.socket] = {}  # open pair id -> its client (ids are reused)
    clients: list[socket.socket] = []
    drv = Driver(relay)
    addr = {"live": "127.0.0.1", "dead": "127.0.0.1", "unreachable": "224.0.0.1"}
    backends: list[socket.socket] = []

    def port(target: str) -> int:
        return tg.live.getsockname()[1] if target == "live" else tg.dead

    def settle(pid: int, client: socket.socket, target: str) -> None:
        if target == "live":
            backends.extend(_accept_all(tg.live, 1))
            client.sendall(b"p")
            drv.until(lambda: relay.stats(pid) == (1, 0) or drv.result(pid) is not None)
        else:
            drv.until(lambda: drv.result(pid) is not None)

    for op, idx, target in ops:
        if op == "connect":
            client, cfd = _client_end(listener)
            pid = relay.connect(cfd, addr[target], port(target), 0.0, time.monotonic())
            pairs[pid] = client
            clients.append(client)
            drv.finished.clear()
            settle(pid, client, target)
            out.append(("connect", pid, list(drv.finished), relay.connect_error(pid)))
        elif not pairs:
            continue
        elif op == "retry":
            pid = sorted(pairs)[idx % len(pairs)]
            client = pairs[pid]
            drv.finished.clear()
            try:
                relay.retry(pid, addr[target], port(target), time.monotonic())
            except ValueError:
                out.append(("retry", pid, "ValueError"))
                continue
            settle(pid, client, target)
            out.append(("retry", pid, list(drv.finished), relay.connect_error(pid)))
        else:
            pid = sorted(pairs)[idx % len(pairs)]
            del pairs[pid]
            out.append(("close", pid, relay.close(pid)))
        out.append(("len", len(relay)))
    out.append(("all", sorted(relay.close_all())))
    for client in clients:
        client.close()
    for b in backends:
        b.close()
    return out


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["connect", "connect", "retry", "close"]),
            st.integers(0, 10),
            st.sampled_from(["live", "dead", "unreachable"]),
        ),
        max_size=10,
    )
)
def test_c_and_python_agree_on_connects(
    listener: socket.socket, dead_port: int, ops: list[tuple[str, int, str]]
) -> None:
    factories: list[RelayFactory] = [PyRelay]
    if _fastpath is not None:
        factories.append(_c_relay)
    live = _listen()
    results = [
        _drive_connects(factory(), listener, _Targets(live, dead_port), ops)
        for factory in factories
    ]
    live.close()
    assert all(r == results[0] for r in results)


# --- serve(): the fast lane (accept, table lookup and connect all inside the engine) ---------

try:
    from meshkit._fastpath import ConnTable as _CConnTable
except ImportError:  # pragma: no cover - the extension is built in CI
    _CConnTable = None
from meshkit.lb.conntable import PyConnTable  # noqa: E402

SERVE_IMPLS = [
    pytest.param(
        (_c_relay, _CConnTable),
        id="c",
        marks=pytest.mark.skipif(_fastpath is None, reason="meshkit._fastpath not built"),
    ),
    pytest.param((PyRelay, PyConnTable), id="py"),
]
ServeImpl = tuple[RelayFactory, Callable[..., PyConnTable]]


@pytest.fixture(params=SERVE_IMPLS)
def served(request: pytest.FixtureRequest) -> ServeImpl:
    impl: ServeImpl = request.param
    return impl


@dataclass
class _Lane:
    """A front listener, a relay and a table whose backends listen on real sockets."""

    relay: RelayLike
    table: PyConnTable
    front: socket.socket
    backends: dict[int, socket.socket]
    drv: Driver
    clients: list[socket.socket] = field(default_factory=list)

    def connect_clients(self, n: int) -> list[socket.socket]:
        new = [socket.create_connection(self.front.getsockname()) for _ in range(n)]
        self.clients += new
        return new

    def serve(self, max_count: int = 64) -> tuple[int, int]:
        ip, port = self.front.getsockname()
        return self.relay.serve(
            self.front.fileno(), self.table, ip, port, 10.0, 3.0, time.monotonic(), max_count
        )

    def serve_all(self, n: int) -> tuple[int, int]:
        """Serves until n clients were taken (their SYNs may still be on the way)."""
        acc = ref = 0
        deadline = time.monotonic() + 10
        while acc < n:
            assert time.monotonic() < deadline, "clients did not arrive"
            select.select([self.front], [], [], 0.05)
            a, r = self.serve()
            acc += a
            ref += r
        return acc, ref

    def close(self) -> None:
        for s in [*self.clients, self.front, *self.backends.values()]:
            s.close()


def _lane(
    impl: ServeImpl, policy: str = "round_robin", backends: tuple[int, ...] = (1, 2)
) -> _Lane:
    make_relay_, make_table = impl
    relay = make_relay_()
    table = make_table(policy)
    socks = {}
    for bid in backends:
        socks[bid] = _listen()
        table.add_backend(bid)
        table.set_address(bid, *socks[bid].getsockname())
    return _Lane(relay, table, _listen(), socks, Driver(relay))


def test_serve_spreads_relays_and_releases(served: ServeImpl) -> None:
    lane = _lane(served)
    relay, table = lane.relay, lane.table
    n = 6
    clients = lane.connect_clients(n)
    assert lane.serve_all(n) == (n, 0)
    assert len(relay) == n and len(table) == n
    assert table.stats(1)[:2] == (3, 3) and table.stats(2)[:2] == (3, 3)
    conns = {bid: _accept_all(lane.backends[bid], 3) for bid in (1, 2)}
    for i, c in enumerate(clients):
        c.sendall(b"req-%d" % i)
        c.shutdown(socket.SHUT_WR)
    for socks in conns.values():
        for s in socks:
            req = recv_eof(lane.drv, s)
            assert req.startswith(b"req-")
            s.sendall(b"re:" + req)
            s.close()
    for i, c in enumerate(clients):
        assert recv_eof(lane.drv, c) == b"re:req-%d" % i
    lane.drv.until(lambda: len(relay) == 0)
    assert sorted(f[3] for f in lane.drv.finished) == ["done"] * n
    assert all(f[1] == 5 and f[2] == 8 for f in lane.drv.finished)
    assert len(table) == 0
    assert table.stats(1) == (0, 3, 3 * 13) and table.stats(2) == (0, 3, 3 * 13)
    assert relay.live_bytes(table) == {}
    lane.close()


def test_serve_without_backend_closes_and_counts(served: ServeImpl) -> None:
    lane = _lane(served, backends=(1,))
    relay, table = lane.relay, lane.table
    table.set_up(1, False)
    (client,) = lane.connect_clients(1)
    assert lane.serve_all(1) == (1, 1)
    assert len(relay) == 0 and len(table) == 0
    client.settimeout(5)
    assert client.recv(10) == b""
    # A backend that is up but has no address counts as no backend; its flow is undone.
    table.add_backend(2)
    table.set_up(1, True)
    table.remove_backend(1)
    lane.connect_clients(2)
    assert lane.serve_all(2) == (2, 2)
    assert table.stats(2) == (0, 2, 0) and len(table) == 0
    assert relay.serve(lane.front.fileno(), table, "127.0.0.1", 80, 1.0, 1.0, 0.0) == (0, 0)
    lane.close()


def test_serve_connect_failure_retry_elsewhere(served: ServeImpl, dead_port: int) -> None:
    lane = _lane(served, backends=(2,))
    relay, table = lane.relay, lane.table
    table.add_backend(1)  # round robin picks 1 first: it refuses connections
    table.set_address(1, "127.0.0.1", dead_port)
    (client,) = lane.connect_clients(1)
    assert lane.serve_all(1) == (1, 0)
    lane.drv.until(lambda: bool(lane.drv.finished))
    ((pid, c2b, b2c, reason),) = lane.drv.finished
    assert (c2b, b2c, reason) == (0, 0, "connect")
    assert relay.connect_error(pid) == errno.ECONNREFUSED
    flow = relay.flow_of(pid)
    assert flow is not None
    key, bid = flow
    cport = client.getsockname()[1]
    assert key == (6, "127.0.0.1", cport, *lane.front.getsockname()) and bid == 1
    # The engine left the flow alone; the owner moves it to backend 2.
    assert table.find(*key) == 1
    assert table.release(*key) == 1
    now = time.monotonic()
    table.assign(*key, 2, now)
    addr = table.address(2)
    assert addr is not None
    relay.retry(pid, *addr, now, backend_id=2)
    assert relay.flow_of(pid) == (key, 2)
    (backend,) = _accept_all(lane.backends[2], 1)
    client.sendall(b"hello")
    assert recv_exact(lane.drv, backend, 5) == b"hello"
    assert relay.live_bytes(table) == {2: 5}
    backend.sendall(b"hi")
    assert recv_exact(lane.drv, client, 2) == b"hi"
    client.close()
    backend.close()
    lane.drv.until(lambda: len(relay) == 0)
    assert lane.drv.finished[-1] == (pid, 5, 2, "done")
    assert len(table) == 0
    assert table.stats(1) == (0, 1, 0) and table.stats(2) == (0, 1, 7)
    assert relay.flow_of(pid) is None
    lane.close()


def test_failed_served_pair_closed_by_owner_releases_nothing(
    served: ServeImpl, dead_port: int
) -> None:
    lane = _lane(served, backends=())
    relay, table = lane.relay, lane.table
    table.add_backend(1)
    table.set_address(1, "127.0.0.1", dead_port)
    lane.connect_clients(1)
    lane.serve_all(1)
    lane.drv.until(lambda: bool(lane.drv.finished))
    pid = lane.drv.finished[0][0]
    assert len(table) == 1  # the owner's now
    assert relay.close_backend(table, 1) == []  # not the engine's to close
    assert relay.close(pid) == (pid, 0, 0, "closed")
    assert len(table) == 1 and table.stats(1) == (1, 1, 0)
    lane.close()


def test_close_backend_and_live_bytes(served: ServeImpl) -> None:
    lane = _lane(served)
    relay, table = lane.relay, lane.table
    clients = lane.connect_clients(4)
    lane.serve_all(4)
    conns = {bid: _accept_all(lane.backends[bid], 2) for bid in (1, 2)}
    # Round robin: clients 0 and 2 went to backend 1, 1 and 3 to backend 2.
    for i, c in enumerate(clients):
        c.sendall(b"x" * (i + 1))
    for socks in conns.values():
        for s in socks:
            recv_exact(lane.drv, s, 1)
    lane.drv.until(lambda: relay.live_bytes(table) == {1: 1 + 3, 2: 2 + 4})
    ids = sorted(relay.flow_of(p)[1] for p in range(4) if relay.flow_of(p) is not None)  # type: ignore[index]
    assert ids == [1, 1, 2, 2]
    done = relay.close_backend(table, 1)
    assert sorted(f[3] for f in done) == ["closed", "closed"]
    assert sorted(f[1] for f in done) == [1, 3]
    assert table.stats(1) == (0, 2, 4) and table.stats(2)[0] == 2
    assert len(relay) == 2 and len(table) == 2
    assert relay.live_bytes(table) == {2: 6}
    assert relay.close_backend(table, 1) == []
    for s in conns[1]:
        recv_eof(lane.drv, s)  # closed by the engine
    rest = relay.close_all()
    assert len(rest) == 2 and len(table) == 0
    assert table.stats(2) == (0, 2, 6)
    lane.close()


def test_serve_needs_the_matching_table(served: ServeImpl) -> None:
    make_relay_, make_table = served
    relay = make_relay_()
    other = _CConnTable if make_table is PyConnTable else PyConnTable
    lsock = _listen()
    if other is not None:
        with pytest.raises(TypeError):
            relay.serve(lsock.fileno(), other(), "127.0.0.1", 80, 1.0, 1.0, 0.0)
    table = make_table()
    with pytest.raises(ValueError):
        relay.serve(lsock.fileno(), table, "nope", 80, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        relay.serve(lsock.fileno(), table, "127.0.0.1", 80, 1.0, 1.0, 0.0, 0)
    with pytest.raises(OSError):
        relay.serve(-1, table, "127.0.0.1", 80, 1.0, 1.0, 0.0)
    assert relay.flow_of(0) is None and relay.flow_of(-1) is None
    assert relay.live_bytes(table) == {}
    lsock.close()


def test_served_pairs_keep_their_table_alive(served: ServeImpl) -> None:
    import gc

    lane = _lane(served, backends=(1,))
    relay = lane.relay
    lane.connect_clients(1)
    lane.serve_all(1)
    (conn,) = _accept_all(lane.backends[1], 1)
    table_ref = lane.table
    lane.table = None  # type: ignore[assignment]
    del table_ref
    gc.collect()
    lane.clients[0].sendall(b"abc")
    assert recv_exact(lane.drv, conn, 3) == b"abc"
    (fin,) = relay.close_all()
    assert fin[1:] == (3, 0, "closed")
    conn.close()
    lane.close()


def _serve_script(impl: ServeImpl, dead: int) -> list[object]:
    """A scripted run of serve() and table changes; everything observable, for comparison."""
    lane = _lane(impl, policy="least_conn", backends=(1, 2))
    relay, table = lane.relay, lane.table
    table.add_backend(3, weight=2)  # no address: refused
    table.add_backend(4)
    table.set_address(4, "127.0.0.1", dead)
    out: list[object] = []
    accepted: dict[int, list[socket.socket]] = {1: [], 2: []}

    def snapshot(tag: str) -> None:
        out.append((tag, len(relay), len(table), [table.stats(b) for b in table.backends()]))

    def step(n: int, max_count: int = 64) -> None:
        lane.connect_clients(n)
        deadline = time.monotonic() + 10
        got = [0, 0]
        while got[0] < n:
            assert time.monotonic() < deadline
            select.select([lane.front], [], [], 0.05)
            a, r = lane.serve(max_count)
            out.append(("serve", a, r))
            got[0] += a
            got[1] += r
        # Settle every connect: the live backends see theirs, the dead one's fail.
        for bid in (1, 2):
            expected = table.stats(bid)[0]
            while len(accepted[bid]) < expected:
                accepted[bid] += _accept_all(lane.backends[bid], expected - len(accepted[bid]))
        if table.is_up(4):
            want = table.stats(4)[0]
            lane.drv.until(lambda: sum(f[3] == "connect" for f in lane.drv.finished) >= want)
        for pid, *_rest, reason in lane.drv.finished:
            if reason == "connect":
                flow = relay.flow_of(pid)
                assert flow is not None
                out.append(("failed", flow[1]))
                table.release(*flow[0])  # the owner gives up on it
                relay.close(pid)
        lane.drv.finished.clear()
        snapshot(f"step{n}")

    step(5)
    step(3, max_count=2)
    table.set_up(4, False)
    table.set_address(3, "127.0.0.1", lane.backends[2].getsockname()[1])
    step(4)
    out.append(("closed", sorted(f[3] for f in relay.close_backend(table, 1))))
    snapshot("after close_backend")
    table.set_up(1, False)
    table.set_up(2, False)
    table.set_up(3, False)
    step(2)
    out.append(("all", len(relay.close_all())))
    snapshot("end")
    for socks in accepted.values():
        for s in socks:
            s.close()
    lane.close()
    return out


def test_c_and_python_agree_on_serve(dead_port: int) -> None:
    if _fastpath is None:
        pytest.skip("meshkit._fastpath not built")
    results = [_serve_script(impl.values[0], dead_port) for impl in SERVE_IMPLS]
    assert results[0] == results[1]
    assert ("failed", 4) in results[0]


@pytest.mark.skipif(_fastpath is None, reason="meshkit._fastpath not built")
def test_stalled_bulk_flows_hold_a_bounded_number_of_big_reads() -> None:
    """A copying bulk direction reads 256 KiB at once and keeps what its destination did not
    take; with many slow receivers that would pin 256 KiB each, so at most 64 directions hold
    such a buffer (16 MiB) and the rest read 64 KiB, as before. 100 flows whose backends never
    read: every one stalls with a rest, and the count of big buffers stays at the cap. Then
    the backends drain everything, byte for byte, and the buffers all come back."""
    relay = _c_relay(65536)
    drv = Driver(relay)
    flows = []
    for _ in range(100):
        client, relay_client = socket.socketpair()
        relay_backend, backend = socket.socketpair()
        relay_client.setblocking(False)
        relay_backend.setblocking(False)
        client.setblocking(False)
        backend.setblocking(False)
        pid = relay.add(relay_client.detach(), relay_backend.detach(), 0.0, time.monotonic(), b"")
        flows.append((pid, client, backend))
    chunk = os.urandom(1 << 16)
    sent = [0] * len(flows)
    peak = 0
    try:
        for _ in range(40):  # every client pushes until its socket is full, the relay moves it
            for i, (_, client, _) in enumerate(flows):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sent[i] += client.send(chunk[sent[i] % len(chunk) :])
            for _ in range(3):
                drv.step(0.001)
            peak = max(peak, relay.big_in_use())  # type: ignore[attr-defined]
        assert peak == 64, peak
        got = [bytearray() for _ in flows]
        for _, client, _ in flows:
            client.shutdown(socket.SHUT_WR)

        def drained() -> bool:
            for i, (_, _, backend) in enumerate(flows):
                with contextlib.suppress(BlockingIOError):
                    while chunk_in := backend.recv(1 << 20):
                        got[i].extend(chunk_in)
            return all(len(g) == n for g, n in zip(got, sent, strict=True))

        drv.until(drained, timeout=60)
        for g, n in zip(got, sent, strict=True):
            assert g == (chunk * (n // len(chunk) + 1))[:n]
        assert relay.big_in_use() == 0  # type: ignore[attr-defined]
    finally:
        relay.close_all()
        for _, client, backend in flows:
            client.close()
            backend.close()
