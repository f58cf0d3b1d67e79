"""`websocket` against a real `meshkit web` process: a wsproto client over a plain socket, real
commands (cat, env, echo, yes), curl for the requests that are no handshake."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)

from support.peers import Proc, free_port, wait_tcp

ENDPOINTS = """\
    websocket /echo cat
    websocket /env env
    websocket /now "echo bye"
    websocket /flood "yes abcdefghijklmnopqrstuvwxyz0123456789"
    websocket /sleep "sleep 300"
    websocket /missing no-such-command-here
"""


class Client:
    """A websocket client: wsproto's state machine over a blocking socket."""

    def __init__(
        self,
        port: int,
        target: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock = tls.wrap_socket(raw) if tls is not None else raw
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[str] = []
        self._part = ""
        self.closed: CloseConnection | None = None
        head = Request(host=f"127.0.0.1:{port}", target=target, extra_headers=list(headers or []))
        self.sock.sendall(self.ws.send(head))
        while True:
            events = self._read()
            if any(isinstance(e, AcceptConnection) for e in events):
                break
            assert not any(isinstance(e, RejectConnection) for e in events), events

    def _read(self) -> list[object]:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.ws.receive_data(data)
        out = []
        for event in self.ws.events():
            out.append(event)
            if isinstance(event, Message):
                assert isinstance(event, TextMessage)  # v1 sends lines as text messages
                # wsproto hands out what has arrived of a message (over TLS: a record's
                # worth); a message is whole at message_finished
                self._part += event.data
                if event.message_finished:
                    self.messages.append(self._part)
                    self._part = ""
            elif isinstance(event, CloseConnection):
                self.closed = event
                self.sock.sendall(self.ws.send(event.response()))
        return out

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def wait_messages(self, n: int) -> list[str]:
        while len(self.messages) < n and self.closed is None:
            self._read()
        return self.messages

    def wait_close(self) -> CloseConnection:
        while self.closed is None:
            self._read()
        return self.closed

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Proc]]:
    tmp = tmp_path_factory.mktemp("ws")
    port = free_port()
    conf = tmp / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n    root {tmp}\n{ENDPOINTS}}}\n")
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        yield port, proc
    finally:
        proc.stop()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _child(pid: int, name: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == name:
                    return child
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no {name} process under {pid}")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, waiting to be reaped
            time.sleep(0.02)
            continue
        time.sleep(0.02)
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def echo_server(fastpath_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n    root {tmp_path}\n    websocket /echo cat\n}}\n")
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], fastpath_env)
    try:
        wait_tcp(port, proc)
        yield port
    finally:
        proc.stop()


def test_messages_go_through_the_command_both_ways(echo_server: int) -> None:
    c = Client(echo_server, "/echo")
    try:
        c.send("hello")
        c.send("  two words  ")
        c.send("ünïcode")
        assert c.wait_messages(3) == ["hello", "two words", "ünïcode"]
        big = "x" * 50_000
        c.send(big)
        assert c.wait_messages(4)[3] == big
    finally:
        c.close()


def test_the_command_gets_v1s_cgi_environment(server: tuple[int, Proc]) -> None:
    port, _ = server
    c = Client(port, "/env?a=1&b=2", [(b"X-Test", b"one"), (b"X-Test", b"two")])
    try:
        c.wait_close()
        env = dict(line.split("=", 1) for line in c.messages if "=" in line)
    finally:
        c.close()
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["REQUEST_URI"] == "/env?a=1&b=2"
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"].isdigit()
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(port)
    assert env["GATEWAY_INTERFACE"] == "meshkit-CGI/1.1"
    assert env["SCRIPT_NAME"].endswith("/env") and os.path.isabs(env["SCRIPT_NAME"])
    assert env["HTTP_X_TEST"] == "one, two"
    assert env["HTTP_UPGRADE"] == "websocket"
    assert "PATH" not in env and "HOME" not in env  # v1 passed the CGI variables only


def test_a_command_that_exits_at_once_closes_cleanly(server: tuple[int, Proc]) -> None:
    port, _ = server
    c = Client(port, "/now")
    try:
        close = c.wait_close()
        assert close.code == 1000
        assert c.messages == ["bye"]
        assert c.sock.recv(100) == b""  # and then the TCP connection ends
    finally:
        c.close()


