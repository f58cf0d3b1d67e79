"""Grammar cases in the spirit of Caddy v1's setup tests (written before the real tests were at
hand; checked against v1's source since: the cases v1 itself decided otherwise are marked as
documented differences below, and tests/web/test_caddy_v1_setup_cases.py holds v1's own
inputs and outcomes). They check the token grammar (issue 22): a block is
a stream of tokens (`gzip { level 9 }` on one line, a `}` on an option's line), and what an
option leaves unread on its line is read as the next option (Caddy's NextBlock), so a bad
value there is rejected and a good one is taken, never silently dropped."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.web.caddyfile.load import load_text


def load(body: str) -> tuple[dict[str, Any], list[str]]:
    config = load_text(f":2015 {{\n{body}\n}}\n")
    if config.errors:
        return {}, [str(e) for e in config.errors]
    return config.sites[0].directives, []


def accepted(body: str) -> dict[str, Any]:
    dirs, errs = load(body)
    assert not errs, errs
    return dirs


def rejected(body: str) -> str:
    _, errs = load(body)
    assert errs, f"accepted: {body!r}"
    assert errs[0].startswith("Caddyfile:"), errs[0]
    return errs[0]


# --- gzip (caddyhttp/gzip/setup_test.go) ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "gzip",
        "gzip {\n not /file\n ext .html\n level 1\n min_length 100\n}",
        "gzip {\n not /file\n ext *\n level 1\n}",
        "gzip { level 9 }",
        "gzip {\n level 9 }",
        "gzip { level 3 not /a /b }",
    ],
)
def test_gzip_accepted(body: str) -> None:
    accepted(body)


def test_gzip_one_line_block_values() -> None:
    rule = accepted("gzip { level 9 min_length 10 }")["gzip"].rules[0]
    assert (rule.level, rule.min_length) == (9, 10)
    rule = accepted("gzip {\n level 4 }")["gzip"].rules[0]
    assert rule.level == 4


@pytest.mark.parametrize(
    "body",
    [
        "gzip {\n not /file\n ext .html\n level 1\n min_length ab\n}",
        "gzip {\n not\n}",
        "gzip {\n not /\n}",
        "gzip {\n not file\n}",
        "gzip {\n ext\n}",
        "gzip {\n ext html\n}",
        "gzip {\n level\n}",
        "gzip {\n level 5 6\n}",  # `6` is read as an option
        "gzip {\n min_length 0\n}",
        "gzip {\n foo\n}",
        # `not` and `ext` take the rest of the line (RemainingArgs), so `ext` is a bad path
        "gzip { not /a /b ext .html }",
    ],
)
def test_gzip_rejected(body: str) -> None:
    rejected(body)


# --- proxy (caddyhttp/proxy/setup_test.go, upstream_test.go) ----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "proxy / localhost:8080",
        "proxy / localhost:8080 localhost:8081",
        "proxy / localhost:8080 {\n policy round_robin\n}",
        "proxy / localhost:8080 {\n policy header X-Sticky\n}",
        "proxy / localhost:8080 {\n fail_timeout 5s\n max_fails 2\n}",
        "proxy / localhost:8080 {\n health_check /health\n health_check_interval 10s\n"
        " health_check_timeout 20s\n health_check_port 8081\n}",
        "proxy / localhost:8080 {\n header_upstream X-Custom value\n header_downstream -Server\n}",
        "proxy / localhost:8080 {\n transparent\n websocket\n insecure_skip_verify\n}",
        "proxy / localhost:8080 {\n without /api\n except /a /b\n}",
        "proxy / localhost:8080 { transparent websocket }",
        "proxy / localhost:8080 {\n try_duration 5s try_interval 100ms }",
    ],
)
def test_proxy_accepted(body: str) -> None:
    accepted(body)


def test_proxy_leftover_tokens_are_the_next_option() -> None:
    rule = accepted("proxy / localhost:8080 {\n health_check / health_check_port 9002\n}")[
        "proxy"
    ].rules[0]
    assert (rule.health_check, rule.health_check_port) == ("/", 9002)
    rule = accepted("proxy / localhost:8080 { transparent websocket }")["proxy"].rules[0]
    assert rule.transparent and rule.websocket
    rule = accepted("proxy / localhost:8080 {\n fail_timeout 5s max_fails 3 }")["proxy"].rules[0]
    assert (rule.fail_timeout, rule.max_fails) == (5.0, 3)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("proxy / localhost:8080 {\n health_check / health_check_port abc\n}", "abc"),
        ("proxy / localhost:8080 {\n health_check_port -1\n}", "-1"),
        ("proxy / localhost:8080 {\n fail_timeout 5s extra\n}", "'extra'"),
        ("proxy / localhost:8080 {\n without /api extra\n}", "'extra'"),
        ("proxy / localhost:8080 {\n max_fails 2 3\n}", "'3'"),
        ("proxy / localhost:8080 {\n max_fails 0\n}", "max_fails"),
        ("proxy / localhost:8080 {\n policy nope\n}", "nope"),
        ("proxy / localhost:8080 {\n fail_timeout\n}", "fail_timeout"),
        ("proxy / localhost:8080 {\n health_check_interval abc\n}", "abc"),
        ("proxy / localhost:8080 {\n unknown_prop x\n}", "unknown_prop"),
        ("proxy / localhost:8080 {\n header_upstream\n}", "header_upstream"),
        ("proxy", "proxy"),
    ],
)
def test_proxy_rejected(body: str, text: str) -> None:
    assert text in rejected(body)


def test_leftover_error_names_the_option_that_left_it() -> None:
    err = rejected("proxy / localhost:8080 {\n max_fails 2 3\n}")
    assert err.startswith("Caddyfile:3 - ")
    assert "it follows 'max_fails 2' on the same line" in err


# --- fastcgi (caddyhttp/fastcgi/setup_test.go) -----------------------------------------------


def test_fastcgi_block_values() -> None:
    rule = accepted(
        "fastcgi / 127.0.0.1:9000 {\n split .html\n index index.html\n env A b\n"
        " connect_timeout 5s read_timeout 6s }"
    )["fastcgi"].rules[0]
    assert (rule.split, rule.index, rule.env) == ([".html"], ["index.html"], [("A", "b")])
    assert (rule.connect_timeout, rule.read_timeout) == (5.0, 6.0)


@pytest.mark.parametrize(
    "body",
    [
        "fastcgi / 127.0.0.1:9000 {\n connect_timeout BADVALUE\n}",
        "fastcgi / 127.0.0.1:9000 {\n read_timeout 5s extra\n}",
        "fastcgi / 127.0.0.1:9000 {\n index\n}",
        "fastcgi /",
    ],
)
def test_fastcgi_rejected(body: str) -> None:
    rejected(body)


# --- header, mime, errors, log, redir, rewrite ------------------------------------------------


def test_header_block_on_one_line() -> None:
    # A documented difference, not v1's behaviour: v1's RemainingArgs read the `}` as a second
    # value and refused this (see tests/web/test_caddy_v1_setup_cases.py, DISPENSER)
    rule = accepted("header / { X-A a }")["header"].rules[0]
    assert [(h.name, h.value) for h in rule.headers] == [("X-A", "a")]


def test_mime_pairs_on_one_line() -> None:
    assert accepted("mime { .a text/a .b text/b }")["mime"] == {".a": "text/a", ".b": "text/b"}


@pytest.mark.parametrize("body", ["mime {\n .a\n}", "mime {\n a text/a\n}"])
def test_mime_rejected(body: str) -> None:
    rejected(body)


def test_errors_block_closing_on_option_line() -> None:
    # A documented difference, not v1's behaviour: v1 read `500.html }` as two values and
    # refused this (see tests/web/test_caddy_v1_setup_cases.py, DISPENSER)
    cfg = accepted("errors {\n 404 404.html\n 500 500.html }")["errors"]
    assert cfg.pages == {"404": "404.html", "500": "500.html"}


# `99 x.html`: v1 took it (Atoi, no range check) and never used it; refusing it is a documented
# difference (test_caddy_v1_setup_cases.py)
@pytest.mark.parametrize("body", ["errors {\n 404\n}", "errors {\n 99 x.html\n}"])
def test_errors_rejected(body: str) -> None:
    rejected(body)


def test_rewrite_block_tokens() -> None:
    # v1 accepted this too, but rewrote to "/b }" (its RemainingArgs took the brace)
    rule = accepted("rewrite { regexp ^/a to /b }")["rewrite"].rules[0]
    assert (rule.regexp, rule.to) == ("^/a", ["/b"])


@pytest.mark.parametrize(
    "body",
    [
        "rewrite {\n regexp\n to /b\n}",
        "rewrite {\n regexp a b\n to /b\n}",  # `b` is read as an option
        "rewrite {\n if {path} is\n to /b\n}",
    ],
)
def test_rewrite_rejected(body: str) -> None:
    rejected(body)
