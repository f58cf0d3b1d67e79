"""The HEADERS meshkit.web.h2conn makes of a Response (h2's own outbound checks are off, so
these are the only ones)."""

from __future__ import annotations

import pytest

from meshkit.web.h2stream import response_fields as _fields
from meshkit.web.message import Headers


def test_fields_lower_case_without_connection_fields_with_server_date_and_length() -> None:
    headers = Headers(
        [("Content-Type", "text/plain"), ("Connection", "keep-alive"), ("Keep-Alive", "5"),
         ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("X-Pad", "  v  ")]
    )  # fmt: skip
    out = dict(_fields(200, headers, 12))
    assert out[b":status"] == b"200" and out[b"content-type"] == b"text/plain"
    assert out[b"x-pad"] == b"v" and out[b"server"] == b"meshkit" and b"date" in out
    assert out[b"content-length"] == b"12"
    assert not {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"} & out.keys()
    assert b"content-length" not in dict(_fields(204, Headers(), 0))
    assert b"server" not in dict(_fields(200, Headers([("Server", "")]), 0))


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "a\r\nSet-Cookie: x=1"), ("X-A", "a\nb"), ("X-A", "a\0b"), ("X A", "v"), ("", "v")],
)
def test_fields_refuse_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        _fields(200, Headers([(name, value)]), 0)
