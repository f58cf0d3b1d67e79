"""The router: Host header and path -> the site's handler (virtual hosts on one port)."""

from __future__ import annotations

import pytest

from meshkit.web.caddyfile.address import parse_address
from meshkit.web.message import Headers, Request, Response
from meshkit.web.router import Route, Router, host_candidates, normalize_host


def answer(name: str) -> Route:
    def handler(req: Request) -> Response:
        return Response.text(200, name)

    return Route(parse_address(name), handler)


def body(router: Router, host: str, path: str = "/") -> str:
    resp = router(Request("GET", path, path, host=host, headers=Headers([("Host", host)])))
    assert isinstance(resp, Response)
    if resp.status != 200:
        assert resp.default_error
        return str(resp.status)
    assert isinstance(resp.body, bytes)
    return resp.body.decode()


@pytest.fixture
def router() -> Router:
    return Router(
        answer(a)
        for a in [
            "example.com",
            "example.com/api",
            "example.com/api/v2",
            "*.example.com",
            "*.*.example.com",
            "special.test.example.com",
            "/catch",
            "other.test/only",
        ]
    )


@pytest.mark.parametrize(
    ("host", "path", "site"),
    [
        ("example.com", "/", "example.com"),
        ("EXAMPLE.com:2015", "/x", "example.com"),
        ("example.com.", "/", "example.com"),
        ("example.com", "/api", "example.com/api"),
        ("example.com", "/apix", "example.com/api"),  # plain prefix, as in Caddy
        ("example.com", "/api/v2/users", "example.com/api/v2"),
        ("www.example.com", "/", "*.example.com"),
        ("a.b.example.com", "/", "*.*.example.com"),
        ("special.test.example.com", "/", "special.test.example.com"),
        ("other.test.example.com", "/", "*.*.example.com"),
        ("unknown.test", "/catch/me", "/catch"),
        ("", "/catch", "/catch"),
        ("other.test", "/only/x", "other.test/only"),
        # the host has sites but none for this path: the empty host still may answer
        ("other.test", "/catch", "/catch"),
    ],
)
def test_match(router: Router, host: str, path: str, site: str) -> None:
    assert body(router, host, path) == site


def test_unknown_host_is_404(router: Router) -> None:
    assert body(router, "nothing.test", "/") == "404"
    assert body(router, "other.test", "/elsewhere") == "404"
    assert body(router, "a.b.c.example.com", "/") == "404"  # * is one label


def test_empty_host_site_matches_everything() -> None:
    r = Router([answer(":2015"), answer("a.test")])
    assert body(r, "a.test") == "a.test"
    assert body(r, "b.test") == ":2015"
    assert body(r, "") == ":2015"
    assert body(r, "[::1]:2015") == ":2015"


def test_single_catch_all_site_fast_path() -> None:
    r = Router([answer(":8080")])
    assert body(r, "anything", "/deep/path") == ":8080"
    assert body(r, "", "*") == ":8080"


def test_ipv6_host() -> None:
    r = Router([answer("[::1]:8080")])
    assert body(r, "[::1]:8080") == "[::1]:8080"
    assert body(r, "[::2]") == "404"


def test_ip_host() -> None:
    r = Router([answer("127.0.0.1:8080"), answer("localhost:8080")])
    assert body(r, "127.0.0.1:8080") == "127.0.0.1:8080"
    assert body(r, "localhost") == "localhost:8080"
    assert body(r, "127.0.0.2") == "404"


def test_routes_listed() -> None:
    r = Router([answer("a.test"), answer("b.test/x")])
    assert sorted(x.address.original for x in r.routes) == ["a.test", "b.test/x"]


def test_helpers() -> None:
    assert normalize_host(" Example.COM:80 ") == "example.com"
    assert normalize_host("[::1]:80") == "::1"
    assert normalize_host("::1") == "::1"
    assert host_candidates("a.b.c") == ["a.b.c", "*.b.c", "*.*.c", "*.*.*", ""]
    assert host_candidates("") == [""]
    assert host_candidates("::1") == ["::1", ""]
