"""The sending half of an HTTP/2 connection (meshkit.web.h2conn): a Response turned into
HEADERS and DATA for its stream, streams taking turns within the client's flow-control windows,
file bodies read in pieces (no sendfile over TLS), streamed bodies pulled with backpressure, and
the TLS socket's writes. H2Connection inherits it; the attributes below are H2Connection's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import h2.connection
import h2.exceptions
from h2.errors import ErrorCodes

from meshkit.web.h2stream import Stream, response_fields
from meshkit.web.message import FileBody, Response
from meshkit.web.output import _cancel, _complete, _discard_body, _server_error
from meshkit.web.respcache import CachedResponse
from meshkit.web.sendfile import SEND_AGAIN

__all__ = ["CHUNK", "OUT_HIGH", "STREAM_BUF", "H2Sending"]

log = logging.getLogger("meshkit.web")

CHUNK = 65536  # file bytes per pread
OUT_HIGH = 256 * 1024  # plaintext waiting for the socket before streams stop producing
STREAM_BUF = 256 * 1024  # bytes a streamed body may queue before its producer waits


def release_file(st: Stream) -> None:
    """Run a stream's file release once (its file body is done with), logging a failure."""
    release = st.release
    if release is not None:
        st.release = None
        try:
            release()
        except Exception:
            log.exception("releasing a file body failed")


