"""A command over a websocket (Caddy v1's `websocket` directive): the handshake checks, the
command's CGI-style environment, and the bridge that runs once the server hands the socket
over after the 101 (Response.upgrade, the same hand-off the proxy's tunnel uses).

    messages from the client -> the command's stdin, each followed by "\\n"
    each line the command writes -> one text message (surrounding white space trimmed)

The frames are wsproto's (sans-IO); this module is the thin I/O shell around it. Flow control
both ways: while the socket's write buffer is full the bridge stops reading the command's
stdout (so a command that floods blocks on its pipe, nothing piles up here), and while the
command's stdin is full the bridge stops reading the socket. When the command ends (even at
once) the client gets a close frame (1000) and the connection closes; when the client goes
away the command's stdin is closed, it gets SIGINT and, one second later, SIGKILL (as v1).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from meshkit import __version__
from meshkit.web.counters import WEBSOCKETS
from meshkit.web.message import Headers, Request, Response

log = logging.getLogger("meshkit.web")

GATEWAY_INTERFACE = "meshkit-CGI/1.1"
SERVER_SOFTWARE = f"meshkit/{__version__}"
MAX_MESSAGE = 10 << 20  # bytes of one message from the client (v1's maxMessageSize)
MAX_LINE = 64 << 10  # bytes of one line of the command's output (Go's bufio.Scanner)
PING_EVERY = 54.0  # seconds (v1's pingPeriod)
READ_TIMEOUT = 60.0  # seconds without anything from the client (v1's pongWait)
KILL_AFTER = 1.0  # seconds between SIGINT and SIGKILL when the client went away
CLOSE_WAIT = 2.0  # seconds the client gets to answer our close frame
STDIN_HIGH = 256 << 10  # bytes waiting for the command's stdin before the socket pauses


@dataclass(frozen=True)
class Endpoint:
    path: str
    argv: tuple[str, ...]  # the command (a path or a name on PATH) and its arguments


# --- the handshake (RFC 6455 4.2), answered by the handler ------------------------------------


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def handshake(request: Request) -> tuple[Response | None, str]:
    """(an error response, "") when request is no websocket opening handshake, else
    (None, the Sec-WebSocket-Accept value)."""
    h = request.headers
    problem = ""
    if request.method != "GET":
        problem = "request method is not GET"
    elif "upgrade" not in _tokens(",".join(h.get_all("Connection"))):
        problem = "'upgrade' token not found in 'Connection' header"
    elif "websocket" not in _tokens(",".join(h.get_all("Upgrade"))):
        problem = "'websocket' token not found in 'Upgrade' header"
    elif "13" not in _tokens(",".join(h.get_all("Sec-WebSocket-Version"))):
        resp = Response.text(400, "Bad Request\nwebsocket: unsupported version\n")
        resp.headers.set("Sec-WebSocket-Version", "13")
        return resp, ""
    key = (h.get("Sec-WebSocket-Key") or "").strip()
    if not problem:
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                problem = "'Sec-WebSocket-Key' header must be 16 bytes in base64"
        except (binascii.Error, ValueError):
            problem = "'Sec-WebSocket-Key' header is not base64"
    if problem:
        return Response.text(400, f"Bad Request\nwebsocket: {problem}\n"), ""
    return None, generate_accept_token(key.encode("ascii")).decode("ascii")


def switching(accept: str, run: Callable[[socket.socket, bytes], object]) -> Response:
    """The 101 answer; the server adds Connection and Upgrade and then calls run."""
    response = Response(status=101, headers=Headers([("Sec-WebSocket-Accept", accept)]))
    response.upgrade = run  # type: ignore[assignment]
    return response


# --- the command's environment (v1's buildEnv: CGI 1.1 meta-variables, nothing else) ----------


def _split_host(value: str) -> tuple[str, str]:
    if value.startswith("["):
        end = value.find("]")
        if end >= 0:
            rest = value[end + 1 :]
            return value[1:end], rest[1:] if rest.startswith(":") else ""
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    return value, ""


def cgi_env(request: Request, script: str) -> dict[str, str]:
    """The command's whole environment, as v1 built it: no PATH, HOME... of the server."""
    server_name, server_port = _split_host(request.host)
    env = {
        "AUTH_TYPE": "",
        "CONTENT_LENGTH": "",
        "CONTENT_TYPE": "",
        "GATEWAY_INTERFACE": GATEWAY_INTERFACE,
        "PATH_INFO": "",
        "PATH_TRANSLATED": "",
        "QUERY_STRING": request.query,
        "REMOTE_ADDR": request.remote_addr,
        "REMOTE_HOST": request.remote_addr,
        "REMOTE_IDENT": "",
        "REMOTE_PORT": str(request.remote_port) if request.remote_port else "",
        "REMOTE_USER": "",
        "REQUEST_METHOD": request.method,
        "REQUEST_URI": request.original_uri,
        "SCRIPT_NAME": script,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{request.version}",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
    }
    joined: dict[str, list[str]] = {}
    for name, value in request.headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        joined.setdefault(key, []).append(value.replace("\n", " "))
    for key, values in joined.items():
        if "\0" not in key:
            env[key] = ", ".join(values).replace("\0", "")
    return env


# --- the bridge -------------------------------------------------------------------------------


