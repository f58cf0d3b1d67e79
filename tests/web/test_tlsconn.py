"""The server side of one TLS connection, the compiled TlsConn (meshkit._fastpath, _tls.pxi
over csrc/tls_conn.c) and its pure-Python twin PyTlsSocket (meshkit.web.tlssock), driven
the same way and expected to behave the same: a real socketpair, the server object under
test on one end, a Python ssl client over memory BIOs on the other."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshkit._ext import load_fastpath
from meshkit.web.directives.tls import TLSConfig
from meshkit.web.sendfile import SEND_AGAIN, SEND_DONE, SEND_TRUNCATED
from meshkit.web.tlsctx import TlsListener, build_listener
from meshkit.web.tlssock import HTTP_TO_HTTPS, PyTlsSocket
from support.tlscerts import CA, issue, make_ca

_fast = load_fastpath()
IMPLS: list[Any] = [PyTlsSocket]
if _fast is not None and hasattr(_fast, "TlsConn"):
    IMPLS.append(_fast.TlsConn)


@dataclass
class Certs:
    ca: CA
    a: tuple[Path, Path]
    b: tuple[Path, Path]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    tmp = tmp_path_factory.mktemp("tlsconn")
    ca = make_ca(tmp)
    return Certs(ca, issue(ca, tmp, "a", ["a.test"]), issue(ca, tmp, "b", ["b.test", "*.b.test"]))


def _listener(certs: Certs, **cfg: Any) -> TlsListener:
    a = TLSConfig(pairs=[(str(certs.a[0]), str(certs.a[1]))], **cfg)
    b = TLSConfig(pairs=[(str(certs.b[0]), str(certs.b[1]))], **cfg)
    return build_listener([(["a.test"], a), (["b.test", "*.b.test"], b)])


class Client:
    """A Python ssl client over memory BIOs on one end of a socketpair."""

    def __init__(self, server_impl: Any, listener: TlsListener, sni: str | None = "a.test",
                 alpn: list[str] | None = None, session: ssl.SSLSession | None = None,
                 ctx: ssl.SSLContext | None = None) -> None:  # fmt: skip
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.sock = b
        self.server = server_impl(a, listener.context)
        self.raw_server = a
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=sni, session=session)

    def close(self) -> None:
        self.sock.close()
        self.server.close()

    def _send(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _take(self) -> int:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return -1
        if data:
            self.inc.write(data)
        else:
            self.inc.write_eof()
        return len(data)

    def server_recv(self) -> bytes | None:
        """What the server's recv() gives: bytes, or None for BlockingIOError."""
        try:
            return bytes(self.server.recv(65536))
        except BlockingIOError:
            return None

    def handshake(self) -> None:
        for _ in range(100):
            try:
                self.obj.do_handshake()
                self._send()
                self.server_recv()  # the client's Finished (and the tickets go out)
                self._take()
                return
            except ssl.SSLWantReadError:
                pass
            self._send()
            self.server_recv()
            self._take()
        raise AssertionError("no handshake")

    def request(self, data: bytes) -> bytes:
        self.obj.write(data)
        self._send()
        got = b""
        for _ in range(100):
            chunk = self.server_recv()
            if chunk:
                got += chunk
                if len(got) >= len(data):
                    return got
        raise AssertionError(f"the server read {got!r}")

    def read(self, n: int) -> bytes:
        got = b""
        for _ in range(100000):
            try:
                got += self.obj.read(n - len(got))
                if len(got) >= n:
                    return got
                continue
            except ssl.SSLWantReadError:
                pass
            if self._take() <= 0:
                break  # all the socket had (the server writes before the client reads)
        return got


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def _client(made: list[Client], *args: Any, **kw: Any) -> Client:
    c = Client(*args, **kw)
    made.append(c)
    return c


@pytest.mark.parametrize("impl", IMPLS)
def test_keep_alive_requests_and_alpn(impl: Any, certs: Certs, clients: list[Client]) -> None:
    c = _client(clients, impl, _listener(certs), alpn=["http/1.1"])
    c.handshake()
    assert c.server.version() == "TLSv1.3"
    assert c.server.selected_alpn_protocol() == "http/1.1"
    for i in range(3):
        assert c.request(b"GET /%d HTTP/1.1\r\n\r\n" % i) == b"GET /%d HTTP/1.1\r\n\r\n" % i
        body = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n%03d" % i
        assert c.server.send_bytes(c.server.fileno(), body, 0) == (len(body), SEND_DONE)
        assert c.read(len(body)) == body


