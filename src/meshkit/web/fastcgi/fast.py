"""The FastCGI hot path: the compiled functions of meshkit._fastpath (csrc/fcgi_records.c)
or their pure-Python twins, chosen once at import (MESHKIT_NO_EXTENSIONS=1: the twins).

    encode_request(request_id, params, stdin=b"", keep_conn=True) -> bytes
        records.encode_request: the whole request in one buffer (one write)
    encode_pairs(pairs) -> bytes
        records.encode_pairs: PARAMS content
    quick_reply(data) -> (status, items, content_length, body, app_status, protocol_status)
        a small reply that one read holds whole (STDOUT records, then END_REQUEST) with its
        CGI head parsed in the same pass; None for anything else, which the Decoder and
        response.parse_head take as before (the C version declines more shapes than the
        twin, bytes outside printable ASCII in the head for one, never with another answer)
    is_regular_file(path) -> bool
        os.stat + S_ISREG, False on any error (the safe split's check, once per request)
    has_field(items, lower_name) -> bool
        is there a field `lower_name` (given lower-case) in a Headers' item list: Headers
        __contains__ without its generator (the request's Content-Length, once per request)
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable, Iterable
from typing import Any

from meshkit._ext import load_fastpath
from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.response import HeadError, parse_head

QuickReply = tuple[int, list[tuple[str, str]], "int | None", bytes, int, int]


def quick_reply_py(data: bytes) -> QuickReply | None:
    """The pure-Python quick_reply: records.whole_reply, then response.parse_head."""
    whole = records.whole_reply(data)
    if whole is None:
        return None
    stdout, end = whole
    try:
        head = parse_head(stdout)
    except HeadError:
        return None
    if head is None:
        return None
    return (
        head.status,
        head.headers._items,
        head.content_length,
        stdout[head.body_start :],
        end.app_status,
        end.protocol_status,
    )


def is_regular_file_py(path: str) -> bool:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return stat_mod.S_ISREG(st.st_mode)


def has_field_py(items: list[tuple[str, str]], lower_name: str) -> bool:
    # a loop, not any(): no generator frame per call (the twin runs once per request)
    for name, _ in items:  # noqa: SIM110
        if name.lower() == lower_name:
            return True
    return False


_fastpath = load_fastpath()
COMPILED = _fastpath is not None and hasattr(_fastpath, "fcgi_quick_reply")

encode_request: Callable[..., bytes]
encode_pairs: Callable[[Iterable[tuple[bytes, bytes]]], bytes]
quick_reply: Callable[[bytes], Any]
is_regular_file: Callable[[str], bool]
has_field: Callable[[list[tuple[str, str]], str], bool]
if COMPILED:
    assert _fastpath is not None
    encode_request = _fastpath.fcgi_encode_request
    encode_pairs = _fastpath.fcgi_encode_pairs
    quick_reply = _fastpath.fcgi_quick_reply
    is_regular_file = _fastpath.fcgi_is_regular_file
    has_field = _fastpath.fcgi_has_field
else:
    encode_request = records.encode_request
    encode_pairs = records.encode_pairs
    quick_reply = quick_reply_py
    is_regular_file = is_regular_file_py
    has_field = has_field_py
