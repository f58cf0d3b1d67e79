"""Placeholders: compiled templates, Caddy v1's names and rules, `if` conditions."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.web.message import Headers, Request, Response
from meshkit.web.placeholders import (
    CompiledConditions,
    Condition,
    Conditions,
    compile_template,
    condition_error,
    format_when,
    go_duration,
    parse_parts,
    replace,
)


def make_request(**kw: object) -> Request:
    defaults: dict[str, object] = {
        "method": "GET",
        "uri": "/a%20b/c.html?x=1&y=two",
        "path": "/a b/c.html",
        "query": "x=1&y=two",
        "headers": Headers(
            [
                ("Host", "www.example.com:8080"),
                ("Referer", "http://example.com/"),
                ("User-Agent", "curl/8"),
                ("Cookie", "session=abc; theme=dark"),
                ("X-Multi", "one"),
                ("x-multi", "two"),
            ]
        ),
        "host": "www.example.com:8080",
        "remote_addr": "192.0.2.7",
        "remote_port": 50123,
        "server_port": 8080,
    }
    defaults.update(kw)
    return Request(**defaults)  # type: ignore[arg-type]


def render(fmt: str, req: Request | None = None, **kw: object) -> str:
    return compile_template(fmt).render(req or make_request(), **kw)  # type: ignore[arg-type]


def test_request_placeholders() -> None:
    req = make_request()
    assert render("{method} {scheme} {host} {hostonly}", req) == (
        "GET http www.example.com:8080 www.example.com"
    )
    assert render("{path}|{query}|{uri}|{proto}", req) == (
        "/a b/c.html|x=1&y=two|/a%20b/c.html?x=1&y=two|HTTP/1.1"
    )
    assert render("{remote}:{port} {server_port}", req) == "192.0.2.7:50123 8080"
    assert render("{file} {dir}", req) == "c.html /a b/"
    assert render("{path_escaped}", req) == "%2Fa+b%2Fc.html"
    assert render("{label1}.{label2}.{label3}.{label4}", req) == "www.example.com."


def test_dynamic_placeholders() -> None:
    req = make_request()
    assert render("{>Referer} {>user-agent}", req) == "http://example.com/ curl/8"
    assert render("{>X-Multi}", req) == "one,two"
    assert render("{~session}/{~theme}/{~none}", req) == "abc/dark/"
    assert render("{?x}-{?y}-{?z}", req) == "1-two-"


def test_response_placeholders() -> None:
    req = make_request(start_time=1000.0)
    resp = Response(200, Headers([("Content-Type", "text/html"), ("X-A", "b")]))
    tpl = compile_template("{status} {size} {latency} {latency_ms} {<Content-Type} {<x-a}")
    assert tpl.render(req, resp, size=123, now=1000.0015) == "200 123 2ms 1 text/html b"
    # no response yet: empty
    assert compile_template("[{status}][{size}]", "-").render(req) == "[-][-]"


def test_rewritten_request_keeps_original_path_and_uri() -> None:
    req = make_request()
    req.path, req.uri, req.query = "/index.php", "/index.php?x=1&y=two", "x=1&y=two"
    assert render("{path} {uri}", req) == "/a b/c.html /a%20b/c.html?x=1&y=two"
    assert render("{rewrite_path} {rewrite_uri}", req) == "/index.php /index.php?x=1&y=two"


def test_empty_value_and_unknown_names() -> None:
    req = make_request(headers=Headers())
    tpl = compile_template('{remote} - {user} "{>Referer}" {nope}', "-")
    assert tpl.render(req) == '192.0.2.7 - - "-" -'
    req.vars["user"] = "alice"
    assert tpl.render(req) == '192.0.2.7 - alice "-" -'


def test_vars_and_extra_override() -> None:
    req = make_request()
    req.vars["upstream"] = "http://127.0.0.1:9000"
    assert render("{upstream}", req) == "http://127.0.0.1:9000"
    assert render("{remote}", req, extra={"remote": "192.0.2.0"}) == "192.0.2.0"
    assert render("{1}-{2}", req, extra={"1": "a", "2": "b"}) == "a-b"


def test_escaped_and_unpaired_braces() -> None:
    req = make_request()
    assert render(r"\{method\} {method}", req) == "{method} GET"
    assert render("a {method", req) == "a {method"
    assert render("no placeholders", req) == "no placeholders"
    assert compile_template("plain").static == "plain"
    assert parse_parts("x{a}y{b}") == [(False, "x"), (True, "a"), (False, "y"), (True, "b")]


def test_when_formats() -> None:
    t = time.mktime((2026, 1, 2, 15, 4, 5, 0, 0, -1))
    text = format_when(t)
    assert text.startswith("02/Jan/2026:15:04:05 ")
    assert len(text.split(" ")[1]) == 5 and text.split(" ")[1][0] in "+-"
    req = make_request()
    assert render("{when_unix}", req, now=t) == str(int(t))
    assert render("{when_iso}", req, now=0.0 + 86400) == "1970-01-02T00:00:00Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.000000512, "512ns"),
        (0.0000015, "2µs"),
        (0.0000123, "12µs"),
        (0.0012345, "1ms"),  # Caddy rounds to ms above 1ms
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (61.25, "1m1.25s"),
        (3723, "1h2m3s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_request_id_is_stable_per_request() -> None:
    req = make_request()
    first = render("{request_id}", req)
    assert first and render("{request_id}", req) == first
    assert render("{request_id}", make_request()) != first


def test_replace_helper_and_cache() -> None:
    req = make_request()
    assert (
        replace("https://{host}{uri}", req) == "https://www.example.com:8080/a%20b/c.html?x=1&y=two"
    )
    assert compile_template("{method}") is compile_template("{method}")


@pytest.mark.parametrize(
    ("a", "op", "b", "expected"),
    [
        ("{method}", "is", "GET", True),
        ("{method}", "not", "GET", False),
        ("{path}", "has", "b/c", True),
        ("{path}", "starts_with", "/a", True),
        ("{path}", "ends_with", ".html", True),
        ("{path}", "match", r"^/a\s", True),
        ("{path}", "not_match", r"\.php$", True),
        ("{>User-Agent}", "not_has", "curl", False),
        ("{?x}", "is", "1", True),
    ],
)
def test_conditions(a: str, op: str, b: str, expected: bool) -> None:
    assert condition_error(op, b) is None
    cond = CompiledConditions(Conditions([Condition(a, op, b)]))
    assert cond.match(make_request()) is expected


def test_condition_and_or() -> None:
    yes = Condition("{method}", "is", "GET")
    no = Condition("{method}", "is", "POST")
    req = make_request()
    assert not CompiledConditions(Conditions([yes, no], "and")).match(req)
    assert CompiledConditions(Conditions([yes, no], "or")).match(req)
    assert CompiledConditions(Conditions()).match(req)


def test_condition_errors() -> None:
    assert condition_error("equals", "x") is not None
    assert condition_error("match", "(") is not None
    assert condition_error("not_starts_with", "x") is None


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=60))
def test_text_without_braces_renders_as_itself(text: str) -> None:
    assert render(text) == text


@given(st.lists(st.sampled_from(["{method}", "{path}", "x", " ", "\\{", "\\}", "{nope}"])))
def test_parts_render_like_one_at_a_time(pieces: list[str]) -> None:
    req = make_request()
    whole = render("".join(pieces), req)
    assert whole == "".join(render(p, req) for p in pieces)