@pytest.mark.parametrize("impl", IMPLS)
def test_a_big_response_waits_for_the_client(
    impl: Any, certs: Certs, clients: list[Client]
) -> None:
    c = _client(clients, impl, _listener(certs))
    c.handshake()
    data = os.urandom(3 << 20)
    off, states, got = 0, set(), b""
    view = bytearray(data)
    for _ in range(10000):
        sent, state = c.server.send_bytes(c.server.fileno(), view, off)
        off += sent
        states.add(state)
        got += c.read(len(data) - len(got))
        if state == SEND_DONE and off == len(data):
            break
    got += c.read(len(data) - len(got))
    assert got == data
    assert SEND_AGAIN in states  # the socket filled up and the rest waited


@pytest.mark.parametrize("impl", IMPLS)
def test_head_and_file(impl: Any, certs: Certs, clients: list[Client], tmp_path: Path) -> None:
    content = os.urandom(200_000)
    path = tmp_path / "f"
    path.write_bytes(content)
    c = _client(clients, impl, _listener(certs))
    c.handshake()
    fd = os.open(path, os.O_RDONLY)
    try:
        head = b"HTTP/1.1 200 OK\r\n\r\n"
        sent, state = c.server.send_head_and_file(c.server.fileno(), head, fd, 100, 1000)
        assert (sent, state) == (len(head) + 1000, SEND_DONE)
        assert c.read(len(head) + 1000) == head + content[100:1100]
        off, total = 0, len(content)
        while off < total:
            sent, state = c.server.send_head_and_file(c.server.fileno(), b"", fd, off, total - off)
            off += sent
            assert state in (SEND_DONE, SEND_AGAIN)
            if state == SEND_AGAIN:
                c.read(1)  # let the client take some: the rest goes on writability
        # the file ends before the range does
        sent, state = c.server.send_head_and_file(c.server.fileno(), b"", fd, total - 10, 50)
        assert (sent, state) == (10, SEND_TRUNCATED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("sni", "issuer"), [("a.test", "a.test"), ("b.test", "b.test"), ("x.b.test", "b.test"),
                        ("nope.test", "a.test"), (None, "a.test"), ("B.TEST.", "b.test")],
)  # fmt: skip
def test_sni_picks_the_certificate(
    impl: Any, certs: Certs, clients: list[Client], sni: str | None, issuer: str
) -> None:
    c = _client(clients, impl, _listener(certs), sni=sni)
    c.handshake()
    cert = c.obj.getpeercert(binary_form=True)
    want = ssl.PEM_cert_to_DER_cert(
        (certs.a if issuer == "a.test" else certs.b)[0].read_text()
    )  # fmt: skip
    assert cert == want


@pytest.mark.parametrize("impl", IMPLS)
def test_plain_http_gets_the_hint(impl: Any, certs: Certs, clients: list[Client]) -> None:
    c = _client(clients, impl, _listener(certs))
    c.sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    with pytest.raises(ConnectionAbortedError):
        c.server.recv(65536)
    c.sock.setblocking(True)
    c.sock.settimeout(5)
    assert c.sock.recv(4096) == HTTP_TO_HTTPS


@pytest.mark.parametrize("impl", IMPLS)
def test_garbage_and_eof(impl: Any, certs: Certs, clients: list[Client]) -> None:
    c = _client(clients, impl, _listener(certs))
    c.sock.sendall(b"\x16\x03\x01\x00\x10" + b"\xff" * 16)
    with pytest.raises(ConnectionAbortedError):
        c.server.recv(65536)
    d = _client(clients, impl, _listener(certs))
    d.sock.sendall(b"\x16\x03")  # half a record header, then the client leaves
    assert d.server_recv() is None
    d.sock.shutdown(socket.SHUT_WR)
    assert d.server.recv(65536) == b""


@pytest.mark.parametrize("impl", IMPLS)
def test_one_byte_client_hello(impl: Any, certs: Certs, clients: list[Client]) -> None:
    c = _client(clients, impl, _listener(certs))
    with pytest.raises(ssl.SSLWantReadError):
        c.obj.do_handshake()
    for byte in c.out.read():
        c.sock.send(bytes([byte]))
        assert c.server_recv() is None
    c.handshake()
    assert c.request(b"ping") == b"ping"