class _Socket(asyncio.Protocol):
    """The client's side: feeds wsproto, writes what it produces, reports flow control."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.transport: asyncio.Transport | None = None
        self.writable: asyncio.Event = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bridge.from_client(data)

    def eof_received(self) -> bool | None:
        self.bridge.client_gone()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()  # nobody may wait for a socket that is gone
        self.bridge.client_gone()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class Bridge:
    """One websocket connection and the one process of its command."""

    def __init__(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.ws = Connection(ConnectionType.SERVER)
        self.side = _Socket(self)
        self.proc: asyncio.subprocess.Process | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.parts: list[bytes] = []  # the message being received, frame by frame
        self.size = 0
        self.closing = False  # we sent a close frame
        self.gone = False  # the client closed or went away
        self.stdin_open = True
        self.last_heard = asyncio.get_running_loop().time()
        self._drain: asyncio.Task[None] | None = None

    # --- the client -> the command ------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        self.ws.receive_data(data)
        try:
            for event in self.ws.events():
                self._event(event)
        except Exception as exc:  # wsproto refuses a frame: close as it says (1002 ...)
            log.debug("websocket: %s", exc)
            self._close(1002, "protocol error")

    def _event(self, event: object) -> None:
        if isinstance(event, Message):
            data = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
            self.size += len(data)
            if self.size > MAX_MESSAGE:
                self._close(1009, "message too big")
                return
            self.parts.append(data)
            if event.message_finished:
                message, self.parts, self.size = b"".join(self.parts), [], 0
                self._to_stdin(message + b"\n")
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            if not self.closing:
                self.closing = True
                self._send(event.response())
            self.client_gone()

    def _to_stdin(self, data: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or not self.stdin_open or self.closing:
            return  # a message that crossed our close frame: the command has ended
        transport = proc.stdin.transport
        if transport.is_closing():
            return
        proc.stdin.write(data)
        if transport.get_write_buffer_size() > STDIN_HIGH and self._drain is None:
            # the command does not keep up: stop reading the client until it has
            if self.side.transport is not None:
                self.side.transport.pause_reading()
            self._drain = asyncio.get_running_loop().create_task(self._drain_stdin())

    async def _drain_stdin(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await proc.stdin.drain()
        self._drain = None
        t = self.side.transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    # --- the command -> the client ------------------------------------------------------
    async def pump_stdout(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        out = proc.stdout
        while not self.gone:
            try:
                line = await out.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial  # the end of the output (maybe a last line without \n)
                if line and not await self._message(line):
                    return
                self._close(1000, "")
                return
            except asyncio.LimitOverrunError:
                self._close(1001, "line of output too long")
                return
            if not await self._message(line):
                return

    async def _message(self, line: bytes) -> bool:
        """Send one line as a text message once the socket can take it; False when the
        client is gone."""
        side = self.side
        if not side.writable.is_set():
            await side.writable.wait()  # flow control: the pipe fills, the command waits
        if self.gone or self.closing:
            return False
        self._send(TextMessage(data=line.strip().decode("utf-8", "replace")))
        return True

    # --- both ---------------------------------------------------------------------------
    def _send(self, event: object) -> None:
        t = self.side.transport
        if t is None or t.is_closing():
            return
        try:
            data = self.ws.send(event)  # type: ignore[arg-type]
        except Exception:  # the state machine says no more (closed already)
            return
        t.write(data)

    def _close(self, code: int, reason: str) -> None:
        if not self.closing and not self.gone:
            self.closing = True
            self._send(CloseConnection(code=code, reason=reason))
            loop = asyncio.get_running_loop()
            loop.call_later(CLOSE_WAIT, self.client_gone)  # a client that never answers
        if code != 1000:
            self.client_gone()

    def client_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.side.writable.set()
        proc = self.proc
        if proc is not None and proc.stdin is not None and self.stdin_open:
            self.stdin_open = False
            with contextlib.suppress(Exception):
                proc.stdin.close()
        t = self.side.transport
        if t is not None:
            if self.closing:
                # our close frame (or the answer to the client's) goes out before the FIN
                with contextlib.suppress(Exception):
                    t.close()
            else:
                t.abort()
        if not self.done.done():
            self.done.set_result(None)

    async def _watch(self) -> None:
        """Ping the client now and then; give up on one that says nothing for too long."""
        loop = asyncio.get_running_loop()
        while not self.gone:
            await asyncio.sleep(PING_EVERY)
            if loop.time() - self.last_heard > READ_TIMEOUT:
                self._close(1001, "no answer to pings")
                return
            self._send(Ping(payload=b""))

    async def run(self, sock: socket.socket, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=self.env,
                limit=MAX_LINE,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("websocket: cannot run %s: %s", self.argv[0], exc)
            sock.close()
            return
        try:
            sock.setblocking(False)
            await loop.connect_accepted_socket(lambda: self.side, sock)
        except OSError:
            sock.close()
            self.client_gone()
        if rest and not self.gone:
            self.from_client(rest)
        pump = loop.create_task(self.pump_stdout())
        watch = loop.create_task(self._watch())
        WEBSOCKETS.active += 1
        WEBSOCKETS.total += 1
        try:
            await self.done
        except asyncio.CancelledError:
            self._close(1001, "server shutting down")  # the loop is ending (SIGTERM)
            raise
        finally:
            WEBSOCKETS.active -= 1
            watch.cancel()
            await self._end_process()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            t = self.side.transport
            if t is not None:
                t.close()

    async def _end_process(self) -> None:
        """As v1: stdin closed (done), SIGINT, SIGKILL a second later if still running."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), KILL_AFTER)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()


def resolve(argv: tuple[str, ...], search_path: str | None = None) -> str | None:
    """The command's file as exec would find it (on the server's PATH), or None."""
    import shutil

    cmd = argv[0]
    if os.sep in cmd:
        return cmd if os.access(cmd, os.X_OK) and os.path.isfile(cmd) else None
    return shutil.which(cmd, path=search_path)
