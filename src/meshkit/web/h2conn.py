"""HTTP/2 over TLS (h2, chosen by ALPN): one connection, an I/O shell around a sans-IO engine
that does the framing, HPACK, SETTINGS, flow-control accounting and stream states. Two
engines: libnghttp2 (meshkit._h2ng, the compiled one; its connection is meshkit.web.h2ng's
NgH2Connection, which H2Connection(...) returns when the engine is built and allowed: see
load_engine) and python-hyper's `h2` (this class: the pure-Python twin). This module reads
and writes the TLS socket (meshkit.web.tlssock), turns each stream into a Request for the
same handlers as HTTP/1.1, and writes Responses back as HEADERS and DATA within the peer's
flow-control windows.

- Requests: the path goes through the same canonical parsing as HTTP/1.1
  (http1.parse_target), so matchers and the file server see one form; the head limits are the
  server's (fields, field line, total), answered with 431 on that stream; `cookie` fields are
  joined as RFC 9113 8.2.3 says; `Host` comes from `:authority`; version "2.0" (`{proto}` is
  HTTP/2.0). Bodies are read through H2Body, which returns flow-control credit as the handler
  reads (so a slow handler slows its client down, not the server's memory).
- Responses: bytes, files (read with pread in 64 KiB pieces: no sendfile under TLS) and
  streams, sent round-robin across streams as the windows allow; HEAD, 204 and 304 get HEADERS
  only. Trailers a client sends are ignored.
- Limits: MAX_STREAMS concurrent streams (more are refused with RST_STREAM REFUSED_STREAM);
  MAX_HEADER_LIST bytes of header list (431; a block past _HPACK_CAP is a connection error);
  rapid reset (CVE-2023-44487) and SETTINGS/PING floods: each has a token bucket of
  FLOOD_BURST events refilled at FLOOD_RATE a second (at most 200 in any 10 s); a client
  past it gets GOAWAY ENHANCE_YOUR_CALM and the connection closes.
- Shutdown and reload: GOAWAY (graceful: streams already open finish, newer ones are refused),
  then the final GOAWAY and close once they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from meshkit.web import http1
from meshkit.web.h2hpack import MemoDecoder, MemoEncoder
from meshkit.web.h2push import MAX_STREAMS, H2Pushing
from meshkit.web.h2remember import H2Remembering, request_key
from meshkit.web.h2send import OUT_HIGH, H2Sending
from meshkit.web.h2stream import (
    FLOOD_BURST,
    FLOOD_RATE,
    Bucket,
    H2Body,
    Stream,
    answer_for,
)
from meshkit.web.http1 import HttpError
from meshkit.web.message import (
    EmptyBody,
    Headers,
    Request,
    Response,
)
from meshkit.web.output import _discard_body, _server_error

__all__ = [
    "FLOOD_BURST",
    "FLOOD_RATE",
    "MAX_HEADER_LIST",
    "MAX_STREAMS",
    "H2Connection",
    "PlainH2Socket",
    "engine",
    "load_engine",
    "split_request",
]

log = logging.getLogger("meshkit.web")

_H2_STREAM_CAP = 1000  # h2's own bound (a connection error); we refuse past MAX_STREAMS
MAX_HEADER_LIST = 65536  # SETTINGS_MAX_HEADER_LIST_SIZE (bytes as RFC 9113 counts them)
_HPACK_CAP = 4 * MAX_HEADER_LIST  # a header block past this is a connection error
_WINDOW = 1 << 20  # our connection receive window (streams keep the 64 KiB default)
_RECV = 65536
_LINGER = 1.0  # seconds to read and drop input after the last GOAWAY, before closing
_ENGINE: list[Any] = []  # [module or None]: meshkit._h2ng once looked for


def load_engine() -> Any:
    """The compiled engine (meshkit._h2ng, libnghttp2), or None: not built (no nghttp2
    headers at build time), MESHKIT_NO_EXTENSIONS=1, or MESHKIT_H2_ENGINE=h2."""
    if not _ENGINE:
        mod = None
        off = os.environ.get("MESHKIT_NO_EXTENSIONS", "") not in ("", "0")
        if not off and os.environ.get("MESHKIT_H2_ENGINE", "") != "h2":
            try:
                mod = importlib.import_module("meshkit._h2ng")
            except ImportError:
                mod = None
        _ENGINE.append(mod)
    return _ENGINE[0]


def engine() -> str:
    """Which engine frames HTTP/2 in this process: "nghttp2" or "h2" (see load_engine)."""
    return "nghttp2" if load_engine() is not None else "h2"


def split_request(raw: list[tuple[bytes, bytes]], line_max: int) -> tuple[Any, ...]:
    """A request's header list split: (method, path, authority, fields as (str, str) with
    cookie fields joined last (RFC 9113 8.2.3), size as RFC 9113 counts it, whether a field
    line is past line_max, the first `host` field's value or None, the first
    `content-length`'s or None). meshkit._h2ng has the compiled twin."""
    method = path = authority = b""
    items: list[tuple[str, str]] = []
    cookies: list[str] = []
    host: str | None = None
    clen: str | None = None
    size = 0
    long_line = False
    for name, value in raw:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if len(name) + len(value) + 2 > line_max:
            long_line = True
        sval = value.decode("latin-1")
        if name == b"cookie":
            cookies.append(sval)
            continue
        if name == b"host":
            host = sval if host is None else host
        elif name == b"content-length":
            clen = sval if clen is None else clen
        items.append((name.decode("latin-1"), sval))
    if cookies:
        items.append(("cookie", "; ".join(cookies)))
    return method, path, authority, items, size, long_line, host, clen


