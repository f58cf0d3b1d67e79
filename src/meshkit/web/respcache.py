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

This module is the bookkeeping (no sockets): what is remembered, how it is checked, and the
bounds; meshkit.web.server decides when a request may be answered from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from meshkit.web import http1
from meshkit.web.message import FileBody, Headers, Request, Response, Validator

__all__ = ["MAX_BODY", "MAX_HEAD", "CachedResponse", "ResponseCache"]

MAX_HEAD = 4096  # request heads longer than this are not remembered
MAX_BODY = 65536  # in-memory bodies up to this size are remembered (files: any size)
_stat = os.stat


class CachedResponse:
    """One remembered response: its head (re-serialised once per second for Date), its body
    (bytes, or a file range sent with sendfile whose fd stays referenced while remembered)
    and the files it depends on."""

    __slots__ = (
        "acquire",
        "body",
        "callbacks",
        "fd",
        "file_left",
        "file_off",
        "headers",
        "length",
        "release",
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
        file: FileBody | None = None,
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
        if file is not None:
            # one reference of our own, dropped by close()
            assert file.acquire is not None
            file.acquire()
            self.fd = file.fd
            self.file_off = file.offset
            self.file_left = file.length
            self.acquire = file.acquire
            self.release = file.release
        self.second = -1
        self.wire = b""  # head + body for `second`
        self.size = 2 * len(body) + 1024  # the body may be shared; the wire copy is not
        # Completion callbacks to call for each answer (see attach): the request the entry
        # was made from (never changed here), its vars as the handlers left them, and the
        # response as the callbacks see it (status and headers; no body).
        self.callbacks: tuple[Callable[[Request, Response, int], None], ...] = ()
        self.request: Request | None = None
        self.vars: dict[str, str] = {}
        self.response: Response | None = None

    def attach(self, request: Request, response: Response) -> None:
        """Keep `request`'s on_complete callbacks, to be called for every answer from this
        entry with a copy of the request made by for_hit (called before they first run, so
        that what they may set in request.vars is not copied)."""
        self.callbacks = tuple(request.on_complete)
        self.request = request
        self.vars = dict(request.vars)
        self.response = Response(response.status, response.headers, b"")
        self.size += 1024

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
            keep_alive=True,
            version=self.version,
            date=http1.http_date(second),
        )
        self.wire = head + self.body
        self.second = second
        return self.wire

    def close(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()


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
        response: Response, version: str, method: str, request: Request | None = None
    ) -> CachedResponse | None:
        """A CachedResponse for a keep-alive response to a request of this version and
        method, or None when it cannot be remembered (no validators, a streamed body, a
        large in-memory body, a status other than 200/206/304). When `request` has
        on_complete callbacks, the entry keeps them (CachedResponse.attach)."""
        entry = ResponseCache._make(response, version, method)
        if entry is not None and request is not None and request.on_complete:
            entry.attach(request, response)
        return entry

    @staticmethod
    def _make(response: Response, version: str, method: str) -> CachedResponse | None:
        validators = response.validators
        if validators is None or response.close:
            return None
        status = response.status
        if status != 200 and status != 206 and status != 304:
            return None
        body = response.body
        send_body = http1.body_allowed(status, method)
        headers = Headers(response.headers.items())
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
        else:
            return None
        if len(data) > MAX_BODY:
            return None
        return CachedResponse(
            status, headers, version, data if send_body else b"", len(data), validators
        )

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
        while entries and (
            len(entries) > self.max_entries
            or self.used > self.max_bytes
            or self.files > self.max_files
        ):
            self.drop(next(iter(entries)))

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
