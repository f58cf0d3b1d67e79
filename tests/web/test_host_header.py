"""The Host field is validated (security issue 16): empty, with a space or `/`, repeated, or
missing in HTTP/1.1 is 400; HTTP/1.0 without Host is served; host[:port] of a reg-name,
IPv4 address or [IPv6] literal is served. Raw requests against a real `meshkit web` process
over both fast paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.web.http1 import HttpError, scan_head, valid_host
from support.web_proc_util import exchange, static_site


@pytest.fixture
def port(fastpath_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    with static_site(tmp_path, fastpath_env) as p:
        yield p


def _get(fields: str, version: str = "1.1") -> bytes:
    return f"GET / HTTP/{version}\r\n{fields}Connection: close\r\n\r\n".encode("latin-1")


@pytest.mark.parametrize(
    "fields",
    [
        "Host:\r\n",
        "Host: \r\n",
        "Host: a b\r\n",
        "Host: a/b\r\n",
        "Host: x/../y\r\n",
        "Host: a@b\r\n",
        "Host: [::1\r\n",
        "Host: a:8x\r\n",
        "Host: a\r\nHost: a\r\n",
        "Host: a\r\nHost: b\r\n",
        "",
    ],
)
def test_bad_host_is_400(port: int, fields: str) -> None:
    status, _ = exchange(port, _get(fields))
    assert status == 400


@pytest.mark.parametrize(
    "fields",
    ["Host: 127.0.0.1\r\n", "Host: localhost:8080\r\n", "Host: [::1]:80\r\n", "Host: a.b-c_d.\r\n"],
)
def test_good_host_is_served(port: int, fields: str) -> None:
    # the site is 127.0.0.1:PORT: other names pass validation and find no site (404)
    status, data = exchange(port, _get(fields))
    if "127.0.0.1" in fields:
        assert status == 200 and data.endswith(b"hello\n")
    else:
        assert status == 404


def test_http10_without_host_is_served(port: int) -> None:
    status, _ = exchange(port, _get("", "1.0"))
    assert status in (200, 404)  # past validation: the default site or none


def test_valid_host_grammar() -> None:
    good = ["a", "a.example", "a.example:80", "x:", "198.51.100.1:8080", "[2001:db8::1]"]
    good.append("[fe80::1%25lo]:1")
    bad = ["", " ", "a b", "a/b", "a@b", "[::1", "::1", "a:b", "a\tb", "é", "a:80:80"]
    assert all(valid_host(h) for h in good)
    assert not any(valid_host(h) for h in bad)
    with pytest.raises(HttpError):
        scan_head([(b"Host", b"")], "1.0")
