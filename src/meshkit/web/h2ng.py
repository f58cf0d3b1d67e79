"""HTTP/2 framed by libnghttp2 (meshkit._h2ng): the same connection as meshkit.web.h2conn
(requests, dispatch, limits, GOAWAY, deadlines, push), with nghttp2's C session in place of
python-hyper's `h2` state machine. H2Connection(...) makes one of these when the extension is
built with nghttp2 and allowed (meshkit.web.h2conn.engine); `h2` stays the pure-Python twin.

What differs from the h2 engine, and why:
- nghttp2 calls back per event (no event objects): a request's header list arrives split
  (split_request's tuple, made in C while HPACK decodes it); DATA, the client's
  END_STREAM, resets and control frames each call a method below (the `_ng_*` names); a
  stream's close after its END_STREAM went out is not reported (_ng_sent_end was).
- Remembered answers (meshkit.web.h2remember) get their request key made in C.
- A request without a body takes meshkit._h2ng's compiled stream path (_h2stream.pxi): the
  Request and Stream built, the handler called, a bytes or file answer submitted and a plain
  stream let go in C, what _request, _on_request, _dispatch, _respond and _ng_sent_end do
  for it; everything else (a remembered key, 431, CONNECT, a body, an awaitable result,
  HEAD/1xx/204/304, an upgrade, an access log's on_complete) goes to those methods.
- Responses are submitted whole: HEADERS plus a body Source (bytes, a file range read with
  pread(2) into nghttp2's frame buffer, or the chunks a streamed body adds). nghttp2 frames
  DATA within the flow-control windows and takes turns between streams itself, so there is
  no pump; a response is finished when its END_STREAM is framed.
- nghttp2 refuses streams past SETTINGS_MAX_CONCURRENT_STREAMS itself (RST_STREAM
  REFUSED_STREAM, metered like the h2 engine's refusals), ignores new streams after a GOAWAY
  (RFC 9113 6.8) instead of resetting them, and answers a malformed request (RFC 9113 8.1.1)
  with RST_STREAM PROTOCOL_ERROR on that stream where h2 ends the connection.
- nghttp2 must not be re-entered from its own callbacks: writes and closes asked for while it
  runs wait until it returns (_in_engine).
"""

from __future__ import annotations

import logging
from typing import Any

from h2.errors import ErrorCodes

from meshkit.web import h2rules, http1
from meshkit.web.h2conn import (
    _H2_STREAM_CAP,
    _HPACK_CAP,
    _WINDOW,
    MAX_HEADER_LIST,
    H2Connection,
    load_engine,
)
from meshkit.web.h2push import MAX_STREAMS
from meshkit.web.h2send import OUT_HIGH, STREAM_BUF, release_file
from meshkit.web.h2stream import Stream, _asked, _current, answer_for
from meshkit.web.http1 import HttpError
from meshkit.web.message import EmptyBody, FileBody, Headers, Request, Response
from meshkit.web.output import _discard_body
from meshkit.web.respcache import CachedResponse

__all__ = ["NgH2Connection"]

log = logging.getLogger("meshkit.web")

_STREAM_PATH: list[bool] = []  # [True] once meshkit._h2ng.set_stream_path was called

# nghttp2's fatal errors that are a client's abuse (answered GOAWAY ENHANCE_YOUR_CALM)
_CALM_ERRORS = {
    -904: "frames nghttp2 must answer (PING, SETTINGS) flooded in",  # NGHTTP2_ERR_FLOODED
    -905: "a header block in too many CONTINUATION frames",  # NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
}