@pytest.mark.parametrize("impl", IMPLS)
def test_tls12_refused_when_tls13_is_the_minimum(
    impl: Any, certs: Certs, clients: list[Client]
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = _client(clients, impl, _listener(certs, min_version="tls1.3"), ctx=ctx)
    with pytest.raises(ssl.SSLWantReadError):
        c.obj.do_handshake()
    c._send()
    with pytest.raises(ConnectionAbortedError):
        c.server.recv(65536)
    c._take()
    with pytest.raises(ssl.SSLError):  # the alert
        c.obj.do_handshake()


@pytest.mark.parametrize("impl", IMPLS)
def test_close_notify_and_resumption(impl: Any, certs: Certs, clients: list[Client]) -> None:
    listener = _listener(certs)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = _client(clients, impl, listener, ctx=ctx)
    c.handshake()
    assert c.request(b"x") == b"x"
    c.server.send_bytes(c.server.fileno(), b"y", 0)
    assert c.read(1) == b"y"  # the session tickets came before
    session = c.obj.session
    assert not c.server.session_reused()
    c.server.shutdown(socket.SHUT_WR)
    c._take()
    assert c.obj.read(10) == b""  # close_notify (Python's ssl reads it as an empty read)
    assert c.obj.get_channel_binding() is not None
    assert session is not None and session.has_ticket
    d = _client(clients, impl, listener, session=session, ctx=ctx)
    d.handshake()
    assert d.server.session_reused() and d.obj.session_reused


@pytest.mark.parametrize("impl", IMPLS)
def test_after_our_close_notify_the_clients_is_its_eof(
    impl: Any, certs: Certs, clients: list[Client]
) -> None:
    c = _client(clients, impl, _listener(certs))
    c.handshake()
    assert c.request(b"x") == b"x"
    c.server.shutdown(socket.SHUT_WR)  # a lingering close
    c.obj.write(b"late")  # what the client still sends is read (and discarded by the caller)
    c._send()
    assert c.server_recv() == b"late"
    assert c.server_recv() is None  # nothing more: the socket is open
    # the client's close_notify ends the connection at once, with no wait for the socket's
    # EOF (a client that resets the socket right after it, as wrk does, is not heard again)
    with contextlib.suppress(ssl.SSLWantReadError):
        c.obj.unwrap()
    c._send()
    assert c.server_recv() == b""


@pytest.mark.parametrize("impl", IMPLS)
def test_on_demand_waits_for_the_certificate(
    impl: Any, certs: Certs, clients: list[Client]
) -> None:
    asked: list[str] = []
    resumed: list[bool] = []
    fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
    c = _client(clients, impl, _listener(certs), sni="new.test")

    def ask(name: str) -> concurrent.futures.Future[bool]:
        asked.append(name)
        return fut

    c.server.on_demand = ask
    c.server.on_resume = lambda: resumed.append(True)
    with pytest.raises(ssl.SSLWantReadError):
        c.obj.do_handshake()
    c._send()
    for _ in range(3):
        assert c.server_recv() is None
    assert c._take() == -1  # nothing from the server while it waits
    assert asked == ["new.test"]
    fut.set_result(True)
    assert resumed == [True]
    c.handshake()
    assert c.request(b"hi") == b"hi"


@pytest.mark.parametrize("impl", IMPLS)
def test_after_close_the_socket_is_not_used(impl: Any, certs: Certs, clients: list[Client]) -> None:
    c = _client(clients, impl, _listener(certs))
    c.handshake()
    c.server.close()
    assert c.server.fileno() == -1
    with pytest.raises(OSError) as info:
        c.server.send_bytes(-1, b"late", 0)
    assert info.value.errno in (errno.EBADF, None) or isinstance(info.value, OSError)


@pytest.mark.parametrize("impl", IMPLS)
def test_h2_takes_over_and_a_closed_client_is_not_the_old_readers_error(
    impl: Any, certs: Certs, clients: list[Client]
) -> None:
    """ALPN chose h2: on_h2 is called once and gets the plaintext; when the client is gone
    already, recv still raises BlockingIOError (the socket is h2's now: an OSError would
    make the HTTP/1.1 reader close it under h2's feet)."""
    taken: list[Any] = []
    c = _client(clients, impl, _listener(certs), alpn=["h2"])

    def take(tsock: Any) -> Any:
        taken.append(tsock)
        return taken.append

    c.server.on_h2 = take
    for _ in range(10):
        try:
            c.obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            c._send()
            c.server_recv()
            c._take()
    c._send()  # the client's Finished...
    c.sock.close()  # ...and it leaves at once (the server's tickets meet a closed socket)
    with pytest.raises(BlockingIOError):
        c.server.recv(65536)
    assert taken == [c.server]
    assert c.server.selected_alpn_protocol() == "h2"
