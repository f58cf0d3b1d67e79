"""The FastCGI 1.0 record layer, sans-IO: bytes in, records out (and records to bytes).

Every record starts with an 8-byte header:

    version(1) type(1) request_id(2) content_length(2) padding_length(1) reserved(1)

All multi-byte integers of the protocol are big-endian (network byte order): the request id
and content length here, the role in BEGIN_REQUEST, the app status in END_REQUEST and the
4-byte name/value lengths. Content is at most 65535 bytes per record, so longer streams are
cut into several records; padding rounds each record up to a multiple of 8 bytes, which is
what php-fpm and nginx send (the spec recommends it; a decoder must accept any padding).
A stream (PARAMS, STDIN, STDOUT, STDERR) ends with a record of empty content.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

VERSION = 1
HEADER_LEN = 8
MAX_CONTENT = 0xFFFF

# record types
BEGIN_REQUEST = 1
ABORT_REQUEST = 2
END_REQUEST = 3
PARAMS = 4
STDIN = 5
STDOUT = 6
STDERR = 7
DATA = 8
GET_VALUES = 9
GET_VALUES_RESULT = 10
UNKNOWN_TYPE = 11

# roles (BEGIN_REQUEST)
RESPONDER = 1
AUTHORIZER = 2
FILTER = 3

# flags (BEGIN_REQUEST): keep the connection open after END_REQUEST
KEEP_CONN = 1

# protocol status (END_REQUEST)
REQUEST_COMPLETE = 0
CANT_MPX_CONN = 1
OVERLOADED = 2
UNKNOWN_ROLE = 3

PROTOCOL_STATUS_TEXT = {
    REQUEST_COMPLETE: "request complete",
    CANT_MPX_CONN: "cannot multiplex connections",
    OVERLOADED: "overloaded",
    UNKNOWN_ROLE: "unknown role",
}

TYPE_NAMES = {
    BEGIN_REQUEST: "BEGIN_REQUEST",
    ABORT_REQUEST: "ABORT_REQUEST",
    END_REQUEST: "END_REQUEST",
    PARAMS: "PARAMS",
    STDIN: "STDIN",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    DATA: "DATA",
    GET_VALUES: "GET_VALUES",
    GET_VALUES_RESULT: "GET_VALUES_RESULT",
    UNKNOWN_TYPE: "UNKNOWN_TYPE",
}

_HEADER = struct.Struct(">BBHHBx")
_BEGIN_BODY = struct.Struct(">HB5x")
_END_BODY = struct.Struct(">IB3x")
_LEN4 = struct.Struct(">I")
_PADS = [b"\0" * n for n in range(8)]
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


class ProtocolError(Exception):
    """The peer sent bytes that are not valid FastCGI records."""


class Record(NamedTuple):
    # a tuple, not a dataclass: one is made per record on the hot path
    type: int
    request_id: int
    content: bytes

    def __repr__(self) -> str:
        name = TYPE_NAMES.get(self.type, str(self.type))
        return f"Record({name}, {self.request_id}, {self.content!r})"


# Record(...) runs the namedtuple's Python __new__; tuple.__new__ makes the same object in C
_new_tuple = tuple.__new__


class EndRequest(NamedTuple):
    app_status: int
    protocol_status: int


# --- encoding -------------------------------------------------------------------------------


def encode_record(rtype: int, request_id: int, content: bytes = b"") -> bytes:
    """One record per 65535 bytes of `content` (exactly one, empty, when content is empty),
    each padded to a multiple of 8 bytes."""
    n = len(content)
    if n <= MAX_CONTENT:
        pad = -n & 7
        return _HEADER.pack(VERSION, rtype, request_id, n, pad) + content + _PADS[pad]
    out: list[bytes] = []
    view = memoryview(content)
    for start in range(0, n, MAX_CONTENT):
        piece = view[start : start + MAX_CONTENT]
        pad = -len(piece) & 7
        out.append(_HEADER.pack(VERSION, rtype, request_id, len(piece), pad))
        out.append(piece.tobytes())
        out.append(_PADS[pad])
    return b"".join(out)


def encode_stream(rtype: int, request_id: int, content: bytes) -> bytes:
    """`content` as a whole stream: its records, then the empty record that ends it."""
    if content:
        return encode_record(rtype, request_id, content) + _HEADER.pack(
            VERSION, rtype, request_id, 0, 0
        )
    return _HEADER.pack(VERSION, rtype, request_id, 0, 0)


def begin_request(request_id: int, role: int = RESPONDER, keep_conn: bool = True) -> bytes:
    return encode_record(
        BEGIN_REQUEST, request_id, _BEGIN_BODY.pack(role, KEEP_CONN if keep_conn else 0)
    )


def end_request(request_id: int, app_status: int = 0, protocol_status: int = 0) -> bytes:
    return encode_record(END_REQUEST, request_id, _END_BODY.pack(app_status, protocol_status))


def _length(n: int) -> bytes:
    # lengths below 128 take one byte; longer ones four, with the top bit set as the marker
    if n < 0x80:
        return bytes((n,))
    if n > 0x7FFFFFFF:
        raise ValueError(f"name or value too long for FastCGI ({n} bytes)")
    return _LEN4.pack(n | 0x80000000)


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs as PARAMS content: len(name) len(value) name value, one after the
    other (1-byte lengths below 128, else 4-byte big-endian with the high bit set)."""
    out: list[bytes] = []
    append = out.append
    one = _ONE_BYTE
    for name, value in pairs:
        nl, vl = len(name), len(value)
        append(one[nl] if nl < 0x80 else _length(nl))
        append(one[vl] if vl < 0x80 else _length(vl))
        append(name)
        append(value)
    return b"".join(out)


