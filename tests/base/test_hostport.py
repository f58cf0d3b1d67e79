"""The one host:port grammar (meshkit.base.hostport)."""

from __future__ import annotations

import re

import pytest

from meshkit.base.errors import InvalidValue
from meshkit.base.hostport import Reason, parse_hostport, port, split_host_optport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        (":9100", ("0.0.0.0", 9100)),
        ("LocalHost:80", ("localhost", 80)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "--metrics") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("::1:9100", "write IPv6 addresses in brackets"),
        ("[1.2.3.4]:80", "brackets are only for IPv6"),
        ("h:0", "port 0 is out of range 1-65535"),
        ("h", "expected IP:PORT or [IPv6]:PORT"),
    ],
)
def test_hostport_errors_name_the_flag(text: str, reason: str) -> None:
    with pytest.raises(InvalidValue, match=f"for --metrics: .*{re.escape(reason)}"):
        parse_hostport(text, "--metrics")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web", ("web", None)),
        ("web:8080", ("web", 8080)),
        ("2001:db8::1", ("2001:db8::1", None)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
    ],
)
def test_optional_port(text: str, expected: tuple[str, int | None]) -> None:
    assert split_host_optport(text) == expected


@pytest.mark.parametrize("text", ["+1", " 1", "1_0", "\u0661", "65536", "0", ""])
def test_port_is_ascii_digits_in_range(text: str) -> None:
    with pytest.raises(Reason):
        port(text)
