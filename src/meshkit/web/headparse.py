"""A request head read in one pass from the connection's buffer (the head lane's parser).

``scan_head(data, start, header_limit, max_fields, max_field_line)`` reads the request head
that begins at ``data[start]`` and takes every decision the httptools path takes for it
(meshkit.web.connection's callbacks plus meshkit.web.http1), in the same order, so that the
first defect found is the one that path would have reported:

1. the request line and each field line, as llhttp reads them (methods it knows, target
   characters, ``HTTP/d.d``, token names, field-value characters, CRLF only, no obs-fold,
   Content-Length and Transfer-Encoding conflicts the moment they appear), with the per-field
   limits (``max_fields``, ``max_field_line``: 431) checked where the connection's on_header
   callback sees each field (once the next field's name is read, or at the end of the head);
2. at the end of the head: the version (505 for 2.0, 400 otherwise), Host (missing, repeated,
   malformed), Expect (417), framing (http1.check_framing's smuggling rules: 400, 501), the
   total size against ``header_limit`` (431).

It returns one of:

- a tuple ``(end, method, target, version, items, host, keep)`` for a request without a body
  that the lane can dispatch: ``end`` is the offset just past the head, ``target`` the raw
  request-target bytes, ``items`` a new list of (name, value) str pairs (latin-1, names as
  sent), ``host`` the Host value ("" when absent), ``keep`` whether to keep the connection;
- ``INCOMPLETE`` (-2): no ``\\r\\n\\r\\n`` yet (the caller leaves the bytes to httptools);
- ``DEFER`` (-1): a head the lane leaves to httptools: a body (Content-Length > 0,
  Transfer-Encoding, Expect with Content-Length), an upgrade (an Upgrade field, CONNECT),
  leading empty lines, a target not in origin form, extra spaces in the request line;
- a status (400, 417, 431, 501, 505): the request is refused.

The request-target itself is checked by http1.parse_target (meshkit.web.headlane).
This module is the pure-Python twin of the compiled scanner in meshkit._fastpath
(csrc/http_head.c); tests/web/test_headparse_diff.py runs both against each other and
against the httptools path on generated heads.
"""

from __future__ import annotations

import re

from meshkit.web.http1 import BODY_NONE, HttpError, check_framing, valid_host, wants_keep_alive

__all__ = ["DEFER", "INCOMPLETE", "METHODS", "scan_head"]

INCOMPLETE = -2
DEFER = -1

# llhttp's request methods (HTTP mode); CONNECT (an upgrade) and PRI (llhttp waits for the
# rest of an HTTP/2 preface, then refuses it) are left to httptools; others are refused.
_METHOD_LIST = """DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH
SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE
UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY"""
METHODS = frozenset(_METHOD_LIST.split())
# a target's bytes (what llhttp takes in origin form); a field name (tchar), then its value
# (leading whitespace skipped; HTAB, SP, VCHAR, obs-text) and CRLF
_TARGET = re.compile(rb"[\x21-\x7e]*")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# (unambiguous, so that a failing match backtracks in linear time)
_VALUE = re.compile(rb"[ \t]*((?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?)\r\n")
_DIGITS = frozenset(b"0123456789")
_SPACE_ENDED = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"proxy-connection", b"upgrade")
)
# what str.strip() removes from a latin-1 string (http1.wants_keep_alive strips with it)
_STR_SPACE = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0"
_U64_MAX = (1 << 64) - 1


# heads accepted before, by their bytes: (limits, method, target, version, items, host, keep)
# (a client sends the same head request after request; the compiled scanner needs no memo)
_SEEN: dict[
    bytes, tuple[tuple[int, int, int], str, bytes, str, tuple[tuple[str, str], ...], str, bool]
]
_SEEN = {}
_SEEN_MAX = 1024
_SEEN_SIZE = 4096


def scan_head(
    data: bytes, start: int, header_limit: int, max_fields: int, max_field_line: int
) -> tuple[int, str, bytes, str, list[tuple[str, str]], str, bool] | int:
    """Read the request head at data[start:] (see the module docstring)."""
    head_end = data.find(b"\r\n\r\n", start)
    if head_end < 0:
        return INCOMPLETE
    end = head_end + 4
    key = data if start == 0 and end == len(data) else data[start:end]
    limits = (header_limit, max_fields, max_field_line)
    seen = _SEEN.get(key)
    if seen is not None and seen[0] == limits:
        return end, seen[1], seen[2], seen[3], [*seen[4]], seen[5], seen[6]
    res = _scan(data, start, head_end, end, header_limit, max_fields, max_field_line)
    if type(res) is tuple and end - start <= _SEEN_SIZE:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[key] = (limits, res[1], res[2], res[3], tuple(res[4]), res[5], res[6])
    return res


