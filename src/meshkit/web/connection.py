"""One client connection of the HTTP/1.1 server: reading and parsing.

Connection is the I/O shell around meshkit.web.connstate: every change of its ConnState goes
through `_fire` (the one transition table) and the actions it returns are carried out here
and in meshkit.web.lifecycle (deadlines, closing). It reads with recv() on the socket the
server owns, answers a request head seen before from the response cache
(meshkit.web.respcache) without the parser, feeds httptools otherwise and dispatches each
complete head (meshkit.web.pipeline); responses go out through meshkit.web.output.
Protocol decisions (framing, smuggling checks, keep-alive) are in meshkit.web.http1.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import Any

import httptools

from meshkit.web import headlane, http1, lane
from meshkit.web.connstate import (
    ABORT_IF_IDLE,
    CLOSE_IF_IDLE,
    FAIL_BODY,
    STEPS,
    STOP,
    ConnState,
    Event,
    IllegalTransition,
)
from meshkit.web.http1 import BODY_NONE, HttpError
from meshkit.web.lifecycle import Lifecycle
from meshkit.web.message import EmptyBody, Headers, Request, Response
from meshkit.web.output import (
    DL_FIRST,
    DL_HEAD,
    DL_NONE,
    ServerSide,
)
from meshkit.web.pipeline import Slot
from meshkit.web.reqbody import BODY_BUFFER, RequestBody
from meshkit.web.respcache import MAX_HEAD, CachedResponse, ResponseCache

__all__ = ["MAX_PIPELINE", "Connection"]

log = logging.getLogger("meshkit.web")

_RECV_SIZE = 65536
MAX_PIPELINE = 64  # responses waiting in order before reading pauses
_LINGER = 2.0  # seconds to discard input after a closing response
_LINGER_BYTES = 1 << 20

_NEW = ConnState.NEW
_IDLE = ConnState.IDLE
_HEAD = ConnState.HEAD
_BODY = ConnState.BODY
_CLOSING_BODY = ConnState.CLOSING_BODY
_LINGERING = ConnState.LINGERING
_UPGRADED = ConnState.UPGRADED
_CLOSED = ConnState.CLOSED
# the table's rows for the events of every request (see Lifecycle._fire), looked up inline
_ON_BEGIN = STEPS[Event.BEGIN]
_ON_HEAD_KEEP = STEPS[Event.HEAD_KEEP]
_ON_HEAD_LAST = STEPS[Event.HEAD_LAST]
_ON_MESSAGE_DONE = STEPS[Event.MESSAGE_DONE]

_METHODS: dict[bytes, str] = {}


def _method_name(raw: bytes) -> str:
    name = _METHODS.get(raw)
    if name is None:
        name = raw.decode("latin-1")
        if len(_METHODS) < 64:
            _METHODS[raw] = name
    return name


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the status is on the connection."""


