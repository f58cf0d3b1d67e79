"""The output path of a server connection: responses turned into write jobs, and the jobs
written to the socket in order (send(), or a head plus sendfile(2) of a file range).

OutputPath holds the queue of jobs: a job the socket cannot take at once waits for
writability (loop.add_writer on the socket the server owns); a small whole response goes out
in one send without a job; a remembered response (meshkit.web.respcache) is answered here.
ResponseWriter turns a Response into jobs: bytes, a file body, a streamed body (chunked, or
plain under a known length), a 101 that hands the socket over. Both are bases of
meshkit.web.connection.Connection, which owns the state these paths read and change; they
are separate classes only to keep each part readable, and share one object so that the hot
path pays no extra call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from meshkit.web import http1
from meshkit.web.connstate import PARTS, ConnState, Event
from meshkit.web.message import FileBody, Handler, Request, Response
from meshkit.web.reqbody import RequestBody
from meshkit.web.respcache import ZERO_COPY_FROM, CachedResponse, ResponseCache
from meshkit.web.sendfile import SEND_AGAIN, SEND_DONE

log = logging.getLogger("meshkit.web")

_FILE_BUDGET = 8 << 20  # file bytes per send before yielding to the loop
_SMALL_BODY = 65536  # bytes bodies up to this size go out in one send with the head

# What a connection's deadline means when it passes (the timer's own record: the state says
# what the connection does, this says which of its waits the deadline was set for).
DL_NONE = 0
DL_FIRST = 1  # fresh connection, nothing received: close
DL_HEAD = 2  # partial request head: 408 and close
DL_IDLE = 3  # keep-alive idle: close
DL_BODY = 4  # request body bytes awaited: close
DL_LINGER = 5  # lingering close: close

# states as plain module constants: the hot path compares them without an attribute lookup
_NEW = ConnState.NEW
_BODY = ConnState.BODY
_CLOSING_BODY = ConnState.CLOSING_BODY
_CLOSING = ConnState.CLOSING
_UPGRADED = ConnState.UPGRADED
_LAST_RESPONSE = Event.LAST_RESPONSE


class Job:
    """Bytes to write, or a head (in `data`) followed by a file range."""

    __slots__ = (
        "body_base",
        "close_after",
        "data",
        "fd",
        "file_left",
        "file_off",
        "finishes",
        "head_len",
        "off",
        "release",
        "request",
        "response",
        "sent",
        "upgrade",
    )

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.upgrade: Any = None  # a 101 head: hand the connection over once written
        self.off = 0
        self.fd = -1
        self.file_off = 0
        self.file_left = 0
        self.head_len = 0
        self.sent = 0
        self.body_base = 0
        self.finishes = False  # the last job of a response: call its completion
        self.close_after = False
        self.request: Request | None = None
        self.response: Response | None = None
        self.release: Any = None


class ServerSide(Protocol):
    """What a connection reads from its server (meshkit.web.server.HttpServer): settings
    that a reload may change, the coarse clock of the timeout sweep, the response cache."""

    _handler: Handler
    _header_limit: int
    _max_fields: int
    _max_field_line: int
    _header_timeout: float
    _idle_timeout: float
    _read_timeout: float
    _write_timeout: float
    _max_discard: int
    _caching: bool
    _cache: ResponseCache
    _shutting: bool
    _now: float
    _h2c: bool

    def _conn_closed(self, conn: Any) -> None: ...

    def _take_h2c(self, conn: Any, data: bytes) -> None: ...


class OutputPath:
    """Writing jobs to the socket, in order; the fields every part of a connection shares."""

    __slots__ = PARTS  # fields: Connection's (set by its __init__, declared here for the parts)
    _server: ServerSide
    _loop: asyncio.AbstractEventLoop
    _sock: socket.socket
    _fd: int
    _send_bytes: Any
    _send_file: Any
    _scheme: str  # "http": plain, sendfile(2) reaches the socket; "https": TLS
    _remote_addr: str
    _remote_port: int
    _local_addr: str
    _local_port: int
    _state: ConnState
    _body: RequestBody | None
    _out: deque[Job]
    _streaming: bool
    _stream_task: asyncio.Task[None] | None
    _drain: asyncio.Future[None] | None
    _reading: bool
    _writing: bool
    _deferred: deque[Any]  # requests waiting for their turn at the handler (Pipeline)
    _deadline: float
    _dkind: int
    _write_since: float
    _upgrade_rest: bytes | None
    requests: int

    # -- provided by the connection

    def _fire(self, event: Event) -> int:
        raise NotImplementedError

    def _busy(self) -> bool:
        raise NotImplementedError

    def _queued(self) -> bool:
        raise NotImplementedError

    def _update_reading(self) -> None:
        raise NotImplementedError

    def _flush_queue(self) -> None:
        raise NotImplementedError

    def _went_idle(self) -> None:
        raise NotImplementedError

    def _close_gracefully(self, whole: bool = False) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def _hand_over(self, upgrade: Any) -> None:
        raise NotImplementedError

    def _write_response(self, request: Request, response: Response, keep: bool) -> None:
        raise NotImplementedError

    def _send_small(
        self,
        data: bytes,
        head_len: int,
        request: Request,
        response: Response,
        keep: bool,
        file_body: FileBody | None = None,
    ) -> None:
        """A whole small response: one send, and a job only if the socket cannot take it."""
        if not self._out and self._state < _UPGRADED:
            try:
                sent, state = self._send_bytes(self._fd, data, 0)
            except OSError:
                sent, state = 0, -1
            if state == SEND_DONE:
                if file_body is not None and file_body.release is not None:
                    _release(file_body)
                if request.on_complete:
                    _complete(request, response, sent - head_len)
                if not keep:
                    self._close_gracefully()
                return
        else:
            sent = state = 0
        job = Job(data)
        job.head_len = head_len
        job.off = job.sent = sent
        if file_body is not None:
            job.release = file_body.release
        job.finishes = True
        job.request = request
        job.response = response
        if not keep:
            job.close_after = True
            self._fire(_LAST_RESPONSE)
        if state == -1:
            self._job_done(job, False)
            self._abort()
        elif self._out or self._state >= _UPGRADED:
            self._emit(job)
        else:
            self._out.append(job)
            self._write_since = self._loop.time()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)
            if self._queued():
                self._update_reading()

    def _emit(self, job: Job) -> None:
        if self._state >= _UPGRADED:
            self._job_done(job, False)
            return
        if self._out:
            self._out.append(job)
            return
        state = self._write_job(job)
        if state == SEND_DONE:
            self._job_done(job, True)
        elif state == SEND_AGAIN:
            self._out.append(job)
            self._write_since = self._loop.time()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)
            if self._queued():
                self._update_reading()
        else:
            self._job_done(job, False)
            self._abort()

    def _write_job(self, job: Job) -> int:
        """Write what the socket takes: SEND_DONE, SEND_AGAIN, or -1 (failed: close)."""
        try:
            if job.fd < 0:
                sent, state = self._send_bytes(self._fd, job.data, job.off)
                job.off += sent
                job.sent += sent
                return int(state)
            head = job.data[job.off :] if job.off else job.data
            want = job.file_left if job.file_left <= _FILE_BUDGET else _FILE_BUDGET
            sent, state = self._send_file(self._fd, head, job.fd, job.file_off, want)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.debug("send to %s:%s failed: %s", self._remote_addr, self._remote_port, exc)
            return -1
        job.sent += sent
        head_part = min(sent, len(head))
        job.off += head_part
        file_part = sent - head_part
        job.file_off += file_part
        job.file_left -= file_part
        if state == SEND_DONE:
            return SEND_DONE if job.file_left == 0 else SEND_AGAIN
        if state == SEND_AGAIN:
            return SEND_AGAIN
        log.warning(
            "file shrank while sending it to %s:%s; closing the connection",
            self._remote_addr,
            self._remote_port,
        )
        return -1

    def _on_writable(self) -> None:
        out = self._out
        while out:
            job = out[0]
            state = self._write_job(job)
            if state == SEND_DONE:
                out.popleft()
                self._job_done(job, True)
                if self._state >= _UPGRADED:
                    return
            elif state == SEND_AGAIN:
                self._write_since = self._loop.time()
                return
            else:
                out.popleft()
                self._job_done(job, False)
                self._abort()
                return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._deferred:
            self._flush_queue()  # the next waiting request may go to the handler now
            return
        self._update_reading()
        if not self._busy():
            self._went_idle()

    def _job_done(self, job: Job, ok: bool) -> None:
        if job.release is not None:
            release, job.release = job.release, None
            try:
                release()
            except Exception:
                log.exception("releasing a file body failed")
        if job.finishes and job.request is not None and job.response is not None:
            body_sent = job.body_base + max(0, job.sent - job.head_len)
            _complete(job.request, job.response, body_sent)
        if job.upgrade is not None:
            upgrade, job.upgrade = job.upgrade, None
            if ok and self._state == _CLOSING:
                self._hand_over(upgrade)
            return
        if ok and (
            job.close_after
            or (job.finishes and _CLOSING_BODY <= self._state <= _CLOSING and not self._busy())
        ):
            self._close_gracefully()

    def _answer_cached(self, hit: CachedResponse) -> None:
        """Answer the request head just read with a remembered response (checked valid);
        the entry's on_complete callbacks (if any) get a copy of its request with this
        connection's addresses and this start time. (The compiled lane, _lane.pxi, does the
        same for an entry without callbacks and calls the two methods below for the rest.)"""
        now = time.time()
        second = int(now)
        wire = hit.wire if hit.second == second else hit.refresh(second)
        self.requests += 1
        if hit.closes or self._state == _NEW:  # (one that asked to close is the last read)
            self._fire(_LAST_RESPONSE if hit.closes else Event.CACHED)
        sent: int | None
        if hit.fd < 0 or (hit.body and self._scheme != "http"):
            try:
                sent, state = self._send_bytes(self._fd, wire, 0)
            except OSError:
                sent, state = None, SEND_DONE
            self._cached_bytes_sent(hit, wire, now, sent, state)
            return
        if hit.file_left <= _FILE_BUDGET:
            # head and file range at once (sendfile, zero-copy); a job only for what the
            # socket did not take
            try:
                sent, state = self._send_file(
                    self._fd, hit.head, hit.fd, hit.file_off, hit.file_left
                )
            except OSError:
                sent, state = None, SEND_DONE
        else:  # a large file: the job sends it in _FILE_BUDGET steps
            sent, state = -1, SEND_AGAIN
        self._cached_file_sent(hit, now, sent, state)

    def _cached_bytes_sent(
        self,
        hit: CachedResponse,
        wire: bytes,
        now: float,
        sent: int | None,
        state: int,
    ) -> None:
        """After `sent` bytes of a remembered response's wire bytes (None: the send failed):
        finish, or queue the rest for writability. `now`: when the head was read."""
        server = self._server
        head_len = len(wire) - len(hit.body)
        request = self._hit_request(hit, now, sent is not None and state == SEND_DONE)
        if sent is None:
            if request is not None:
                assert hit.response is not None
                _complete(request, hit.response, 0)
            self._abort()
            return
        if state == SEND_DONE:
            self._deadline = server._now + server._idle_timeout
            self._dkind = DL_IDLE
            if request is not None:
                assert hit.response is not None
                _complete(request, hit.response, sent - head_len)
            elif hit.replay is not None:
                hit.replay_log(
                    self._remote_addr, self._remote_port, self._local_addr, self._local_port, now
                )
            if hit.closes:
                self._close_gracefully(True)
            return
        job = Job(wire)
        job.close_after = hit.closes
        job.off = job.sent = sent
        job.head_len = head_len
        job.request = request
        job.response = hit.response
        job.finishes = True
        self._dkind = DL_NONE
        self._out.append(job)
        self._write_since = self._loop.time()
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _hit_request(self, hit: CachedResponse, now: float, whole: bool) -> Request | None:
        """The request copy an answer from `hit` calls its callbacks with; None without
        callbacks, or when the answer went out whole and the entry replays its log lines
        (CachedResponse.replay_log)."""
        if not hit.callbacks or (whole and hit.replay is not None):
            return None
        return hit.for_hit(
            self._remote_addr, self._remote_port, self._local_addr, self._local_port, now
        )

    def _cached_file_sent(
        self, hit: CachedResponse, now: float, sent: int | None, state: int
    ) -> None:
        """After `sent` bytes of a remembered head + file range (None: the send failed; -1:
        not tried, a large file): finish, or queue a job for the rest."""
        server = self._server
        head = hit.head
        request = self._hit_request(hit, now, sent is not None and sent >= 0 and state == SEND_DONE)
        if sent is None:
            if request is not None:
                assert hit.response is not None
                _complete(request, hit.response, 0)
            self._abort()
            return
        if sent >= 0 and state == SEND_DONE:
            self._deadline = server._now + server._idle_timeout
            self._dkind = DL_IDLE
            if request is not None:
                assert hit.response is not None
                _complete(request, hit.response, sent - len(head))
            elif hit.replay is not None:
                hit.replay_log(
                    self._remote_addr, self._remote_port, self._local_addr, self._local_port, now
                )
            if hit.closes:
                self._close_gracefully(True)
            return
        assert hit.acquire is not None
        hit.acquire()
        job = Job(head)
        job.close_after = hit.closes
        job.head_len = len(head)
        job.fd = hit.fd
        tried = sent >= 0
        sent = max(sent, 0)
        head_part = min(sent, len(head))
        job.off = head_part
        job.sent = sent
        job.file_off = hit.file_off + sent - head_part
        job.file_left = hit.file_left - (sent - head_part)
        job.release = hit.release
        job.request = request
        job.response = hit.response
        job.finishes = True
        self._dkind = DL_NONE
        if state != SEND_AGAIN:  # the file shrank under its Content-Length
            log.warning(
                "file shrank while sending it to %s:%s; closing the connection",
                self._remote_addr,
                self._remote_port,
            )
            self._job_done(job, False)
            self._abort()
            return
        if tried:  # the socket is full: wait until it is writable
            self._out.append(job)
            self._write_since = self._loop.time()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)
            return
        self._emit(job)
        if self._state < _UPGRADED and not self._busy():
            self._went_idle()


class ResponseWriter(OutputPath):
    """A Response turned into jobs: head and body, a file range, a stream, a 101."""

    __slots__ = PARTS

    def _write_response(self, request: Request, response: Response, keep: bool) -> None:
        body = response.body
        status = response.status
        method = request.method
        if keep and (
            response.close or self._server._shutting or _CLOSING_BODY <= self._state <= _CLOSING
        ):
            keep = False
        rbody = self._body
        if keep and rbody is not None and rbody.request is request:
            # The handler is done and the body is still coming: discard it, or close.
            keep = rbody.start_discarding()
            if keep and not self._reading:
                self._update_reading()  # reading may have paused on the unread body
        send_body = method != "HEAD" and status >= 200 and status != 204 and status != 304
        if response.upgrade is not None and status == 101:
            self._write_upgrade(request, response)
            return
        if type(body) is bytes:
            try:
                head = http1.cached_head(status, response.headers, len(body), keep, request.version)
            except ValueError:
                log.error("response to %s %s has CR/LF in a header", method, request.uri)
                self._write_response(request, _server_error(), False)
                return
            if send_body and body:
                if len(body) <= _SMALL_BODY:
                    self._send_small(head + body, len(head), request, response, keep)
                else:
                    self._emit(Job(head))
                    job = Job(body)
                    self._finish_response(job, request, response, keep)
            else:
                self._send_small(head, len(head), request, response, keep)
        elif isinstance(body, FileBody):
            try:
                head = http1.cached_head(
                    status, response.headers, body.length, keep, request.version
                )
            except ValueError:
                _release(body)
                log.error("response to %s %s has CR/LF in a header", method, request.uri)
                self._write_response(request, _server_error(), False)
                return
            if not send_body or body.length == 0:
                job = Job(head)
                job.head_len = len(head)
            elif body.data is not None and (
                body.fd < 0 or self._scheme != "http" or len(body.data) < ZERO_COPY_FROM
            ):
                # in memory: one send with the head (sendfile below for mid-sized bodies on
                # plain connections, which saves copying them twice)
                if len(body.data) <= _SMALL_BODY:
                    self._send_small(head + body.data, len(head), request, response, keep, body)
                    return
                job = Job(head + body.data)
                job.head_len = len(head)
            else:
                job = Job(head)
                job.head_len = len(head)
                job.fd = body.fd
                job.file_off = body.offset
                job.file_left = body.length
            job.release = body.release
            self._finish_response(job, request, response, keep)
        elif isinstance(body, bytes | bytearray | memoryview):
            response.body = bytes(body)
            self._write_response(request, response, keep)
        else:
            self._start_stream(request, response, body, keep, send_body)

    def _write_upgrade(self, request: Request, response: Response) -> None:
        """A 101 with a taker: write the head (with Connection/Upgrade), then hand over."""
        # (under TLS the taker gets a plain socket bridged to the TLS one: lifecycle's
        # _hand_over and meshkit.web.tlssock.bridge)
        if self._upgrade_rest is None:
            # the request did not ask to upgrade (or the parser went on reading HTTP)
            log.error(
                "handler answered 101 to %s %s, which asked for no upgrade",
                request.method,
                request.uri,
            )
            self._write_response(request, _bad_gateway(), False)
            return
        upgrade = request.headers.get("Upgrade") or ""
        headers = response.headers.copy()
        wanted = headers.get("Upgrade") or upgrade
        headers.remove("Upgrade")
        try:
            head = http1.serialize_head(101, headers, content_length=None, keep_alive=True)
        except ValueError:
            log.error("response to %s %s has CR/LF in a header", request.method, request.uri)
            self._write_response(request, _server_error(), False)
            return
        extra = f"Connection: Upgrade\r\nUpgrade: {wanted}\r\n\r\n".encode("latin-1", "replace")
        job = Job(head[:-2] + extra)
        job.head_len = len(job.data)
        job.upgrade = response.upgrade
        job.finishes = True
        job.request = request
        job.response = response
        self._emit(job)

    def _finish_response(self, job: Job, request: Request, response: Response, keep: bool) -> None:
        job.finishes = True
        job.request = request
        job.response = response
        if not keep:
            job.close_after = True
            self._fire(_LAST_RESPONSE)
        self._emit(job)

    def _start_stream(
        self,
        request: Request,
        response: Response,
        body: AsyncIterator[bytes],
        keep: bool,
        send_body: bool,
    ) -> None:
        headers = response.headers
        # A stream that knows its length (an int `content_length` attribute on the body, as
        # the proxy's streamed bodies have) goes out plain under that Content-Length; any
        # other stream is chunked, whatever Content-Length a handler set.
        length = getattr(body, "content_length", None) if send_body else None
        if type(length) is int and length >= 0:
            chunked = False
            headers = headers.copy()
            headers.set("Content-Length", str(length))
        else:
            length = None
            chunked = send_body and request.version == "1.1"
            if send_body and not chunked:
                keep = False  # HTTP/1.0: the body ends when the connection does
            if send_body:
                headers = headers.copy()
                headers.remove("Content-Length")
        head = http1.serialize_head(
            response.status,
            headers,
            content_length=None,
            chunked=chunked,
            keep_alive=keep,
            version=request.version,
        )
        if not keep:
            self._fire(_LAST_RESPONSE)
        if not send_body:
            _discard_body(body)
            job = Job(head)
            job.head_len = len(head)
            self._finish_response(job, request, response, keep)
            return
        self._streaming = True
        self._emit(Job(head))
        self._stream_task = self._loop.create_task(
            self._stream(request, response, body, chunked, keep, length)
        )

    async def _stream(
        self,
        request: Request,
        response: Response,
        body: AsyncIterator[bytes],
        chunked: bool,
        keep: bool,
        length: int | None = None,
    ) -> None:
        sent = 0
        ok = False
        try:
            async for chunk in body:
                if self._state >= _UPGRADED:
                    break
                if not chunk:
                    continue
                data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else bytes(chunk)
                sent += len(chunk)
                if length is not None and sent > length:
                    break  # longer than its Content-Length: cut off (closes below)
                self._emit(Job(data))
                if self._out:
                    await self._drained()
            else:
                ok = length is None or sent == length
        except asyncio.CancelledError:
            if self._state < _UPGRADED:
                raise
            # cancelled by _abort: the body is closed below, the request completed
        except Exception:
            if self._state < _UPGRADED:
                log.exception("response body of %s %s failed", request.method, request.uri)
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None and not ok:
                with contextlib.suppress(Exception):
                    await aclose()
        self._streaming = False
        self._stream_task = None
        if self._state >= _UPGRADED:
            _complete(request, response, sent)
            return
        if not ok:
            # The client cannot tell a cut-off chunked body from a whole one otherwise.
            _complete(request, response, sent)
            self._abort()
            return
        job = Job(b"0\r\n\r\n" if chunked else b"")
        job.body_base = sent
        job.head_len = len(job.data)
        self._finish_response(job, request, response, keep)
        self._flush_queue()

    async def _drained(self) -> None:
        if not self._out or self._state >= _UPGRADED:
            return
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()
        await self._drain


def _cancel(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    """Cancel a handler's Future at once, a task of ours after its first step: a task
    cancelled before it ever ran never runs its coroutine, so the `finally` that closes a
    streamed body (or the handler's own clean-up) would never run either."""
    if isinstance(task, asyncio.Task):
        loop.call_soon(task.cancel)
    else:
        task.cancel()


_DISCARDING: set[asyncio.Task[None]] = set()  # strong references to _abandon tasks


def _discard_body(body: Any) -> None:
    """Let go of the body of a response that will not be written: a file body is released,
    a streamed one closed (which closes the upstream connection of a proxied response)."""
    if isinstance(body, FileBody):
        _release(body)
    elif not isinstance(body, bytes | bytearray | memoryview) and (
        hasattr(body, "__anext__") or hasattr(body, "aclose")
    ):
        task = asyncio.get_running_loop().create_task(_abandon(body))
        _DISCARDING.add(task)
        task.add_done_callback(_DISCARDING.discard)


async def _abandon(body: Any) -> None:
    """Close a streamed body nobody will read. aclose() alone is not enough: an async
    generator that was never started ignores it (its `finally` never runs), which is what
    the proxy's Stream is built on, so its upstream connection would stay open until the
    upstream closes it. Start the body, stop it at its first wait, then aclose() it."""
    anext = getattr(body, "__anext__", None)
    if anext is not None:
        step: asyncio.Future[Any] | None
        try:
            step = asyncio.ensure_future(anext())
        except Exception:
            step = None
        if step is not None:
            await asyncio.sleep(0)  # the step runs up to its first wait (or its end)
            if not step.done():
                step.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await step
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _release(body: FileBody) -> None:
    if body.release is not None:
        try:
            body.release()
        except Exception:
            log.exception("releasing a file body failed")


def _complete(request: Request, response: Response, body_sent: int) -> None:
    for callback in request.on_complete:
        try:
            callback(request, response, body_sent)
        except Exception:
            log.exception("on_complete callback failed for %s %s", request.method, request.uri)


def _bad_gateway() -> Response:
    return Response.error(502)


def _server_error() -> Response:
    return Response.error(500)


def _too_large() -> Response:
    response = Response.error(413)
    response.close = True
    return response