class NgH2Connection(H2Connection):
    """One HTTP/2 connection framed by nghttp2 (see the module)."""

    _ng: Any  # meshkit._h2ng.Session
    _presplit = True  # requests arrive in split_request's form, split while decoded
    # requests without a body go through meshkit._h2ng's compiled stream path (the Request,
    # the handler, then _respond), the methods below and H2Connection's for anything else
    _ng_fast = True

    def _init_engine(self) -> None:
        mod = load_engine()
        if not _STREAM_PATH:
            # the compiled stream path's classes and limits (meshkit._h2ng imports nothing
            # of meshkit.web)
            mod.set_stream_path(
                Request,
                Headers,
                EmptyBody,
                Stream,
                Response,
                FileBody,
                http1.parse_target,
                HttpError,
                answer_for,
                _current,
                _asked,
                MAX_STREAMS,
                MAX_HEADER_LIST,
            )
            # a compiled site's streams: the rule table first (web/h2rules.py)
            mod.set_rules_path(h2rules.compiled, h2rules.answer)
            _STREAM_PATH.append(True)
        self._mod = mod
        self._Source = mod.Source
        # response_fields with this second's Date, made in C: no Python frame per response
        self._fields = mod.response_fields_now  # type: ignore[method-assign]
        self._ng = mod.Session(
            self,
            MAX_STREAMS,
            _H2_STREAM_CAP,
            MAX_HEADER_LIST,
            _HPACK_CAP,
            _WINDOW,
            self._server._max_field_line,
        )
        self._in_engine = False
        self._close_pending = False

    def start(self) -> None:
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)
        self._write()  # our SETTINGS and the connection's WINDOW_UPDATE

    def data_received(self, data: bytes) -> None:
        self._seen_frames = True
        self._in_engine = True
        try:
            rv = self._ng.receive(data)
        except Exception:
            log.exception("HTTP/2 connection from %s failed", self._remote[0])
            self._ng.terminate(ErrorCodes.INTERNAL_ERROR)
            self._fail_streams()
            self._close_pending = True
            rv = 0
        finally:
            self._in_engine = False
        if rv < 0 and not self._closing:
            # nghttp2 stops at a fatal error without a GOAWAY of its own: ours says why
            if rv in _CALM_ERRORS:
                self._calm(_CALM_ERRORS[rv])
            else:
                log.debug("HTTP/2 error from %s: nghttp2 %d", self._remote[0], rv)
                self._ng.terminate(ErrorCodes.PROTOCOL_ERROR)
                self._fail_streams()
                self._close_pending = True
        self._after_engine()
        if not self._closing:
            self._update_reading()

    def _after_engine(self) -> None:
        """Writes and closes asked for while nghttp2 ran, and the end of the session."""
        if self._closed:
            return
        self._write()
        if not self._closing and not self._ng.alive:
            self._fail_streams()  # nghttp2 ended the session (its GOAWAY is written)
            self._close_pending = True
        if self._close_pending:
            self._close_pending = False
            self._close()

    # ------------------------------------------------------------------ nghttp2's calls

    _ng_request = H2Connection._request

    def _send_hit(self, st: Stream, fields: list[Any], hit: CachedResponse) -> None:
        """A remembered response (meshkit.web.h2remember): HEADERS and its body Source."""
        src = None
        if hit.body:
            src = self._Source.of_bytes(hit.body)
        elif hit.fd >= 0 and hit.file_left and hit.acquire is not None:
            hit.acquire()  # the file stays open while this stream reads it
            st.release = hit.release
            src = self._Source.of_file(hit.fd, hit.file_off, hit.file_left)
        if self._ng.respond(st.id, fields, src) != 0:
            self._drop(st, None)
            return
        st.src = src

    def _ng_data(self, sid: int, data: bytes) -> None:
        st = self._streams.get(sid)
        if st is not None and st.body is not None and not st.body.done:
            st.body.feed(data)
        else:
            self._ng.consume(sid, len(data))

    def _ng_end(self, sid: int) -> None:
        st = self._streams.get(sid)
        if st is not None and st.body is not None:
            st.body.finish()

    def _ng_reset(self, sid: int) -> None:
        if not self._resets.take():
            self._calm("rapid reset")
        # the stream's close follows (_ng_closed)

    def _ng_closed(self, sid: int, sent: int) -> None:
        st = self._streams.get(sid)
        if st is not None:
            st.sent = sent
            self._drop(st, ConnectionResetError("the stream was reset"))

    def _ng_sent_end(self, sid: int, sent: int) -> None:
        st = self._streams.get(sid)
        if st is None or st.closed:
            return
        st.sent = sent
        if st.body is not None or st.waiter is not None or st.request.on_complete:
            self._finish(st)
            return
        # the common end (no request body, no producer waiting, no on_complete such as an
        # access log): what _finish, _let_go and _maybe_done do then, without their frames
        st.closed = True
        del self._streams[sid]
        self._sending.pop(sid, None)
        release_file(st)
        if not self._streams:
            self._active_since = self._server._now
            if self._goaway_at is not None:
                self._maybe_done()

    def _ng_control(self, kind: int) -> None:
        mod = self._mod
        if kind == mod.CONTROL_SETTINGS:
            if not self._settings.take():
                self._calm("SETTINGS flood")
        elif kind == mod.CONTROL_PING:
            if not self._pings.take():
                self._calm("PING flood")
        elif kind == mod.CONTROL_REFUSED:
            if not self._resets.take():  # a client that keeps opening past the limit
                self._calm("streams past the limit")
        elif kind == mod.CONTROL_BIG_HEAD:
            self._calm(f"header block past {_HPACK_CAP} bytes")
        elif kind == mod.CONTROL_GOAWAY:
            # the client's GOAWAY: nothing more is sent on this connection
            self._fail_streams()
            self._ng.terminate(ErrorCodes.NO_ERROR)
            self._close()

    # ------------------------------------------------------------------ engine primitives

    def _rst(self, sid: int, code: ErrorCodes) -> None:
        self._ng.reset(sid, code)

    def _consumed(self, sid: int, n: int) -> None:
        if n <= 0 or self._closing:
            return
        self._ng.consume(sid, n)
        if not self._writing:
            self._write()  # the WINDOW_UPDATE, when nghttp2 decided one is due

    def _push_enabled(self) -> bool:
        return bool(self._ng.push_enabled)

    def _promise(self, parent: int, head: list[tuple[bytes, bytes]]) -> int | None:
        sid: int = self._ng.push(parent, head)
        return sid if sid > 0 else None

    def _calm(self, what: str) -> None:
        log.warning(
            "HTTP/2 client %s:%s cut off (%s): GOAWAY ENHANCE_YOUR_CALM",
            self._remote[0],
            self._remote[1],
            what,
        )
        self._ng.terminate(ErrorCodes.ENHANCE_YOUR_CALM)
        self._fail_streams()
        self._close()

    def begin_shutdown(self) -> None:
        """Graceful GOAWAY: open streams finish, new ones are ignored; then close."""
        if self._closing or self._closed:
            return
        if self._goaway_at is None:
            last = self._goaway_at = int(self._ng.last_stream_id)
            self._ng.goaway(last, ErrorCodes.NO_ERROR)
            self._write()
        self._maybe_done()

    reloaded = begin_shutdown

    def _maybe_done(self) -> None:
        if not self._streams:
            self._active_since = self._server._now
        if self._goaway_at is not None and not self._streams and not self._closing:
            self._ng.terminate(ErrorCodes.NO_ERROR, self._goaway_at)
            self._close()

    def _close(self) -> None:
        if self._in_engine:
            self._close_pending = True  # after nghttp2 returns: the GOAWAY goes out first
            return
        super()._close()

    # ------------------------------------------------------------------ responses

    def _respond(self, st: Stream, response: Response) -> None:
        prepared = self._prepare(st, response)
        if prepared is None:
            return
        fields, body, send_body, length = prepared
        src = None
        if not send_body or length == 0:
            _discard_body(body)
        elif isinstance(body, bytes):
            src = self._Source.of_bytes(body)
        elif isinstance(body, bytearray | memoryview):
            src = self._Source.of_bytes(bytes(body))
        elif isinstance(body, FileBody):
            st.release = body.release
            if body.data is not None:
                src = self._Source.of_bytes(bytes(body.data))
            else:
                src = self._Source.of_file(body.fd, body.offset, body.length)
        else:
            src = self._Source()
        if self._ng.respond(st.id, fields, src) != 0:
            self._respond_failed(st, body)
            return
        st.src = src
        if src is not None and not src.eof:
            st.source = self._loop.create_task(self._pull(st, body, length))

    def _respond_failed(self, st: Stream, body: Any) -> None:
        """nghttp2 refused the response: the stream closed under us (meshkit._h2ng's
        stream path calls this too)."""
        _discard_body(body)
        self._drop(st, None)

    # the nghttp2 engine's ends of H2Sending._pull: the pieces go to the stream's Source

    def _add_piece(self, st: Stream, piece: bytes) -> None:
        st.src.add(piece)
        self._ng.resume(st.id, st.src)
        self._write()

    def _queued(self, st: Stream) -> int:
        queued: int = st.src.queued
        return queued

    def _end_pieces(self, st: Stream, ok: bool) -> None:
        self._sending.pop(st.id, None)
        if ok:
            src = st.src
            src.eof = True
            self._ng.resume(st.id, src)
            self._write()

    def _pump(self) -> None:
        """nghttp2 frames the bodies; what is left is waking producers that waited."""
        for st in list(self._sending.values()):
            w = st.waiter
            if st.closed or st.src is None:
                self._sending.pop(st.id, None)
            elif w is not None and st.src.queued <= STREAM_BUF // 2 and not w.done():
                w.set_result(None)

    # ------------------------------------------------------------------ writing

    def _write(self) -> None:
        if self._in_engine or self._closed:
            return
        while not self._writing:
            self._in_engine = True
            try:
                data = self._ng.send(OUT_HIGH)
            except Exception:
                log.exception("HTTP/2 connection to %s failed", self._remote[0])
                data = b""
                self._close_pending = True
            finally:
                self._in_engine = False
            if data:
                self._wbuf = self._wbuf + data if self._wbuf else data
            if not self._wbuf:
                break
            self._send()
            if self._closed or not data:
                break
        if self._sending:
            self._pump()
        if self._close_pending and not self._closed:
            self._close_pending = False
            self._close()
