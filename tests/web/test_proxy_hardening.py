"""The proxy against hostile clients and upstreams (issue 16), end to end: a real
`python -m meshkit web -conf Caddyfile` process, raw requests over a socket, and a raw
upstream socket server that records what it got and answers what it is told (also heads no
HTTP library would send). Every test runs over the compiled fast path and its Python twin.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.peers import Proc, free_port, wait_tcp

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


class RawUpstream:
    """A one-thread TCP server on 127.0.0.1: reads each request (head, then a
    Content-Length or chunked body, or until the client closes) and answers `reply`;
    `got` holds the bytes each connection brought, whole."""

    def __init__(self, reply: bytes = OK) -> None:
        self.reply = reply
        self.got: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        index = len(self.got)
        self.got.append(b"")
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                    self.got[index] = data
                head, _, rest = data.partition(b"\r\n\r\n")
                low = head.lower()
                if b"transfer-encoding: chunked" in low:
                    while not rest.endswith(b"0\r\n\r\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            return  # a body that never ended: no answer
                        rest += chunk
                        data += chunk
                        self.got[index] = data
                elif b"content-length:" in low:
                    n = int(low.split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(rest) < n:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        rest += chunk
                        data += chunk
                        self.got[index] = data
                conn.sendall(self.reply)
                data = b""
                self.got.append(b"")
                index = len(self.got) - 1
        except OSError:
            return
        finally:
            conn.close()

    def lines(self) -> list[bytes]:
        """The request lines the upstream got."""
        return [g.split(b"\r\n", 1)[0] for g in self.got if g]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[Callable[..., RawUpstream]]:
    made: list[RawUpstream] = []

    def make(reply: bytes = OK) -> RawUpstream:
        u = RawUpstream(reply)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def start_web(
    spawn: Callable[..., Proc], env: dict[str, str], tmp: Path, site_body: str
) -> tuple[int, Proc]:
    port = free_port()
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("fileserver\n")
    conf = tmp / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n    root {root}\n{site_body}\n}}\n")
    proc = spawn([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], env)
    wait_tcp(port, proc)
    return port, proc


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` on a new connection and read until the server closes (Connection: close
    in the requests) or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


# the rest of a GET after its target
GET_END = b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


# --- 1: what target goes upstream ------------------------------------------------------------


def test_absolute_form_target_goes_upstream_in_origin_form(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    up = upstream()
    port, _ = start_web(spawn, fastpath_env, tmp_path, f"    proxy /api 127.0.0.1:{up.port}")
    # the authority must name the site (it picks the site, as Host would); what matters is
    # that the upstream gets an origin-form target, whatever the authority said
    site = b"127.0.0.1:%d" % port
    for target in (b"http://" + site + b"/api/e?x=1", b"HTTP://" + site + b"/api/../api/e"):
        reply = raw(
            port,
            b"GET " + target + b" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        )
        assert status(reply) == 200
    assert up.lines() == [b"GET /api/e?x=1 HTTP/1.1", b"GET /api/e HTTP/1.1"]


def test_dot_segments_and_slashes_are_resolved_before_forwarding(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    up = upstream()
    port, _ = start_web(spawn, fastpath_env, tmp_path, f"    proxy / 127.0.0.1:{up.port}")
    for target in (b"/api/../secret/s.txt", b"/api/%2e%2e/secret/s.txt", b"//secret/./s.txt"):
        reply = raw(port, b"GET " + target + GET_END)
        assert status(reply) == 200
    # a body goes the general (coroutine) way: same target
    reply = raw(
        port,
        b"POST /api/../secret/s.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nhi",
    )
    assert status(reply) == 200
    assert up.lines() == [b"GET /secret/s.txt HTTP/1.1"] * 3 + [b"POST /secret/s.txt HTTP/1.1"]


def test_forwarded_path_is_re_encoded(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    up = upstream()
    port, _ = start_web(spawn, fastpath_env, tmp_path, f"    proxy / 127.0.0.1:{up.port}")
    reply = raw(
        port,
        b"GET /a%20b/%3Fq/%25/caf%C3%A9/x;y=1,z@w:v!$&'()*+~ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status(reply) == 200
    assert up.lines() == [b"GET /a%20b/%3Fq/%25/caf%C3%A9/x;y=1,z@w:v!$&'()*+~ HTTP/1.1"]


def test_without_and_except_use_the_canonical_path(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    up = upstream()
    port, _ = start_web(
        spawn,
        fastpath_env,
        tmp_path,
        f"    proxy /api//v1/ 127.0.0.1:{up.port} {{\n"
        "        without /api/./v1\n"
        "        except /api/v1/./private\n"
        "    }",
    )

    def get(target: bytes) -> bytes:
        return raw(port, b"GET " + target + GET_END)

    assert status(get(b"/api/v1/x?q=1")) == 200
    assert status(get(b"/api/x/../v1//y")) == 200
    # the except path, however it is spelt, is not proxied (the file server answers 404)
    for target in (b"/api/v1/private/s", b"/api//v1/./private/s", b"/api/v1/x/../private/s"):
        assert b"HTTP/1.1 404" in get(target)
    assert up.lines() == [b"GET /x?q=1 HTTP/1.1", b"GET /y HTTP/1.1"]


# --- 2: malformed upstream heads -------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nContent-Length: 3\r\n\r\nok\n",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\rSet-Cookie: s=1\r\nContent-Length: 3\r\n\r\nok\n",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\nSet-Cookie: s=1\r\nContent-Length: 3\r\n\r\nok\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20) + b"\r\nContent-Length: 3\r\n\r\nok\n",
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: v\r\n" % i for i in range(5000))
        + b"Content-Length: 3\r\n\r\nok\n",
        # the same without a length (the parser's path, not the whole-response one)
        b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nConnection: close\r\n\r\nok\n",
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: v\r\n" % i for i in range(5000))
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
    ],
    ids=["nul", "cr", "lf", "1mib-field", "5000-fields", "nul-unframed", "5000-chunked"],
)
def test_malformed_upstream_head_is_502(
    spawn: Callable[..., Proc],
    fastpath_env: dict[str, str],
    tmp_path: Path,
    upstream,  # type: ignore[no-untyped-def]
    head: bytes,
) -> None:
    up = upstream(head)
    port, _ = start_web(spawn, fastpath_env, tmp_path, f"    proxy / 127.0.0.1:{up.port}")
    for method in (b"GET", b"POST"):  # fast path (kept connection or not) and serve()
        for _ in range(2):
            body = b"Content-Length: 2\r\n\r\nhi" if method == b"POST" else b"\r\n"
            reply = raw(
                port, method + b" /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + body
            )
            assert status(reply) == 502, reply[:300]
            assert b"X-Evil" not in reply and b"X-F1:" not in reply and b"X-Big" not in reply


def test_upstream_head_within_limits_passes(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    head = (
        b"HTTP/1.1 200 OK\r\nX-Tab: a\tb\r\n"
        + b"".join(b"X-F%d: v\r\n" % i for i in range(200))
        + b"X-Big: " + b"a" * 30000 + b"\r\nContent-Length: 3\r\n\r\nok\n"
    )
    up = upstream(head)
    port, _ = start_web(spawn, fastpath_env, tmp_path, f"    proxy / 127.0.0.1:{up.port}")
    reply = raw(port, b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status(reply) == 200 and b"X-F199: v" in reply and reply.endswith(b"ok\n")


# --- 3: chunked request bodies with trailers -------------------------------------------------


def test_content_length_trailer_is_400_and_never_reaches_upstream_whole(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    up = upstream()
    port, _ = start_web(
        spawn, fastpath_env, tmp_path, f"    proxy / 127.0.0.1:{up.port} {{\n fail_timeout 10s\n }}"
    )
    reply = raw(
        port,
        b"POST /p HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
    )
    assert status(reply) == 400, reply[:300]
    time.sleep(0.3)
    # whatever reached the upstream was not a whole body (no last chunk) and got no answer
    assert all(not g.endswith(b"0\r\n\r\n") for g in up.got), up.got
    # the upstream was not blamed: the next request still goes to it (fail_timeout 10s)
    reply = raw(port, b"GET /after HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status(reply) == 200


def test_other_trailers_are_dropped_and_the_body_goes_whole(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], tmp_path: Path, upstream
) -> None:  # type: ignore[no-untyped-def]
    up = upstream()
    port, _ = start_web(spawn, fastpath_env, tmp_path, f"    proxy / 127.0.0.1:{up.port}")
    reply = raw(
        port,
        b"POST /p HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    )
    assert status(reply) == 200
    got = b"".join(up.got)
    assert got.endswith(b"5\r\nhello\r\n0\r\n\r\n") and b"X-Trailer" not in got
