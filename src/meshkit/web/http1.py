"""HTTP/1.1 request framing and response serialisation, without I/O (sans-IO).

The server (meshkit.web.server) feeds bytes to httptools and asks this module what to do:

- ``check_framing(headers)``: how the request body is delimited, refusing what could smuggle
  a request past another HTTP hop (Content-Length together with Transfer-Encoding, repeated
  Content-Length fields, Content-Length that is not a plain decimal, a Transfer-Encoding that
  does not end in a single ``chunked``);
- ``parse_target(uri)``: the request-target split into the canonical path (decoded once, dot
  segments resolved, slashes merged: meshkit.web.paths), the query and the authority of an
  absolute-form target, refusing NUL bytes, paths that do not decode or that climb above `/`;
- ``wants_keep_alive(version, connection)``: HTTP/1.0 and 1.1 persistence rules;
- ``serialize_head(...)``: the status line and header block, with Content-Length, Date,
  ``Server: meshkit`` and Connection added as needed; ``body_allowed`` for HEAD/1xx/204/304;
- ``error_bytes(status)``: a complete, closing error response for the errors answered before a
  handler runs (400, 408, 413, 431, 505).

Everything here is pure: bytes and data in, bytes and decisions out.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from meshkit.web.message import Headers, status_text
from meshkit.web.paths import canonical_path

__all__ = [
    "BODY_CHUNKED",
    "BODY_LENGTH",
    "BODY_NONE",
    "Framing",
    "Head",
    "HttpError",
    "Target",
    "body_allowed",
    "cached_head",
    "check_framing",
    "error_bytes",
    "http_date",
    "parse_target",
    "scan_head",
    "serialize_head",
    "valid_host",
    "wants_keep_alive",
]

SERVER_NAME = "meshkit"
CONTINUE_BYTES = b"HTTP/1.1 100 Continue\r\n\r\n"

BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2

_DIGITS = frozenset(b"0123456789")


class HttpError(Exception):
    """A request the server answers itself with `status` and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Framing:
    """How a request body is delimited: BODY_NONE, BODY_LENGTH (`length` bytes) or
    BODY_CHUNKED; `expect_continue` when the client waits for `100 Continue`."""

    kind: int
    length: int | None = None
    expect_continue: bool = False


NO_BODY = Framing(BODY_NONE, 0)

# Header names that decide framing, host or persistence (lower case).
_SPECIAL = frozenset(("host", "connection", "content-length", "transfer-encoding", "expect"))
_NAMES: dict[bytes, tuple[str, str]] = {}


# What scan_head() finds in a request's header fields: (items, host, keep_alive, framing,
# size): the (name, value) pairs decoded as latin-1, in order (a new list each time); the Host
# field ("" when absent, allowed for HTTP/1.0); whether the client wants the connection kept;
# the body framing; the bytes of the fields as `name: value\r\n` lines.
Head = tuple[list[tuple[str, str]], str, bool, Framing, int]

_HEADS_SEEN: dict[tuple[object, ...], tuple[tuple[tuple[str, str], ...], str, bool, Framing, int]]
_HEADS_SEEN = {}
_HEADS_SEEN_MAX = 1024
_HEADS_SEEN_SIZE = 4096  # larger header blocks are not memoised


def scan_head(headers: list[tuple[bytes, bytes]], version: str) -> Head:
    """Decode a request's header fields and take every framing decision in one pass.

    Raises HttpError(400) for a missing (HTTP/1.1), repeated or malformed Host (see
    valid_host) and for everything
    check_framing() refuses. Memoised on the exact fields (a client sends the same header
    block request after request).
    """
    key = (version, *headers)
    seen = _HEADS_SEEN.get(key)
    if seen is not None:
        return [*seen[0]], seen[1], seen[2], seen[3], seen[4]
    head = _scan_head(headers, version)
    if head[4] <= _HEADS_SEEN_SIZE:
        if len(_HEADS_SEEN) >= _HEADS_SEEN_MAX:
            _HEADS_SEEN.clear()
        _HEADS_SEEN[key] = (tuple(head[0]), head[1], head[2], head[3], head[4])
    return head


def _scan_head(headers: list[tuple[bytes, bytes]], version: str) -> Head:
    size = 0
    items: list[tuple[str, str]] = []
    host = ""
    hosts = 0
    connection: str | None = None
    special = False
    names = _NAMES
    for raw_name, raw_value in headers:
        entry = names.get(raw_name)
        if entry is None:
            decoded = raw_name.decode("latin-1")
            entry = (decoded, decoded.lower())
            if len(names) < 1024:
                names[raw_name] = entry
        name, low = entry
        size += len(raw_name) + len(raw_value) + 4
        value = raw_value.decode("latin-1")
        items.append((name, value))
        if low in _SPECIAL:
            if low == "host":
                hosts += 1
                host = value
            elif low == "connection":
                connection = value if connection is None else f"{connection}, {value}"
            else:
                special = True
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise HttpError(400, "missing or repeated Host")
    if hosts and not valid_host(host):
        raise HttpError(400, "invalid Host")
    framing = check_framing(headers) if special else NO_BODY
    keep = version == "1.1" if connection is None else wants_keep_alive(version, connection)
    return items, host, keep, framing, size


