"""Remembered answers over HTTP/2 (meshkit.web.respcache, for both engines of
meshkit.web.h2conn): a request whose header list was answered before, from files unchanged
since, gets the remembered response without the handlers, as an HTTP/1.1 request head does.

The key is the decoded header list (KEY_PREFIX, then each field as name NUL value LF; field
values hold no NUL, CR or LF, so one key is one list, and no HTTP/1.1 head looks like one),
made by meshkit._h2ng in C or by request_key here. A response is remembered when the handler
answered at once with validators (only static routes keep them; see meshkit.web.router) and
did not ask for the pusher (a page that pushes must go through the `push` directive every
time). H2Connection inherits this; the attributes below are H2Connection's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from meshkit.web import h2rules
from meshkit.web.h2push import MAX_STREAMS
from meshkit.web.h2stream import Stream, _asked, _current, answer_for
from meshkit.web.message import EmptyBody, Headers, Request, Response
from meshkit.web.respcache import MAX_HEAD, CachedResponse, ResponseCache

__all__ = ["KEY_PREFIX", "H2Remembering", "request_key"]

KEY_PREFIX = b"h2\0"

# Remembered responses' HEADERS fields, by request key, for the second of their Date; an
# entry is known by its own Headers object (kept here rather than the entry and its body)
_HIT_FIELDS: dict[bytes, tuple[Headers, int, list[tuple[bytes, bytes]]]] = {}
_HIT_FIELDS_MAX = 512
# The request of a stream answered from a remembered response without callbacks: nothing
# reads it (no on_complete to call, no handler), but a Stream has one
_HIT_REQUEST = Request(
    "GET", "/", "/", "", "2.0", Headers([]), EmptyBody(), "https", "", "", 0, "", 0, 0.0
)


def request_key(raw: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key of a header list (see the module), None past MAX_HEAD bytes; meshkit._h2ng
    makes the same in C."""
    key = KEY_PREFIX + b"".join([n + b"\0" + v + b"\n" for n, v in raw])
    return key if len(key) <= MAX_HEAD else None


class H2Remembering:
    """Request entry with the response cache, for H2Connection (see the module)."""

    _server: Any
    _loop: asyncio.AbstractEventLoop
    _streams: dict[int, Stream]
    _goaway_at: int | None
    _remote: tuple[str, int]
    _local: tuple[str, int]
    _active_since: float
    _key: bytes | None
    _presplit: bool
    requests: int

    _split: Any  # split_request (h2conn)

    # H2Connection's and the engines'
    def _on_request(self, sid: int, raw: Any, ended: bool) -> None:
        raise NotImplementedError

    def _respond(self, st: Stream, response: Response) -> None:
        raise NotImplementedError

    def _result_done(self, st: Stream, fut: asyncio.Future[Any]) -> None:
        raise NotImplementedError

    def _fields(self, status: int, headers: Headers, length: int | None) -> list[Any]:
        raise NotImplementedError

    def _send_hit(self, st: Stream, fields: list[Any], hit: CachedResponse) -> None:
        """HEADERS and the remembered body (bytes or file range) on st's stream."""
        raise NotImplementedError

    def _request(self, sid: int, raw: Any, key: bytes | None, ended: bool) -> None:
        """A request's header list arrived (raw: as h2 decoded it, or split by nghttp2's
        engine; key: its request_key, or None)."""
        server = self._server
        if ended and key is not None and server._caching:
            hit = server._cache.entries.get(key)
            if hit is not None and self._goaway_at is None and len(self._streams) < MAX_STREAMS:
                if hit.valid():
                    self._answer_hit(sid, key, hit)
                    return
                server._cache.drop(key)
            self._key = key
        if ended and h2rules.compiled(server._handler):
            parts = raw if self._presplit else self._split(raw, server._max_field_line)
            if h2rules.answer(self, sid, parts):
                return
        try:
            self._on_request(sid, raw, ended)
        finally:
            self._key = None

    def _dispatch(self, st: Stream) -> None:
        """Run the handler for the stream's request; respond now or when it is done; a
        response that may be remembered is (see the module)."""
        request = st.request
        key, self._key = self._key, None  # (a pushed request dispatched inside has none)
        # h2stream's set_pusher and pusher_calls, without their calls (every request)
        asked = _asked[0]
        _current[0] = (self, st.id, request.host)
        try:
            result = self._server._handler(request)
        except Exception as exc:
            result = answer_for(exc, request)
        finally:
            _current[0] = None
        if isinstance(result, Response):
            if key is not None and result.validators is not None and asked == _asked[0]:
                self._remember(key, result, request)
            self._respond(st, result)
        else:
            self._later(st, result)

    def _remember(self, key: bytes, result: Response, request: Request) -> None:
        """Keep a response the handler answered at once with validators, by request key."""
        cand = ResponseCache.make(result, "2.0", request.method, request)
        if cand is not None:
            self._server._cache.put(key, cand)

    def _later(self, st: Stream, result: Any) -> None:
        """A handler's awaitable result: the response follows when it is done."""
        if isinstance(result, asyncio.Future):
            st.task = result
            result.add_done_callback(functools.partial(self._result_done, st))
        else:
            task = st.task = self._loop.create_task(_await(result))
            task.add_done_callback(functools.partial(self._result_done, st))

    def _answer_hit(self, sid: int, key: bytes, hit: CachedResponse) -> None:
        """Answer from a remembered response: its fields (with this second's Date), its
        bytes or file range; its on_complete callbacks (an access log) get a copy of its
        request with this connection's addresses."""
        now = time.time()
        request = _HIT_REQUEST
        if hit.callbacks:
            request = hit.for_hit(
                str(self._remote[0]),
                int(self._remote[1]),
                str(self._local[0]),
                int(self._local[1]),
                now,
            )
        st = Stream(sid, request, None)
        if hit.callbacks:
            st.response = hit.response
        self._streams[sid] = st
        self._active_since = self._server._now
        self.requests += 1
        second = int(now)
        memo = _HIT_FIELDS.get(key)
        if memo is None or memo[0] is not hit.headers or memo[1] != second:
            if len(_HIT_FIELDS) >= _HIT_FIELDS_MAX:
                _HIT_FIELDS.clear()
            fields = self._fields(hit.status, hit.headers, hit.length)
            _HIT_FIELDS[key] = (hit.headers, second, fields)
        else:
            fields = memo[2]
        self._send_hit(st, fields, hit)


async def _await(result: Any) -> Any:
    return await result