def test_flooding_output_waits_for_the_client(server: tuple[int, Proc]) -> None:
    """A client that reads nothing: the command ends up blocked writing its stdout (the bridge
    stopped reading it), and the server's memory does not grow with the output."""
    port, proc = server
    c = Client(port, "/flood")
    try:
        yes = _child(proc.pid, "yes")
        deadline = time.monotonic() + 20
        wchan = ""
        while time.monotonic() < deadline:
            wchan = Path(f"/proc/{yes}/wchan").read_text()
            state = Path(f"/proc/{yes}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "S" and _blocked_writing(wchan):
                break
            time.sleep(0.05)
        assert _blocked_writing(wchan), wchan
        rss = _rss(proc.pid)
        time.sleep(1.5)
        assert _rss(proc.pid) - rss < 8 << 20
        # reading again lets it flow again
        got = len(c.wait_messages(len(c.messages) + 2000))
        assert got >= 2000
    finally:
        c.close()
    assert _gone(yes), "the command outlived its client"


def _blocked_writing(wchan: str) -> bool:
    # the command's stdout is a pipe, or a socket pair under uvloop
    return "pipe" in wchan or wchan in ("sock_alloc_send_pskb", "unix_stream_sendmsg")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_client_going_away_ends_the_command(server: tuple[int, Proc]) -> None:
    port, proc = server
    c = Client(port, "/sleep")
    sleeper = _child(proc.pid, "sleep")
    c.close()
    assert _gone(sleeper)


def test_requests_that_are_no_handshake(server: tuple[int, Proc]) -> None:
    port, _ = server
    url = f"http://127.0.0.1:{port}"
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/echo"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "400"
    out = subprocess.run(
        [
            "curl", "-s", "-i", f"{url}/echo",
            "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
            "-H", "Sec-WebSocket-Version: 8", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert out.stdout.startswith("HTTP/1.1 400") and "Sec-WebSocket-Version: 13" in out.stdout
    # a command that is not there: 502 before any upgrade
    out = subprocess.run(
        [
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/missing",
            "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
            "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert out.stdout == "502"


def test_server_shutdown_says_going_away_and_ends_the_command(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f'127.0.0.1:{port} {{\n    root {tmp_path}\n    websocket "sleep 300"\n}}\n')
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        c = Client(port, "/")
        sleeper = _child(proc.pid, "sleep")
        proc.signal(signal.SIGTERM)
        assert c.wait_close().code == 1001
        c.close()
        assert proc.wait(20) == 0
        assert _gone(sleeper)
    finally:
        proc.stop()


def test_over_https_messages_go_through_the_command(tmp_path: Path) -> None:
    """Over HTTPS (HTTP/1.1 by ALPN) the handshake gets its 101 and the bridge runs on the
    TLS connection: messages go to the command and its lines come back, encrypted."""
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"https://127.0.0.1:{port} {{\n    tls self_signed\n    root {tmp_path}\n"
        "    websocket /echo cat\n}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the site's certificate is self-signed
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        wait_tcp(port, proc)
        c = Client(port, "/echo", tls=ctx)
        try:
            assert isinstance(c.sock, ssl.SSLSocket) and c.sock.version() is not None
            c.send("over tls")
            big = "y" * 40_000  # more than one TLS record each way
            c.send(big)
            assert c.wait_messages(2) == ["over tls", big]
            assert _child(proc.pid, "cat")  # the command runs for it
        finally:
            c.close()
    finally:
        proc.stop()


def test_over_http2_there_is_no_upgrade(tmp_path: Path) -> None:
    """HTTP/2 has no Upgrade (RFC 9113 8.2.2): a handshake sent over it (curl drops the
    Connection field there) is no websocket handshake, and no command starts for it."""
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"https://127.0.0.1:{port} {{\n    tls self_signed\n    root {tmp_path}\n"
        "    websocket /echo cat\n}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        out = subprocess.run(
            [
                "curl", "-sk", "-w", "\n%{http_code} %{http_version}", "--http2",
                f"https://127.0.0.1:{port}/echo", "-H", "Connection: Upgrade",
                "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13",
                "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        body, _, status = out.stdout.rpartition("\n")
        # 400 when the client dropped Connection (curl), 501 when a handshake got through
        assert status in ("400 2", "501 2"), out.stdout
        assert status == "501 2" or "'upgrade' token not found" in body, body
        assert _children(proc.pid) == []  # no command was started for it
    finally:
        proc.stop()
