"""The HTTP request and response objects every part of `meshkit web` shares.

The server (meshkit.web.server) turns bytes into a Request and a Response back into bytes; the
handlers in between are plain callables with no I/O of their own beyond files:

    handler(request) -> Response | Awaitable[Response]

A handler answers synchronously whenever it can (static files, redirects, errors): the server
writes a Response it gets back at once, without a task, which is what keeps small requests fast.
Only handlers that must wait (reading a request body, proxying) return an awaitable. `then()`
lets a middleware post-process either kind without caring which it got.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

# Reason phrases for status lines and for the default error body "<code> <text>\n".
STATUS_TEXT: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
STATUS_TEXT.setdefault(418, "I'm a teapot")


def status_text(code: int) -> str:
    return STATUS_TEXT.get(code, "Unknown")


class Headers:
    """An ordered, case-insensitive multi-map of header fields.

    Names keep the spelling they were set with (what goes on the wire); lookups ignore case.
    Values are str (latin-1 on the wire).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or default."""
        low = name.lower()
        for k, v in self._items:
            if k.lower() == low:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self._items if k.lower() == low]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        low = name.lower()
        return any(k.lower() == low for k, _ in self._items)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def set(self, name: str, value: str) -> None:
        """Replace every field called `name` with one (kept at the first one's place)."""
        low = name.lower()
        items = self._items  # this object's own list (__init__ copies): changed in place
        for i, (k, _) in enumerate(items):
            if k.lower() == low:
                items[i] = (name, value)
                rest = items[i + 1 :]
                if any(k2.lower() == low for k2, _ in rest):
                    items[i + 1 :] = [kv for kv in rest if kv[0].lower() != low]
                return
        items.append((name, value))

    __setitem__ = set

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        low = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != low]

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self._items.append((name, value))
            return value
        return current

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        return Headers(self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class BodyTooLarge(Exception):
    """Reading the request body went past the limit set on it (answered with 413)."""


class Body(Protocol):
    """The request body as the server receives it; empty when the request has none.

    The server sends `100 Continue` the first time a handler reads a body whose request asked
    for it. A handler that never reads the body leaves the server to discard it.
    """

    limit: int | None  # bytes; reading past it raises BodyTooLarge (set by the limits directive)

    @property
    def length(self) -> int | None:
        """Content-Length, or None for a chunked body."""

    async def read(self, max_bytes: int = 65536) -> bytes:
        """The next piece of the body; b"" at its end."""

    async def read_all(self) -> bytes:
        """The whole body (within `limit`)."""


class EmptyBody:
    """The body of a request that has none (and a handy stand-in in handler tests)."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self.limit: int | None = None

    @property
    def length(self) -> int | None:
        return len(self._data)

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self.limit is not None and len(self._data) > self.limit:
            raise BodyTooLarge(self.limit)
        chunk, self._data = self._data[:max_bytes], self._data[max_bytes:]
        return chunk

    async def read_all(self) -> bytes:
        if self.limit is not None and len(self._data) > self.limit:
            raise BodyTooLarge(self.limit)
        data, self._data = self._data, b""
        return data


@dataclass(eq=False, slots=True)
class Request:
    """One parsed HTTP request, as handlers see it.

    `path` is the percent-decoded path and is what handlers match and rewrite; `uri` is the
    request-target as received (path and query, still encoded) and `original_uri` stays the
    received one after rewrites. `vars` holds what directives set for later ones and for
    placeholders ({user}, {upstream}, {rewrite_uri}...).
    """

    # meshkit.web.server builds requests with positional arguments: keep this order
    method: str
    uri: str
    path: str
    query: str = ""
    version: str = "1.1"
    headers: Headers = field(default_factory=Headers)
    body: Body = field(default_factory=EmptyBody)
    scheme: str = "http"
    host: str = ""  # the Host header (or the absolute-form authority), port included
    remote_addr: str = ""
    remote_port: int = 0
    server_addr: str = ""
    server_port: int = 0
    start_time: float = 0.0  # time.time() when the request line arrived
    original_uri: str = ""
    vars: dict[str, str] = field(default_factory=dict)
    # Called by the server once the response is written (or the connection failed while
    # writing it) with the request, the response and the body bytes actually sent.
    on_complete: list[Callable[[Request, Response, int], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.original_uri:
            self.original_uri = self.uri

    @property
    def hostonly(self) -> str:
        """The Host without its port (and IPv6 brackets kept)."""
        host = self.host
        if host.startswith("["):
            end = host.find("]")
            return host[: end + 1] if end >= 0 else host
        return host.rsplit(":", 1)[0] if ":" in host else host


@dataclass(eq=False, slots=True)
class FileBody:
    """A response body sent from a file with sendfile(2).

    `fd` stays owned by whoever opened it: the server calls `release()` (if set) once it has
    finished with the body, successful or not, and never closes the fd itself. `data` may hold
    the bytes [offset, offset+length) already read (small cached files), in which case the
    server writes headers and data in one send instead of calling sendfile. `size` is the file
    size the headers were computed from: if the file turns out shorter while sending, the
    server closes the connection rather than send a short body under a longer Content-Length.
    """

    fd: int
    offset: int
    length: int
    size: int
    data: bytes | None = None
    release: Callable[[], None] | None = None
    # Takes one more reference on the fd (each acquire() is balanced by a release()): lets
    # the server keep the fd open for a response it remembers (see Response.validators).
    acquire: Callable[[], None] | None = None


ResponseBody = bytes | FileBody | AsyncIterator[bytes]

# What a file-derived response depends on besides the request head: (path, st_ino, st_dev,
# st_size, st_mtime_ns, st_ctime_ns) per file or folder whose state decided it.
Validator = tuple[str, int, int, int, int, int]


@dataclass(eq=False, slots=True)
class Response:
    """What a handler answers.

    bytes and FileBody bodies get a Content-Length from the server (unless a handler set one);
    an async iterator is sent chunked (HTTP/1.1) or until close (HTTP/1.0). The server adds
    Date and Server and strips the body for HEAD, 204 and 304. `default_error` marks the
    plain "<code> <text>\\n" bodies made by `error()`, which the errors directive may replace.
    """

    status: int = 200
    headers: Headers = field(default_factory=Headers)
    body: ResponseBody = b""
    default_error: bool = False
    close: bool = False  # close the connection after this response
    # Set by the file server: the response is a function of the request head alone and of
    # the files named here, for as long as each still stats the same (os.stat of the path:
    # same inode, device, size, mtime_ns and ctime_ns). The server may then answer a later
    # request with the very same head bytes from a copy after re-checking these files, without
    # running the handlers again. Handlers that make a response depend on anything else (the
    # client address, the time) must not pass one with validators on; the Router clears them
    # for sites with such directives. Side effects are allowed only through
    # request.on_complete (the access log): the server replays those callbacks on each hit
    # with a per-hit copy of the request (see router.REPLAYABLE_DIRECTIVES).
    validators: tuple[Validator, ...] | None = None
    # For a 101 answer to an Upgrade request: once the head is written the server lets go of
    # the connection and calls this with the socket (now the callee's to close) and the bytes
    # the client sent after its request head. Connection/Upgrade headers are sent as given.
    upgrade: Callable[[socket.socket, bytes], Awaitable[None]] | None = None

    @classmethod
    def error(cls, status: int, headers: Headers | None = None) -> Response:
        """The default error page: `<code> <text>\\n` as text/plain."""
        h = headers if headers is not None else Headers()
        h.set("Content-Type", "text/plain; charset=utf-8")
        h.set("X-Content-Type-Options", "nosniff")
        return cls(
            status=status,
            headers=h,
            body=f"{status} {status_text(status)}\n".encode(),
            default_error=True,
        )

    @classmethod
    def text(
        cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8"
    ) -> Response:
        return cls(
            status=status, headers=Headers([("Content-Type", content_type)]), body=text.encode()
        )


HandlerResult = Response | Awaitable[Response]


class Handler(Protocol):
    def __call__(self, request: Request, /) -> HandlerResult: ...


def then(result: HandlerResult, fn: Callable[[Response], Response]) -> HandlerResult:
    """Apply `fn` to a handler's response, whether it came back at once or later."""
    if isinstance(result, Response):
        return fn(result)
    return _then_later(result, fn)


async def _then_later(result: Awaitable[Response], fn: Callable[[Response], Response]) -> Response:
    return fn(await result)


async def resolve(result: HandlerResult) -> Response:
    """Await a handler's result if it has to be awaited (for tests and async middleware)."""
    if inspect.isawaitable(result):
        return await result
    assert isinstance(result, Response)
    return result