class H2Connection(H2Sending, H2Remembering, H2Pushing):
    """One HTTP/2 connection on a TLS socket the server owns (see the module)."""

    _split = staticmethod(split_request)
    _presplit = False  # NgH2Connection's requests arrive split (meshkit._h2ng)

    def __init__(
        self,
        server: Any,
        loop: asyncio.AbstractEventLoop,
        tsock: Any,
        remote: tuple[str, int],
        local: tuple[str, int],
        scheme: str = "https",
    ) -> None:
        self._server = server
        self._scheme = scheme  # "http" for h2c (cleartext, prior knowledge)
        self._loop = loop
        self._sock = tsock
        self._fd = tsock.fileno()
        self._remote = remote
        self._local = local
        # every request's copy of the addresses, made once
        self._addrs = (str(remote[0]), int(remote[1]), str(local[0]), int(local[1]))
        self._streams: dict[int, Stream] = {}
        self._sending: dict[int, Stream] = {}  # streams with bytes to frame, in turn
        self._wbuf = b""
        self._reading = False
        self._writing = False
        self._write_since = 0.0
        self._closing = False  # final GOAWAY written: input is discarded until close
        self._closed = False
        self._goaway_at: int | None = None  # last stream id of a graceful GOAWAY sent
        self._resets = Bucket()
        self._settings = Bucket()
        self._pings = Bucket()
        self._active_since = loop.time()
        self._seen_frames = False
        self._key: bytes | None = None  # the request key while its handler may remember
        self.requests = 0
        self._init_engine()

    def __new__(cls, *args: Any, **kwargs: Any) -> H2Connection:
        # the server makes H2Connection(...): with the compiled engine built and allowed,
        # that is meshkit.web.h2ng's NgH2Connection (libnghttp2), else this class (h2)
        if cls is H2Connection and engine() == "nghttp2":
            from meshkit.web.h2ng import NgH2Connection

            return object.__new__(NgH2Connection)
        return object.__new__(cls)

    def _init_engine(self) -> None:
        self._h2 = _hyper_connection()

    # ------------------------------------------------------------------ start, read

    @property
    def read_timeout(self) -> float:
        return float(self._server._read_timeout)

    def start(self) -> None:
        conn = self._h2
        conn.initiate_connection()  # our SETTINGS, as advertised above
        # What h2 enforces itself: past these it is a connection error; we refuse streams
        # past MAX_STREAMS (RST_STREAM) and answer 431 past MAX_HEADER_LIST before that.
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: _H2_STREAM_CAP,
                SettingCodes.MAX_HEADER_LIST_SIZE: _HPACK_CAP,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.decoder.max_header_list_size = _HPACK_CAP
        conn.increment_flow_control_window(_WINDOW - 65535)
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)
        self._write()

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort()
            return
        if not data:
            self._abort() if self._closing or self._streams else self._close()
            return
        if not self._closing:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self._seen_frames = True
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the error's code
            log.debug("HTTP/2 protocol error from %s: %s", self._remote[0], exc)
            self._fail_streams()
            self._write()
            self._close()
            return
        for event in events:
            if self._closing:
                break
            self._on_event(event)
        if not self._closing:
            self._pump()
            self._write()
            self._update_reading()

    def _on_event(self, ev: Any) -> None:
        t = type(ev)
        if t is h2.events.RequestReceived:
            ended = ev.stream_ended is not None
            key = request_key(ev.headers) if ended and self._server._caching else None
            self._request(ev.stream_id, ev.headers, key, ended)
        elif t is h2.events.DataReceived:
            st = self._streams.get(ev.stream_id)
            flow = ev.flow_controlled_length or 0
            if st is not None and st.body is not None and not st.body.done:
                st.body.feed(ev.data)
                pad = flow - len(ev.data)
                if pad > 0:
                    self._consumed(ev.stream_id, pad)
            elif flow:
                self._consumed(ev.stream_id, flow)
        elif t is h2.events.StreamEnded:
            st = self._streams.get(ev.stream_id)
            if st is not None and st.body is not None:
                st.body.finish()
        elif t is h2.events.StreamReset:
            if not self._resets.take():
                self._calm("rapid reset")
                return
            st = self._streams.get(ev.stream_id)
            if st is not None:
                self._drop(st, ConnectionResetError("the client reset the stream"))
        elif t is h2.events.RemoteSettingsChanged:
            if not self._settings.take():
                self._calm("SETTINGS flood")
        elif t is h2.events.PingReceived:
            if not self._pings.take():
                self._calm("PING flood")
        elif t is h2.events.ConnectionTerminated:
            # the client's GOAWAY: h2 sends nothing more on this connection
            self._fail_streams()
            self._close()
        # WindowUpdated, PriorityUpdated, TrailersReceived, SettingsAcknowledged: the pump
        # that follows every read covers what they change

    def _update_reading(self) -> None:
        want = not self._closed and not (self._writing and len(self._wbuf) >= OUT_HIGH)
        if want and not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
        elif not want and self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    # ------------------------------------------------------------------ requests

    def _on_request(self, sid: int, raw: Any, ended: bool) -> None:
        # raw: the header list as h2 decoded it, or split_request's tuple (_presplit)
        if self._goaway_at is not None and sid > self._goaway_at:
            self._rst(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self._streams) >= MAX_STREAMS:
            self._refuse(sid)
            return
        server = self._server
        # nghttp2 hands the list over split already (meshkit._h2ng splits while decoding)
        method, path, authority, items, size, long_line, host_field, cl = (
            raw if self._presplit else self._split(raw, server._max_field_line)
        )
        status = 431 if long_line else 0
        if len(items) > server._max_fields or size > min(MAX_HEADER_LIST, server._header_limit):
            status = 431
        mname = method.decode("latin-1")
        host = authority.decode("latin-1")
        headers = Headers(items)
        if host:
            if host_field is None:
                headers.add("host", host)
        else:
            host = host_field or ""
        # (h2 and nghttp2 check a Content-Length against the DATA)
        length = int(cl) if cl is not None and cl.isdigit() else None
        body = None if ended else H2Body(self, sid, length)
        st: Stream
        target_path = query = ""
        if not status:
            try:
                if mname == "CONNECT":
                    raise HttpError(405, "CONNECT over HTTP/2")
                target = http1.parse_target(path, mname)
                target_path, query = target.path, target.query
            except HttpError as exc:
                status = exc.status
        request = Request(
            mname,
            path.decode("latin-1"),
            target_path,
            query,
            "2.0",
            headers,
            body if body is not None else EmptyBody(),
            self._scheme,
            host,
            *self._addrs,
            time.time(),
        )
        st = Stream(sid, request, body)
        self._streams[sid] = st
        self._active_since = server._now
        self.requests += 1
        if status:
            self._respond(st, Response.error(status))
            return
        self._dispatch(st)

    def _refuse(self, sid: int) -> None:
        self._rst(sid, ErrorCodes.REFUSED_STREAM)
        if not self._resets.take():  # a client that keeps opening past the limit
            self._calm("streams past the limit")

    def _rst(self, sid: int, code: ErrorCodes) -> None:
        """RST_STREAM (the engine's primitive; NgH2Connection has its own)."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(sid, code)

    def _result_done(self, st: Stream, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or st.closed:
            if not fut.cancelled() and fut.exception() is None:
                result = fut.result()
                if isinstance(result, Response):
                    _discard_body(result.body)
            return
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            if isinstance(result, Response):
                response = result
            else:
                log.error("handler returned %s, not a Response", type(result).__name__)
                response = _server_error()
        else:
            response = answer_for(exc, st.request)
        self._respond(st, response)
        self._pump()
        self._write()

    # ------------------------------------------------------------------ responses

    def _calm(self, what: str) -> None:
        log.warning(
            "HTTP/2 client %s:%s cut off (%s): GOAWAY ENHANCE_YOUR_CALM",
            self._remote[0],
            self._remote[1],
            what,
        )
        self._fail_streams()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._close()

    def _fail_streams(self) -> None:
        for st in list(self._streams.values()):
            self._drop(st, ConnectionResetError("connection closed"))

    def begin_shutdown(self) -> None:
        """Graceful GOAWAY: open streams finish, new ones are refused; then close."""
        if self._closing or self._closed:
            return
        if self._goaway_at is None:
            last = self._h2.highest_inbound_stream_id
            self._goaway_at = last
            self._write()  # what h2 has queued goes first
            frame = GoAwayFrame(0, last_stream_id=last, error_code=ErrorCodes.NO_ERROR)
            self._wbuf += frame.serialize()
            if not self._writing:
                self._send()
        self._maybe_done()

    reloaded = begin_shutdown  # a reload: clients reconnect to the new configuration

    def _maybe_done(self) -> None:
        if not self._streams:
            self._active_since = self._server._now  # idle from the last stream's end
        if self._goaway_at is not None and not self._streams and not self._closing:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=self._goaway_at)
            self._close()

    def _close(self) -> None:
        """Write what is queued (the final GOAWAY), then close after a short linger."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._write()
        if not self._writing:
            self._finish_close()

    def _finish_close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        # keep reading (and dropping) for a moment, so the client reads the GOAWAY rather
        # than a reset
        self._loop.call_later(_LINGER, self._abort)

    def check_deadline(self, now: float) -> None:
        if self._closed:
            return
        server = self._server
        if self._writing:
            if now - self._write_since > server._write_timeout:
                self._abort()
            return
        if self._streams:
            self._active_since = now
            return
        limit = server._idle_timeout if self._seen_frames else server._header_timeout
        if now - self._active_since > limit:
            if self._closing:
                self._abort()
            else:
                self.begin_shutdown()

    def _abort(self) -> None:
        if self._closed:
            return
        self._fail_streams()
        self._closed = True
        self._closing = True
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._server._conn_closed(self)