# RFC 3986 host [":" port]: a reg-name (IPv4 addresses are reg-names too: unreserved,
# pct-encoded and sub-delims characters) or an IP literal in brackets (an IPv6 address, with
# an RFC 6874 zone); the port digits may be empty.
_HOST = re.compile(
    r"(?:[A-Za-z0-9\-._~%!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~%]+)?\])"
    r"(?::[0-9]*)?"
)


def valid_host(value: str) -> bool:
    """Whether a Host field value is a host[:port] (an empty one is not: nginx refuses it,
    and no site can match it; a space, `/`, `@` or a bracket out of place neither)."""
    return _HOST.fullmatch(value) is not None


def check_framing(headers: list[tuple[bytes, bytes]]) -> Framing:
    """The body framing of a request with these header fields (name, value as received).

    Raises HttpError(400) for anything ambiguous: both Content-Length and Transfer-Encoding,
    more than one Content-Length (also equal ones, and comma lists), a Content-Length that is
    not plain digits, a Transfer-Encoding other than a final single `chunked`; and
    HttpError(417) for an Expect other than 100-continue.
    """
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    expect = False
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            lengths.append(value)
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            encodings.append(value)
        elif len(name) == 6 and name.lower() == b"expect":
            if value.strip().lower() != b"100-continue":
                raise HttpError(417, "unsupported Expect")
            expect = True
    if lengths and encodings:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise HttpError(400, "more than one Content-Length")
    if lengths:
        raw = lengths[0].strip(b" \t")
        if not raw or not _DIGITS.issuperset(raw) or len(raw) > 18:
            raise HttpError(400, "invalid Content-Length")
        n = int(raw)
        return Framing(BODY_LENGTH, n, expect and n > 0) if n or expect else NO_BODY
    if encodings:
        codings = [c.strip(b" \t").lower() for v in encodings for c in v.split(b",")]
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1 or b"" in codings:
            raise HttpError(400, "invalid Transfer-Encoding")
        if len(codings) > 1:
            raise HttpError(501, "unsupported Transfer-Encoding")
        return Framing(BODY_CHUNKED, None, expect)
    return NO_BODY


class Target(NamedTuple):
    """A request-target split up: `path` canonical, `query` as received (without `?`),
    `authority` the host[:port] of an absolute-form target ("" otherwise)."""

    path: str
    query: str
    authority: str = ""


_TARGETS: dict[tuple[bytes, str], Target] = {}
_TARGETS_MAX = 4096


def parse_target(uri: bytes, method: str = "GET") -> Target:
    """Split and decode a request-target (origin-, absolute-, authority- or asterisk-form).

    Raises HttpError(400) for NUL (raw or %00), bad %-escapes or invalid UTF-8 in the path,
    a path whose `..` segments climb above the root, and targets of none of the forms. The
    path is canonical (meshkit.web.paths): every matcher and the file server see one form.
    Results are memoised (static sites see the same targets over and over).
    """
    key = (uri, method)
    target = _TARGETS.get(key)
    if target is None:
        target = _parse_target(uri, method)
        if len(_TARGETS) >= _TARGETS_MAX:
            _TARGETS.clear()
        _TARGETS[key] = target
    return target


def _parse_target(uri: bytes, method: str) -> Target:
    if b"\x00" in uri:
        raise HttpError(400, "NUL in request-target")
    authority = b""
    if uri.startswith(b"/"):
        rest = uri
    elif uri == b"*" and method == "OPTIONS":
        return Target("*", "")
    elif method == "CONNECT":
        return Target("", "", _latin1(uri))
    else:
        scheme, sep, after = uri.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise HttpError(400, "invalid request-target")
        slash = after.find(b"/")
        qmark = after.find(b"?")
        cut = min(i for i in (slash, qmark, len(after)) if i >= 0)
        authority = after[:cut]
        if b"@" in authority or not authority:
            raise HttpError(400, "invalid authority in request-target")
        rest = after[cut:] or b"/"
        if rest.startswith(b"?"):
            rest = b"/" + rest
    raw_path, _, query = rest.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    query = query.partition(b"#")[0]
    if b"%" in raw_path:
        if not _valid_escapes(raw_path):
            raise HttpError(400, "invalid %-escape in path")
        decoded = unquote_to_bytes(raw_path)
        if b"\x00" in decoded:
            raise HttpError(400, "NUL in path")
    else:
        decoded = raw_path
    try:
        path = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "path is not UTF-8") from None
    canonical = canonical_path(path)
    if canonical is None:
        raise HttpError(400, "path climbs above the root")
    return Target(canonical, _latin1(query), _latin1(authority))