class H2Sending:
    """Responses out, for H2Connection (which sets these attributes and defines the hooks)."""

    _server: Any
    _loop: asyncio.AbstractEventLoop
    _sock: Any
    _fd: int
    _h2: h2.connection.H2Connection
    _streams: dict[int, Stream]
    _sending: dict[int, Stream]
    _wbuf: bytes
    _writing: bool
    _write_since: float
    _closing: bool
    _closed: bool

    # response_fields; NgH2Connection's is the compiled twin
    _fields = staticmethod(response_fields)

    # hooks H2Connection defines
    def _update_reading(self) -> None:
        raise NotImplementedError

    def _maybe_done(self) -> None:
        raise NotImplementedError

    def _finish_close(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def _rst(self, sid: int, code: ErrorCodes) -> None:
        raise NotImplementedError

    def _prepare(self, st: Stream, response: Response) -> tuple[Any, Any, bool, int | None] | None:
        """The response's HEADERS fields, body, whether the body is sent and its length
        (both engines); None when nothing is to be sent (stream gone, or answered 500)."""
        st.response = response
        if st.closed:
            _discard_body(response.body)
            return None
        request = st.request
        status = response.status
        body = response.body
        if response.upgrade is not None or status == 101:
            _discard_body(body)
            response = st.response = Response.error(501)
            status, body = 501, response.body
        send_body = request.method != "HEAD" and status >= 200 and status not in (204, 304)
        length: int | None
        if isinstance(body, bytes | bytearray | memoryview):
            length = len(body)
        elif isinstance(body, FileBody):
            length = body.length
        else:
            cl = getattr(body, "content_length", None)
            length = cl if type(cl) is int and cl >= 0 else None
        try:
            fields = self._fields(status, response.headers, length)
        except ValueError:
            log.error("response to %s %s has CR/LF in a header", request.method, request.uri)
            _discard_body(body)
            self._respond(st, _server_error())
            return None
        return fields, body, send_body, length

    def _respond(self, st: Stream, response: Response) -> None:
        prepared = self._prepare(st, response)
        if prepared is None:
            return
        fields, body, send_body, length = prepared
        conn = self._h2
        try:
            if not send_body or length == 0:
                _discard_body(body)
                conn.send_headers(st.id, fields, end_stream=True)
                self._finish(st)
                return
            conn.send_headers(st.id, fields)
        except h2.exceptions.ProtocolError as exc:  # the stream closed under us
            log.debug("HTTP/2 stream %d: %s", st.id, exc)
            _discard_body(body)
            self._drop(st, None)
            return
        if isinstance(body, bytes | bytearray | memoryview):
            st.chunks.append(bytes(body))
            st.queued = len(body)
            st.eof = True
        elif isinstance(body, FileBody):
            st.release = body.release
            if body.data is not None:
                st.chunks.append(body.data)
                st.queued = len(body.data)
            else:
                st.file = [body.fd, body.offset, body.length]
            st.eof = True
        else:
            st.source = self._loop.create_task(self._pull(st, body, length))
        self._sending[st.id] = st

    def _send_hit(self, st: Stream, fields: list[Any], hit: CachedResponse) -> None:
        """A remembered response (meshkit.web.h2remember): HEADERS, then its bytes or file
        range through the pump."""
        acquire = hit.acquire
        file = hit.fd >= 0 and hit.file_left > 0 and acquire is not None
        try:
            self._h2.send_headers(st.id, fields, end_stream=not (hit.body or file))
        except h2.exceptions.ProtocolError:
            self._drop(st, None)
            return
        if hit.body:
            st.chunks.append(hit.body)
            st.queued = len(hit.body)
        elif file and acquire is not None:
            acquire()  # the file stays open while this stream reads it
            st.release = hit.release
            st.file = [hit.fd, hit.file_off, hit.file_left]
        else:
            self._finish(st)
            return
        st.eof = True
        self._sending[st.id] = st

    async def _pull(self, st: Stream, body: Any, length: int | None) -> None:
        """Queue a streamed response body's pieces (both engines: _add_piece), waiting while
        more than STREAM_BUF of it waits to be framed (the engine's _pump wakes st.waiter)."""
        total = 0
        ok = False
        try:
            async for chunk in body:
                if st.closed:
                    break
                if not chunk:
                    continue
                total += len(chunk)
                if length is not None and total > length:
                    break
                self._add_piece(st, bytes(chunk))
                while self._queued(st) > STREAM_BUF and not st.closed:
                    self._sending[st.id] = st
                    st.waiter = self._loop.create_future()
                    await st.waiter
            else:
                ok = length is None or total == length
        except asyncio.CancelledError:
            if not st.closed:
                raise
        except Exception:
            if not st.closed:
                log.exception("response body of %s %s failed", st.request.method, st.request.uri)
        finally:
            st.waiter = None
            aclose = getattr(body, "aclose", None)
            if aclose is not None and not ok:
                with contextlib.suppress(Exception):
                    await aclose()
        st.source = None
        if st.closed:
            return
        if not ok:
            self._reset(st.id, ErrorCodes.INTERNAL_ERROR)
        self._end_pieces(st, ok)

    # the h2 engine's ends of _pull (meshkit.web.h2ng's NgH2Connection has its own)

    def _add_piece(self, st: Stream, piece: bytes) -> None:
        st.chunks.append(piece)
        st.queued += len(piece)
        self._sending[st.id] = st
        self._pump()
        self._write()

    def _queued(self, st: Stream) -> int:
        return st.queued

    def _end_pieces(self, st: Stream, ok: bool) -> None:
        if ok:
            st.eof = True
            self._sending[st.id] = st
        self._pump()
        self._write()

    def _pump(self) -> None:
        """Frame queued response bytes, round-robin over the streams, within the windows."""
        conn = self._h2
        produced = 0
        while self._sending and not self._writing and not self._closing:
            progress = False
            for st in list(self._sending.values()):
                if st.closed:
                    self._sending.pop(st.id, None)
                    continue
                try:
                    window = conn.local_flow_control_window(st.id)
                except h2.exceptions.ProtocolError:
                    self._drop(st, None)
                    continue
                n = min(window, conn.max_outbound_frame_size)
                piece = b""
                if n > 0:
                    if not st.chunks and st.file is not None and not self._read_file(st):
                        continue
                    if st.chunks:
                        head = st.chunks[0]
                        if len(head) <= n:
                            piece = st.chunks.popleft()
                        else:
                            piece = head[:n]
                            st.chunks[0] = head[n:]
                        st.queued -= len(piece)
                last = st.eof and not st.chunks and st.file is None
                if piece or last:
                    try:
                        conn.send_data(st.id, piece, end_stream=last)
                    except h2.exceptions.ProtocolError:
                        self._drop(st, None)
                        continue
                    st.sent += len(piece)
                    produced += len(piece)
                    progress = True
                    w = st.waiter
                    if w is not None and st.queued <= STREAM_BUF // 2 and not w.done():
                        w.set_result(None)
                if last:
                    self._sending.pop(st.id, None)
                    self._finish(st)
                elif not st.chunks and st.file is None:
                    self._sending.pop(st.id, None)  # a stream waiting for its producer
            if not progress:
                break
            if produced >= OUT_HIGH:
                produced = 0
                self._write()

    def _read_file(self, st: Stream) -> bool:
        fd, off, left = st.file  # type: ignore[misc]
        try:
            chunk = os.pread(fd, min(left, CHUNK), off)
        except OSError:
            chunk = b""
        if not chunk:  # the file got shorter than its Content-Length
            self._reset(st.id, ErrorCodes.INTERNAL_ERROR)
            return False
        n = len(chunk)
        st.chunks.append(chunk)
        st.queued += n
        if left - n <= 0:
            st.file = None
        else:
            st.file = [fd, off + n, left - n]
        return True

    def _finish(self, st: Stream) -> None:
        """The response went out whole (framed: the bytes follow through _write)."""
        st.closed = True
        self._streams.pop(st.id, None)
        self._sending.pop(st.id, None)
        self._let_go(st)
        body = st.body
        if body is not None and not body.done:
            # the client is still sending a body nobody reads: stop it (RFC 9113 8.1)
            self._rst(st.id, ErrorCodes.NO_ERROR)
            body.fail(ConnectionResetError("response sent before the body was read"))
        if st.response is not None and st.request.on_complete:
            _complete(st.request, st.response, st.sent)
        self._maybe_done()

    def _let_go(self, st: Stream) -> None:
        body = st.body
        if body is not None and body.buffered:
            self._consumed(st.id, body.buffered)  # credit for what nobody will read
            body.buffered = 0
        release_file(st)
        st.file = None
        st.chunks.clear()
        w = st.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _drop(self, st: Stream, exc: BaseException | None) -> None:
        """The stream ended before its response did (a reset from either side)."""
        if st.closed:
            return
        st.closed = True
        self._streams.pop(st.id, None)
        self._sending.pop(st.id, None)
        if st.task is not None and not st.task.done():
            _cancel(self._loop, st.task)
        if st.source is not None and not st.source.done():
            _cancel(self._loop, st.source)
        if st.body is not None:
            st.body.fail(exc or ConnectionResetError("stream closed"))
        self._let_go(st)
        if st.response is not None and st.request.on_complete:
            _complete(st.request, st.response, st.sent)
        self._maybe_done()

    def _reset(self, sid: int, code: ErrorCodes) -> None:
        self._rst(sid, code)
        st = self._streams.get(sid)
        if st is not None:
            self._drop(st, ConnectionResetError("stream reset"))
        self._write()

    def _consumed(self, sid: int, n: int) -> None:
        if n <= 0 or self._closing:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self._h2.acknowledge_received_data(n, sid)
        if not self._writing:
            self._write()  # the WINDOW_UPDATE

    # ------------------------------------------------------------------ writing

    def _write(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._wbuf = self._wbuf + data if self._wbuf else data
        if self._writing or self._closed or not self._wbuf:
            return
        self._send()

    def _send(self) -> None:
        try:
            sent, status = self._sock.send_bytes(self._fd, self._wbuf, 0)
        except OSError:
            self._abort()
            return
        self._wbuf = self._wbuf[sent:] if sent < len(self._wbuf) else b""
        if status == SEND_AGAIN or self._wbuf:
            if not self._writing:
                self._writing = True
                self._write_since = self._loop.time()
                self._loop.add_writer(self._fd, self._on_writable)
                self._update_reading()
        elif self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
            self._update_reading()

    def _on_writable(self) -> None:
        self._write_since = self._loop.time()
        self._send()
        if not self._writing and not self._closed:
            if self._closing:
                self._finish_close()
                return
            self._pump()
            self._write()

    # ------------------------------------------------------------------ ending