def _scan(
    data: bytes,
    start: int,
    head_end: int,
    end: int,
    header_limit: int,
    max_fields: int,
    max_field_line: int,
) -> tuple[int, str, bytes, str, list[tuple[str, str]], str, bool] | int:
    if data[start] in (13, 10):
        return DEFER  # empty lines before the request line: llhttp skips them
    line_end = data.find(b"\r\n", start)
    sp = data.find(b" ", start, line_end)
    if sp < 0:
        return 400
    method = data[start:sp].decode("latin-1")
    if method not in METHODS:
        return DEFER if method in ("CONNECT", "PRI") else 400
    pos = sp + 1
    if data[pos] != 0x2F:  # "/": other forms (and extra spaces) go to httptools
        return DEFER
    sp = min(_TARGET.match(data, pos).end(), line_end)  # type: ignore[union-attr]
    if sp == line_end:
        return 400  # no version (HTTP/0.9)
    if data[sp] != 0x20:
        return 400  # a control, DEL or non-ASCII byte in the target
    target = data[pos:sp]
    rest = data[sp + 1 : line_end]
    if rest[:1] == b" ":
        return DEFER
    if (
        len(rest) != 8
        or rest[:5] != b"HTTP/"
        or rest[5] not in _DIGITS
        or rest[6] != 0x2E
        or rest[7] not in _DIGITS
    ):
        return 400
    version = rest[5:].decode("ascii")
    if version not in ("1.1", "1.0", "2.0", "0.9"):
        return 400  # llhttp knows no other version
    return _fields(
        data,
        line_end + 2,
        head_end,
        end,
        method,
        target,
        version,
        header_limit,
        max_fields,
        max_field_line,
    )


def _fields(
    data: bytes,
    pos: int,
    head_end: int,
    end: int,
    method: str,
    target: bytes,
    version: str,
    header_limit: int,
    max_fields: int,
    max_field_line: int,
) -> tuple[int, str, bytes, str, list[tuple[str, str]], str, bool] | int:
    items: list[tuple[str, str]] = []
    raw: list[tuple[bytes, bytes]] = []
    size = 0
    cl_seen = te_seen = chunked_final = upgrade = False
    prev = 0  # bytes of the previous field as the connection's on_header counts them
    while pos < head_end + 2:
        first = data[pos]
        if first == 0x20 or first == 9:
            return 400  # obs-fold, or whitespace before a field name
        named = _NAME.match(data, pos)
        if named is None:
            return 400
        colon = named.end()
        if data[colon] != 0x3A:
            # llhttp ends a name it knows at a space (and then refuses the space), so the
            # previous field reaches on_header first
            if (
                data[colon] == 0x20
                and raw
                and data[pos:colon].lower() in _SPACE_ENDED
                and (len(raw) > max_fields or prev > max_field_line)
            ):
                return 431
            return 400
        # the previous field reaches on_header once this name is read
        if raw and (len(raw) > max_fields or prev > max_field_line):
            return 431
        name = data[pos:colon]
        valued = _VALUE.match(data, colon + 1)
        if valued is None:
            return 400  # a control byte, a bare CR or a bare LF in the value
        value = valued.group(1)
        line_end = valued.end() - 2
        low = name.lower()
        if low == b"content-length":
            if cl_seen or te_seen:
                return 400
            cl_seen = True
            number = value.rstrip(b" \t")
            if not number or not _DIGITS.issuperset(number) or int(number) > _U64_MAX:
                return 400
        elif low == b"transfer-encoding":
            if cl_seen or chunked_final or not value.rstrip(b" \t"):
                return 400
            te_seen = True
            codings = [c.strip(b" \t").lower() for c in value.split(b",")]
            if b"chunked" in codings[:-1]:
                return 400  # llhttp: nothing may follow chunked
            chunked_final = codings[-1] == b"chunked"
        elif low == b"upgrade":
            upgrade = True
        raw.append((name, value))
        items.append((name.decode("latin-1"), value.decode("latin-1")))
        size += len(name) + len(value) + 4
        prev = len(name) + len(value) + 2
        pos = line_end + 2
    if raw and (len(raw) > max_fields or prev > max_field_line):
        return 431
    return _decide(end, method, target, version, items, raw, size, upgrade, header_limit)


def _decide(
    end: int,
    method: str,
    target: bytes,
    version: str,
    items: list[tuple[str, str]],
    raw: list[tuple[bytes, bytes]],
    size: int,
    upgrade: bool,
    header_limit: int,
) -> tuple[int, str, bytes, str, list[tuple[str, str]], str, bool] | int:
    # the connection's on_headers_complete, in its order
    if version != "1.1" and version != "1.0":
        return 505 if version == "2.0" else 400
    host = ""
    hosts = 0
    connection: str | None = None
    special = False
    for (_name, value), (raw_name, _) in zip(items, raw, strict=True):
        low = raw_name.lower()
        if low == b"host":
            hosts += 1
            host = value
        elif low == b"connection":
            connection = value if connection is None else f"{connection}, {value}"
        elif low in (b"content-length", b"transfer-encoding", b"expect"):
            special = True
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return 400
    if hosts and not valid_host(host):
        return 400
    body = False
    if special:
        try:
            body = check_framing(raw).kind != BODY_NONE
        except HttpError as exc:
            return exc.status
    keep = version == "1.1" if connection is None else wants_keep_alive(version, connection)
    if size + len(target) > header_limit:
        return 431
    if body or upgrade:
        return DEFER
    return end, method, target, version, items, host, keep