def _hyper_connection() -> h2.connection.H2Connection:
    """python-hyper's h2 for a server connection, with the settings we advertise."""
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # response_fields() already makes response fields lower-case, trimmed and free of CR,
        # LF and NUL, and drops connection-specific ones: h2's own pass over them costs a
        # fifth of a small response (inbound fields are still validated by h2)
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        # h2's inbound normalization only joins cookie fields, which _on_request does
        normalize_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    # HPACK that remembers repeated blocks (meshkit.web.h2hpack), before any is coded
    conn.encoder = MemoEncoder()
    conn.decoder = MemoDecoder(conn.DEFAULT_MAX_HEADER_LIST_SIZE, config)
    values = {
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        SettingCodes.ENABLE_PUSH: 0,
    }
    conn.local_settings = h2.settings.Settings(client=False, initial_values=values)
    return conn


class PlainH2Socket:
    """A plain TCP socket with TlsSocket's face, for h2c (HTTP/2 without TLS): recv, the
    send path's send_bytes, shutdown, close."""

    __slots__ = ("_send", "_sock")

    def __init__(self, sock: socket.socket, send_bytes: Any) -> None:
        self._sock = sock
        self._send = send_bytes

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, n: int) -> bytes:
        return self._sock.recv(n)

    def send_bytes(self, fd: int, data: Any, off: int) -> tuple[int, int]:
        result: tuple[int, int] = self._send(fd, data, off)
        return result

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()
