"""Responses remembered by the exact bytes of the request head that asked for them.

A static site answers the same request heads over and over (a client sends the same header
block request after request). When the file server's response depends on nothing but the
request head and a few files (Response.validators: the file served, the folder whose index
it is, the folder of precompressed siblings), the server keeps the response on the wire form
it had, keyed by the request head bytes, and answers a later request with the very same bytes
from the copy: after one os.stat per validator shows each file unchanged, and with the Date
header of the current second. Any difference (a changed file, a new head, a reload) goes the
whole way through the parser and the handlers again.

A site whose only per-request side effect is an access log (the `log` directive; see
meshkit.web.router.site_is_static) is remembered too: the entry keeps the request it was made
from and that request's on_complete callbacks, and each answer from the copy calls them with
a fresh copy of that request carrying the new client address, port and start time (the
request head bytes being the same, everything else about the request is too).

A body of ZERO_COPY_FROM bytes or more is kept twice: as bytes (for TLS connections, which
encrypt it anyway) and as a file range that plain connections send with sendfile(2) — the
file server's own open file, or for a body made in memory (a rendered Markdown page, a
template) a memfd written once. A write(2) of a 25 KB body copies it into the socket buffer
on every answer; sendfile hands the kernel the page references instead (for a body of that
size the copy was a fifth of the server's CPU time per request).

This module is the bookkeeping (no sockets): what is remembered, how it is checked, and the
bounds; meshkit.web.server decides when a request may be answered from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from meshkit.web import http1
from meshkit.web.message import FileBody, Headers, Request, Response, Validator

__all__ = ["MAX_BODY", "MAX_HEAD", "ZERO_COPY_FROM", "CachedResponse", "ResponseCache"]

MAX_HEAD = 4096  # request heads longer than this are not remembered
MAX_BODY = 65536  # in-memory bodies up to this size are remembered (files: any size)
# In-memory bodies from this size also get a file range for sendfile(2). Below it, one
# send(2) of head and body costs less than send + sendfile and the Python around them.
ZERO_COPY_FROM = 16384
_stat = os.stat
_MEMO_CLIENTS = 256  # clients whose log lines an entry keeps (CachedResponse.replay_log)


class MemFile:
    """A body made in memory, in a memfd written once, for sendfile(2): the fd closes when
    the last reference (the entry's own, and one per response sending it) is released."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1

    @classmethod
    def of(cls, data: bytes) -> MemFile | None:
        """data in a new memfd; None where memfds are missing or the write fails."""
        try:
            fd = os.memfd_create("meshkit-response", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        try:
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.pwrite(fd, view[done:], done)
        except OSError:
            os.close(fd)
            return None
        return cls(fd)

    def acquire(self) -> None:
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


class CachedResponse:
    """One remembered response: its head (re-serialised once per second for Date), its body
    (bytes, a file range sent with sendfile whose fd stays referenced while remembered, or
    both: see ZERO_COPY_FROM) and the files it depends on."""

    __slots__ = (
        "acquire",
        "body",
        "callbacks",
        "closes",
        "fd",
        "file_left",
        "file_off",
        "head",
        "headers",
        "length",
        "memfd",
        "memo",
        "memo_port",
        "release",
        "replay",
        "request",
        "response",
        "second",
        "size",
        "status",
        "validators",
        "vars",
        "version",
        "wire",
    )

    def __init__(
        self,
        status: int,
        headers: Headers,
        version: str,
        body: bytes,
        length: int,
        validators: tuple[Validator, ...],
        file: FileBody | MemFile | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.version = version
        self.body = body  # sent after the head (b"" for files, HEAD, 204, 304)
        self.length = length  # the Content-Length
        self.validators = validators
        self.fd = -1
        self.file_off = 0
        self.file_left = 0
        self.acquire: Callable[[], None] | None = None
        self.release: Callable[[], None] | None = None
        self.memfd = isinstance(file, MemFile)
        if isinstance(file, MemFile):  # its first reference is ours, dropped by close()
            self.fd = file.fd
            self.file_left = len(body)
            self.acquire = file.acquire
            self.release = file.release
        elif file is not None:
            # one reference of our own, dropped by close()
            assert file.acquire is not None
            file.acquire()
            self.fd = file.fd
            self.file_off = file.offset
            self.file_left = file.length
            self.acquire = file.acquire
            self.release = file.release
        # the answer to a request that asked to close (Connection: close, or HTTP/1.0
        # without keep-alive): its head says so, and the connection closes after it
        self.closes = False
        self.second = -1
        self.head = b""  # the head for `second`
        self.wire = b""  # head + body for `second`
        self.size = 2 * len(body) + 1024  # the body may be shared; the wire copy is not
        # Completion callbacks to call for each answer (see attach): the request the entry
        # was made from (never changed here), its vars as the handlers left them, and the
        # response as the callbacks see it (status and headers; no body).
        self.callbacks: tuple[Callable[[Request, Response, int], None], ...] = ()
        self.request: Request | None = None
        self.vars: dict[str, str] = {}
        self.response: Response | None = None
        # callbacks that can render their log lines without writing them (the access log:
        # meshkit.web.directives.log._Complete), when every callback can; the lines of the
        # last answer and what they depend on (client address, port, second)
        self.replay: tuple[Any, ...] | None = None
        # (client address, port or 0) -> (second, the lines of that second)
        self.memo: dict[tuple[str, int], tuple[int, tuple[tuple[Any, str], ...]]] = {}
        self.memo_port = False  # some line shows the client's port: part of the key

    def attach(self, request: Request, response: Response) -> None:
        """Keep `request`'s on_complete callbacks, to be called for every answer from this
        entry with a copy of the request made by for_hit (called before they first run, so
        that what they may set in request.vars is not copied)."""
        self.callbacks = tuple(request.on_complete)
        self.request = request
        self.vars = dict(request.vars)
        self.response = Response(response.status, response.headers, b"")
        self.size += 1024
        if all(getattr(cb, "replayable", False) is True for cb in self.callbacks):
            self.replay = self.callbacks
            self.memo_port = any(getattr(cb, "uses_port", True) for cb in self.callbacks)

    def replay_log(
        self, remote_addr: str, remote_port: int, server_addr: str, server_port: int, now: float
    ) -> None:
        """Write the log lines of one answer sent whole from an entry whose callbacks are
        all replayable: rendered for the first answer to this client address (and port,
        when a line shows it) in this second, the same strings after that (nothing else in
        them can differ)."""
        key = (remote_addr, remote_port if self.memo_port else 0)
        second = int(now)
        memo = self.memo
        got = memo.get(key)
        if got is None or got[0] != second:
            assert self.replay is not None and self.response is not None
            req = self.for_hit(remote_addr, remote_port, server_addr, server_port, now)
            sent = len(self.body) if self.fd < 0 else self.file_left
            lines: list[tuple[Any, str]] = []
            for cb in self.replay:
                lines.extend(cb.lines(req, self.response, sent, now))
            if len(memo) >= _MEMO_CLIENTS:
                memo.clear()
            got = memo[key] = (second, tuple(lines))
        for sink, line in got[1]:
            sink.write(line)

    def for_hit(
        self,
        remote_addr: str,
        remote_port: int,
        server_addr: str,
        server_port: int,
        start_time: float,
    ) -> Request:
        """A copy of the remembered request for one answer: the same head, this
        connection's addresses, this start time, fresh vars and the same callbacks."""
        r = self.request
        assert r is not None
        return Request(
            r.method,
            r.uri,
            r.path,
            r.query,
            r.version,
            r.headers,
            r.body,
            r.scheme,
            r.host,
            remote_addr,
            remote_port,
            server_addr,
            server_port,
            start_time,
            r.original_uri,
            dict(self.vars) if self.vars else {},
            list(self.callbacks),
        )

    def valid(self) -> bool:
        """Does every file the response depends on still stat the same?"""
        for path, ino, dev, size, mtime_ns, ctime_ns in self.validators:
            try:
                st = _stat(path)
            except (OSError, ValueError):
                return False
            if (
                st.st_mtime_ns != mtime_ns
                or st.st_size != size
                or st.st_ino != ino
                or st.st_dev != dev
                or st.st_ctime_ns != ctime_ns
            ):
                return False
        return True

    def refresh(self, second: int) -> bytes:
        """The wire bytes (head, then an in-memory body) with the Date of `second`."""
        head = http1.serialize_head(
            self.status,
            self.headers,
            content_length=self.length,
            keep_alive=not self.closes,
            version=self.version,
            date=http1.http_date(second),
        )
        self.head = head
        self.wire = head + self.body if self.body else head
        self.second = second
        return self.wire

    def close(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()

    def drop_file(self) -> int:
        """Forget the file range of an entry that keeps its bytes too (answered by send(2)
        from now on); the bytes of accounted size this frees (a memfd's pages)."""
        freed = self.file_left if self.memfd else 0
        self.close()
        self.fd = -1
        self.file_off = self.file_left = 0
        self.acquire = None
        self.memfd = False
        self.size -= freed
        return freed


class ResponseCache:
    """Request head bytes -> CachedResponse, bounded in entries, bytes and open files kept
    open by file-backed entries (oldest first out)."""

    def __init__(
        self, max_entries: int = 512, max_bytes: int = 32 << 20, max_files: int = 64
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.entries: dict[bytes, CachedResponse] = {}
        self.used = 0
        self.files = 0  # entries holding a file reference

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def make(
        response: Response,
        version: str,
        method: str,
        request: Request | None = None,
        close: bool = False,
    ) -> CachedResponse | None:
        """A CachedResponse for a response to a request of this version and method (one
        that keeps the connection, or with `close` one whose request asked to close it),
        or None when it cannot be remembered (no validators, a handler that closes, a
        streamed body, a large in-memory body, a status other than 200/206/301/304). When
        `request` has on_complete callbacks, the entry keeps them (CachedResponse.attach)."""
        entry = ResponseCache._make(response, version, method)
        if entry is not None:
            entry.closes = close
            if request is not None and request.on_complete:
                entry.attach(request, response)
        return entry

    @staticmethod
    def _make(response: Response, version: str, method: str) -> CachedResponse | None:
        validators = response.validators
        if validators is None or response.close:
            return None
        status = response.status
        # 301: the file server's canonical redirects (no body; validator the file or folder)
        if status != 200 and status != 206 and status != 304 and status != 301:
            return None
        body = response.body
        send_body = http1.body_allowed(status, method)
        headers = Headers(response.headers.items())
        file: FileBody | None = None
        if type(body) is bytes:
            data = body
        elif isinstance(body, FileBody):
            if body.data is None:
                if body.acquire is None or body.fd < 0:
                    return None
                if send_body and body.length:
                    return CachedResponse(
                        status, headers, version, b"", body.length, validators, body
                    )
                return CachedResponse(status, headers, version, b"", body.length, validators)
            data = body.data
            if len(data) != body.length:
                return None
            if body.acquire is not None and body.fd >= 0:
                file = body
        else:
            return None
        if len(data) > MAX_BODY:
            return None
        if not send_body:
            return CachedResponse(status, headers, version, b"", len(data), validators)
        if len(data) < ZERO_COPY_FROM:
            return CachedResponse(status, headers, version, data, len(data), validators)
        # both ways: bytes for TLS, a file range for sendfile on plain connections
        entry = CachedResponse(
            status, headers, version, data, len(data), validators, file or MemFile.of(data)
        )
        if entry.memfd:
            entry.size += len(data)  # the memfd's pages
        return entry

    def get(self, key: bytes) -> CachedResponse | None:
        return self.entries.get(key)

    def put(self, key: bytes, entry: CachedResponse) -> None:
        if len(key) > MAX_HEAD:
            entry.close()
            return
        self.drop(key)
        entries = self.entries
        entries[key] = entry
        self.used += entry.size + len(key)
        if entry.fd >= 0:
            self.files += 1
        while entries and (len(entries) > self.max_entries or self.used > self.max_bytes):
            self.drop(next(iter(entries)))
        if self.files > self.max_files:
            self._shed_files()

    def _shed_files(self) -> None:
        """Too many open files held: the oldest entries give theirs up, those that keep their
        bytes by forgetting only the file range (a busy site with many mid-sized pages keeps
        them all remembered), the others by going."""
        for key in list(self.entries):
            if self.files <= self.max_files:
                return
            e = self.entries[key]
            if e.fd < 0:
                continue
            if e.body:
                self.used -= e.drop_file()
                self.files -= 1
            else:
                self.drop(key)

    def drop(self, key: bytes) -> None:
        e = self.entries.pop(key, None)
        if e is not None:
            self.used -= e.size + len(key)
            if e.fd >= 0:
                self.files -= 1
            e.close()

    def clear(self) -> None:
        entries, self.entries = self.entries, {}
        self.used = self.files = 0
        for e in entries.values():
            e.close()