def decode_pairs(content: bytes) -> list[tuple[bytes, bytes]]:
    """The name-value pairs of a whole PARAMS (or GET_VALUES) stream."""
    out: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(content)

    def length() -> int:
        nonlocal pos
        if pos >= end:
            raise ProtocolError("name-value pair cut short (missing length)")
        b = content[pos]
        if b < 0x80:
            pos += 1
            return b
        if pos + 4 > end:
            raise ProtocolError("name-value pair cut short (4-byte length)")
        n: int = _LEN4.unpack_from(content, pos)[0] & 0x7FFFFFFF
        pos += 4
        return n

    while pos < end:
        nl = length()
        vl = length()
        if pos + nl + vl > end:
            raise ProtocolError("name-value pair cut short (name or value)")
        out.append((content[pos : pos + nl], content[pos + nl : pos + nl + vl]))
        pos += nl + vl
    return out


def encode_request(
    request_id: int,
    params: bytes,
    stdin: bytes | None = b"",
    keep_conn: bool = True,
) -> bytes:
    """A whole RESPONDER request in one buffer: BEGIN_REQUEST, the PARAMS stream (`params`
    is encode_pairs() output) and, unless `stdin` is None (streamed afterwards), the whole
    STDIN stream."""
    n = len(params)
    if request_id == 1 and keep_conn and 0 < n <= MAX_CONTENT:
        # the everyday request: one PARAMS record, its pieces made once
        pad = -n & 7
        head = b"".join(
            (_BEGIN_1, _HEADER.pack(VERSION, PARAMS, 1, n, pad), params, _PADS[pad], _END_PARAMS_1)
        )
        if stdin is None:
            return head
        return head + (encode_stream(STDIN, 1, stdin) if stdin else _END_STDIN_1)
    head = begin_request(request_id, RESPONDER, keep_conn) + encode_stream(
        PARAMS, request_id, params
    )
    if stdin is None:
        return head
    return head + encode_stream(STDIN, request_id, stdin)


def whole_reply(data: bytes) -> tuple[bytes, EndRequest] | None:
    """(STDOUT, END_REQUEST) of a reply to request 1 that `data` holds whole and alone:
    STDOUT records, then END_REQUEST ending `data` (the usual small answer in one read).
    None for anything else (other records, a partial record, a bad header...), which the
    Decoder then handles (and reports)."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    unpack = _HEADER.unpack_from
    while end - pos >= HEADER_LEN:
        version, rtype, rid, clen, plen = unpack(data, pos)
        stop = pos + HEADER_LEN + clen
        if version != VERSION or rid != 1 or stop + plen > end:
            return None
        if rtype == STDOUT:
            if clen:
                out.append(data[pos + HEADER_LEN : stop])
        elif rtype == END_REQUEST and clen >= 8 and stop + plen == end:
            app, proto = _END_BODY.unpack_from(data, pos + HEADER_LEN)
            stdout = out[0] if len(out) == 1 else b"".join(out)
            return stdout, _new_tuple(EndRequest, (app, proto))
        else:
            return None
        pos = stop + plen
    return None


_BEGIN_1 = begin_request(1, RESPONDER, True)
_END_PARAMS_1 = _HEADER.pack(VERSION, PARAMS, 1, 0, 0)
_END_STDIN_1 = _HEADER.pack(VERSION, STDIN, 1, 0, 0)


def parse_end_request(content: bytes) -> EndRequest:
    if len(content) < 8:
        raise ProtocolError(f"END_REQUEST body is {len(content)} bytes, expected 8")
    app, proto = _END_BODY.unpack_from(content)
    return EndRequest(app, proto)


def parse_begin_request(content: bytes) -> tuple[int, bool]:
    """(role, keep_conn) of a BEGIN_REQUEST body."""
    if len(content) < 8:
        raise ProtocolError(f"BEGIN_REQUEST body is {len(content)} bytes, expected 8")
    role, flags = _BEGIN_BODY.unpack_from(content)
    return role, bool(flags & KEEP_CONN)


# --- decoding -------------------------------------------------------------------------------


class Decoder:
    """Turns a byte stream into Records, however the bytes are cut.

    feed() returns the records completed by the new bytes; a partial record waits in the
    buffer for the rest. The common case (whole records in one read) slices the input once
    per record and copies nothing else.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a record."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Record]:
        buf = self._buf + data if self._buf else data
        out: list[Record] = []
        pos, end = 0, len(buf)
        unpack = _HEADER.unpack_from
        while end - pos >= HEADER_LEN:
            version, rtype, rid, clen, plen = unpack(buf, pos)
            if version != VERSION:
                raise ProtocolError(f"unsupported FastCGI version {version} at byte {pos}")
            stop = pos + HEADER_LEN + clen
            if stop + plen > end:
                break
            out.append(_new_tuple(Record, (rtype, rid, buf[pos + HEADER_LEN : stop])))
            pos = stop + plen
        self._buf = buf[pos:] if pos < end else b""
        return out