def _valid_escapes(raw: bytes) -> bool:
    hexdigits = b"0123456789abcdefABCDEF"
    i = raw.find(b"%")
    while i >= 0:
        pair = raw[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in hexdigits or pair[1] not in hexdigits:
            return False
        i = raw.find(b"%", i + 3)
    return True


def _latin1(raw: bytes) -> str:
    return raw.decode("latin-1")


def wants_keep_alive(version: str, connection: str | None) -> bool:
    """Whether the client wants the connection kept after this request."""
    tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    if version == "1.1":
        return "close" not in tokens
    return "keep-alive" in tokens and "close" not in tokens


def body_allowed(status: int, method: str) -> bool:
    """Whether a response with this status to this method carries a body on the wire."""
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def length_header_allowed(status: int) -> bool:
    """Content-Length may be added by the server (not for 1xx, 204, 304)."""
    return status >= 200 and status not in (204, 304)


class _DateCache:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""


_date_cache = _DateCache()


def http_date(now: float | None = None) -> str:
    """The IMF-fixdate for now (cached per second)."""
    t = time.time() if now is None else now
    sec = int(t)
    cache = _date_cache
    if sec != cache.second:
        cache.value = formatdate(sec, usegmt=True)
        cache.second = sec
    return cache.value


_STATUS_LINES: dict[tuple[str, int], bytes] = {}


def _status_line(version: str, status: int) -> bytes:
    key = (version, status)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = f"HTTP/{version} {status} {status_text(status)}\r\n".encode("latin-1")
        if len(_STATUS_LINES) < 512:
            _STATUS_LINES[key] = line
    return line


_HEADS: dict[tuple[object, ...], bytes] = {}
_HEADS_MAX = 1024


class _HeadsClock:
    __slots__ = ("second",)

    def __init__(self) -> None:
        self.second = -1


_heads_clock = _HeadsClock()


def cached_head(
    status: int,
    headers: Headers,
    content_length: int | None,
    keep_alive: bool,
    version: str,
) -> bytes:
    """serialize_head() for a plain response (no chunking, the current Date), memoised for
    the current second: static files answer the same heads over and over."""
    second = int(time.time())
    if second != _heads_clock.second:
        _HEADS.clear()
        _heads_clock.second = second
    # Headers' own list, read without a copy: this runs for every response.
    key = (status, content_length, keep_alive, version, *headers._items)
    head = _HEADS.get(key)
    if head is None:
        head = serialize_head(
            status,
            headers,
            content_length=content_length,
            keep_alive=keep_alive,
            version=version,
            date=http_date(second),
        )
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[key] = head
    return head


def serialize_head(
    status: int,
    headers: Headers,
    *,
    content_length: int | None,
    chunked: bool = False,
    keep_alive: bool,
    version: str = "1.1",
    date: str | None = None,
) -> bytes:
    """The response's status line and headers, ending with the empty line.

    Adds Server (unless set; a Server field set to "" is dropped and none is added: that is
    how `header / -Server` removes it), Date (unless set), Content-Length (when `content_length` is
    given and the handler set none), Transfer-Encoding: chunked (when `chunked`), and
    Connection: close / keep-alive (close when not `keep_alive`; keep-alive for HTTP/1.0
    clients that keep the connection). The status line always says HTTP/1.1 (RFC 9110);
    `version` is the client's and only decides the Connection header. Connection,
    Keep-Alive and Transfer-Encoding fields set by a handler are dropped (the server frames
    the message). CR or LF in a name or value raises ValueError (header injection).
    """
    parts: list[str] = []
    has_server = has_date = has_length = False
    for name, value in headers:
        low = name.lower()
        if low == "server":
            has_server = True
            if not value:
                continue  # an empty Server field means "send none" (`header / -Server`)
        elif low == "date":
            has_date = True
        elif low == "content-length":
            has_length = True
        elif low in ("connection", "transfer-encoding", "keep-alive"):
            continue
        parts.append(f"{name}: {value}\r\n")
    if not has_server:
        parts.append("Server: meshkit\r\n")
    if not has_date:
        parts.append(f"Date: {date or http_date()}\r\n")
    if chunked:
        parts.append("Transfer-Encoding: chunked\r\n")
    elif content_length is not None and not has_length and length_header_allowed(status):
        parts.append(f"Content-Length: {content_length}\r\n")
    if not keep_alive:
        parts.append("Connection: close\r\n")
    elif version == "1.0":
        parts.append("Connection: keep-alive\r\n")
    text = "".join(parts)
    if text.count("\n") != len(parts) or text.count("\r") != len(parts):
        raise ValueError("CR or LF inside a response header")
    return _status_line("1.1", status) + text.encode("latin-1", "replace") + b"\r\n"


def error_bytes(status: int, keep_alive: bool = False) -> bytes:
    """A whole plain-text error response (`<code> <text>` body) for errors the server
    answers itself before or instead of a handler; Connection: close unless keep_alive."""
    body = f"{status} {status_text(status)}\n".encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
    )
    return serialize_head(status, headers, content_length=len(body), keep_alive=keep_alive) + body