class Connection(Lifecycle):
    """One client connection: its fields, reading and parsing (the rest is in its bases)."""

    # One per client connection, made per accept: slots (not a dict of 40-odd keys, past
    # the shared-key dict's limit) make it about half as costly to create and free.
    __slots__ = (
        "_awaited",
        "_began_in_feed",
        "_body",
        "_cand",
        "_deadline",
        "_deferred",
        "_dkind",
        "_drain",
        "_fd",
        "_feed_msgs",
        "_head_raw",
        "_headers",
        "_key",
        "_lane",
        "_linger_bytes",
        "_local_addr",
        "_local_port",
        "_loop",
        "_out",
        "_parser",
        "_queue",
        "_raw",
        "_reading",
        "_refuse",
        "_remote_addr",
        "_remote_port",
        "_scan",
        "_scheme",
        "_send_bytes",
        "_send_file",
        "_server",
        "_sock",
        "_start_time",
        "_state",
        "_stream_task",
        "_streaming",
        "_upgrade_rest",
        "_url",
        "_waiting_body",
        "_write_since",
        "_writing",
        "requests",
    )

    def __init__(
        self,
        server: ServerSide,
        loop: Any,
        send: Any,
        sock: socket.socket,
        remote: tuple[str, int],
        local: Any,
    ) -> None:
        self._server = server
        self._loop = loop
        self._scheme = "http"  # "https" on a TLS connection (the server sets it)
        self._sock = sock
        self._raw = sock  # the server sets the plain socket when `sock` is a TLS wrapper
        self._fd = sock.fileno()
        self._send_bytes = send.send_bytes
        self._send_file = send.send_head_and_file
        self._remote_addr = str(remote[0]) if remote else ""
        self._remote_port = int(remote[1]) if remote else 0
        self._local_addr = str(local[0]) if isinstance(local, tuple) else ""
        self._local_port = int(local[1]) if isinstance(local, tuple) else 0
        self._parser = httptools.HttpRequestParser(self)
        self._scan = headlane.SCAN  # the head lane's scanner, None when it is off
        self._state = _NEW
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._began_in_feed = False
        self._head_raw = 0
        self._refuse = 0  # status that a parser callback refused the request with
        self._start_time = 0.0
        self._body: RequestBody | None = None
        self._queue: deque[Slot] = deque()
        self._deferred: deque[Slot] = deque()
        self._awaited = 0
        self._out = deque()
        self._streaming = False
        self._stream_task = None
        self._drain = None
        self._reading = False
        self._writing = False
        self._linger_bytes = 0
        self._waiting_body: RequestBody | None = None
        self._deadline = loop.time() + server._header_timeout
        self._dkind = DL_FIRST
        self._write_since = 0.0
        self.requests = 0
        # the response cache (meshkit.web.respcache): the bytes of this read when they may
        # be one whole request head to remember, messages begun in this read, and the
        # response to remember once the read turns out to have held just that request
        self._key: bytes | None = None
        self._feed_msgs = 0
        self._cand: CachedResponse | None = None
        self._upgrade_rest: bytes | None = None  # set once the client asked to upgrade
        # the socket's reader: the compiled lane (meshkit.web.lane) on a plain socket when
        # it is built, else _on_readable, its twin (the lane refers to the connection: the
        # connection lets go of it once closed, so that neither waits for the cycle GC)
        self._lane = lane.make(self, server, sock)

    @property
    def state(self) -> ConnState:
        return self._state

    # ------------------------------------------------------------------ reading

    def _reader(self) -> Any:
        ln = self._lane
        return self._on_readable if ln is None else ln.on_readable

    def start(self) -> None:
        self._reading = True
        self._loop.add_reader(self._fd, self._reader())

    def _update_reading(self) -> None:
        state = self._state
        want = not (
            (state > _CLOSING_BODY and state != _LINGERING)
            or len(self._queue) >= MAX_PIPELINE
            or (self._body is not None and self._body.buffered >= BODY_BUFFER)
            or (self._out and self._queue)
        )
        if want and not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._reader())
        elif not want and self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort()
            return
        if not data:
            self._on_eof()
            return
        self._on_data(data)

    def _on_data(self, data: bytes) -> None:
        """Handle the bytes of one read (the compiled lane, meshkit.web.lane, calls this
        with every read it does not answer itself)."""
        state = self._state
        if state > _CLOSING_BODY:
            if state == _LINGERING:
                self._linger_bytes += len(data)
                if self._linger_bytes > _LINGER_BYTES:
                    self._abort()
            return
        server = self._server
        if state == _NEW and data[:4] == b"PRI " and server._h2c:
            server._take_h2c(self, data)  # the HTTP/2 preface (prior knowledge)
            return
        if (
            server._caching
            and state <= _IDLE
            and data[-4:] == b"\r\n\r\n"
            and len(data) <= MAX_HEAD
            and not (self._queue or self._out or self._streaming or server._shutting)
        ):
            # Between requests, and the read ends like a request head: maybe one answered
            # before, from a file that has not changed since.
            hit = server._cache.entries.get(data)
            if hit is not None:
                if hit.valid():
                    self._answer_cached(hit)
                    return
                server._cache.drop(data)
            self._key = data
        else:
            self._key = None
        self._feed_msgs = 0
        self._began_in_feed = False
        if self._scan is not None and state <= _IDLE:
            # bodyless requests whose whole head is in this read (meshkit.web.headlane)
            done = headlane.feed(self, data, _Refused)
            if done < 0 or done == len(data):
                cand, self._cand = self._cand, None
                if cand is not None:
                    self._remember(data, cand)
                return
            data = data[done:] if done else data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # CONNECT or an Upgrade: the rest is not HTTP/1.1. A handler may take the
            # connection over with a 101 (Response.upgrade), getting these bytes too.
            if self._state <= _CLOSING_BODY or self._state == ConnState.LAST:
                self._upgrade_rest = data[exc.args[0] :]
                if self._fire(Event.UPGRADE) & CLOSE_IF_IDLE and not self._busy():
                    self._close_gracefully()
                else:
                    self._update_reading()
            return
        except httptools.HttpParserError as exc:
            if self._state > _CLOSING_BODY:
                return  # stopped on purpose (_Refused), or closed from a callback
            status = self._refuse or 400
            if isinstance(exc, httptools.HttpParserCallbackError) and not self._refuse:
                # Not a refusal of ours: a bug in a callback. Say so, then answer 400.
                log.error("error in the HTTP parser callbacks: %s", exc)
            else:
                log.debug("bad request from %s:%s: %s", self._remote_addr, self._remote_port, exc)
            self._refuse_request(status)
            return
        finally:
            cand = self._cand
            if cand is not None:
                self._cand = None
                self._remember(data, cand)
        if self._state == _HEAD and not self._began_in_feed:
            # A head still incomplete after more reads: httptools holds its partial field
            # out of our sight, so count what arrives (the read it began in is not counted,
            # so the limit is overshot by at most one read).
            self._head_raw += len(data)
            if self._head_raw > self._server._header_limit:
                self._refuse_request(431)

    def _on_eof(self) -> None:
        state = self._state
        if state >= _LINGERING:
            self._abort()
            return
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        actions = self._fire(Event.EOF)
        body = self._body
        if actions & FAIL_BODY and body is not None:
            body.fail(ConnectionResetError("the client closed the connection mid-body"))
        if actions & ABORT_IF_IDLE and not self._busy():
            self._abort()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        step = _ON_BEGIN[self._state]
        if step is None:
            raise IllegalTransition(self._state, Event.BEGIN)
        self._state = step[0]
        self._feed_msgs += 1
        self._url = b""
        self._headers = []
        self._head_raw = 0
        self._began_in_feed = True
        self._start_time = time.time()
        self._deadline = self._server._now + self._server._header_timeout
        self._dkind = DL_HEAD

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url  # the target arrived in pieces
            if len(url) > self._server._header_limit:
                self._refuse = 414
                raise _Refused
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # The field count and each field line are checked here, as fields arrive, so that a
        # head of a huge number of small fields is refused after the first few hundred
        # rather than parsed whole (the total size is checked once the head is complete,
        # and for a head that spans reads by _on_readable). Trailer fields of a chunked
        # body (after the head) are ignored.
        if self._state != _HEAD:
            return
        headers = self._headers
        server = self._server
        if (
            len(headers) >= server._max_fields
            or len(name) + len(value) + 2 > server._max_field_line
        ):
            self._refuse = 431
            raise _Refused
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        server = self._server
        parser = self._parser
        try:
            version = parser.get_http_version()
            if version != "1.1" and version != "1.0":
                raise HttpError(505 if version[:1] >= "2" else 400, "HTTP version")
            method = _method_name(parser.get_method())
            items, host, keep, framing, size = http1.scan_head(self._headers, version)
            if size + len(self._url) > server._header_limit:
                raise HttpError(431, "request head too large")
            target = http1.parse_target(self._url, method)
        except HttpError as exc:
            self._refuse = exc.status
            raise _Refused from None
        self._head_done(method, version, items, host, keep, framing, target)

    def _head_done(
        self,
        method: str,
        version: str,
        items: list[tuple[str, str]],
        host: str,
        keep: bool,
        framing: http1.Framing,
        target: http1.Target,
    ) -> None:
        """Dispatch a request whose head was read (by httptools or by the head lane)."""
        self._headers = []
        # a request that does not keep the connection is its last: later ones are not read
        step = (_ON_HEAD_KEEP if keep else _ON_HEAD_LAST)[self._state]
        if step is None:
            raise IllegalTransition(self._state, Event.HEAD_KEEP if keep else Event.HEAD_LAST)
        self._state = step[0]
        if target.authority:
            host = target.authority
        if framing.kind == BODY_NONE:
            body: Any = EmptyBody()
            self._body = None
        else:
            body = self._body = RequestBody(self, framing)
        self._dkind = DL_NONE
        # positional (in Request's field order): half the cost of keywords, per request
        request = Request(
            method,
            self._url.decode("latin-1"),
            target.path,
            target.query,
            version,
            Headers(items),
            body,
            self._scheme,
            host,
            self._remote_addr,
            self._remote_port,
            self._local_addr,
            self._local_port,
            self._start_time,
        )
        if self._body is not None:
            self._body.request = request
        self.requests += 1
        if self._deferred or not self._may_dispatch():
            # An upstream exchange of this connection is pending while another response is
            # being written (or two are pending): this request waits its turn, so that a
            # pipelining client cannot fan out into many upstream connections at once.
            slot = Slot(request, keep)
            slot.deferred = True
            self._queue.append(slot)
            self._deferred.append(slot)
            if len(self._queue) >= MAX_PIPELINE:
                self._update_reading()
            return
        result = self._call_handler(request)
        if type(result) is Response or isinstance(result, Response):
            if (
                result.validators is not None
                and self._key is not None
                and self._feed_msgs == 1
                and framing.kind == BODY_NONE
            ):
                # maybe remembered, once the read turns out to hold just this request (with
                # its on_complete callbacks, e.g. an access log: only routes whose every
                # directive is static or replayable keep validators; see Router). A request
                # that closes (a new TLS handshake per request) is answered from it too.
                self._cand = ResponseCache.make(result, version, method, request, not keep)
            if not self._queue and not self._streaming:
                self._write_response(request, result, keep)
            else:
                slot = Slot(request, keep)
                slot.response = result
                self._queue.append(slot)
                self._update_reading()
            return
        slot = Slot(request, keep)
        self._queue.append(slot)
        if len(self._queue) >= MAX_PIPELINE:
            self._update_reading()
        self._await_result(slot, result)

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            body.feed(data)
            if self._waiting_body is body:
                self._deadline = self._loop.time() + self._server._read_timeout

    def on_message_complete(self) -> None:
        body = self._body
        if body is not None:
            body.finish()
            self._body = None
        step = _ON_MESSAGE_DONE[self._state]
        if step is None:
            raise IllegalTransition(self._state, Event.MESSAGE_DONE)
        self._state, actions = step
        if actions & STOP:
            # The connection closes after the responses in flight: stop parsing what follows.
            self._update_reading()
            if actions & CLOSE_IF_IDLE and not self._busy():
                self._close_gracefully()
            raise _Refused
        if not (self._queue or self._out or self._streaming):
            self._went_idle()


assert _CLOSED > _UPGRADED > _LINGERING  # the comparisons above rely on this order
