"""Caddy v1's own grammar tests, ported: the lexer (caddyfile/lexer_test.go), server blocks,
imports, snippets and environment variables (caddyfile/parse_test.go), and site addresses
(caddyhttp/httpserver/plugin_test.go TestStandardizeAddress). Each case names its Go test."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- site addresses (caddyhttp/httpserver/plugin_test.go TestStandardizeAddress) ---------------

# (input, scheme, host, port, path) as v1's test expects them, or None where v1 refuses it;
# v1's "" scheme, port and path are meshkit's http, the default port (2015) and "/"
ADDRESSES: list[tuple[str, tuple[str, str, str, str] | None]] = [
    ("localhost", ("", "localhost", "", "")),
    ("localhost:1234", ("", "localhost", "1234", "")),
    ("localhost:", ("", "localhost", "", "")),
    ("0.0.0.0", ("", "0.0.0.0", "", "")),
    ("127.0.0.1:1234", ("", "127.0.0.1", "1234", "")),
    (":1234", ("", "", "1234", "")),
    ("[::1]", ("", "::1", "", "")),
    ("[::1]:1234", ("", "::1", "1234", "")),
    (":", ("", "", "", "")),
    ("localhost:http", ("http", "localhost", "80", "")),
    ("localhost:https", ("https", "localhost", "443", "")),
    (":http", ("http", "", "80", "")),
    (":https", ("https", "", "443", "")),
    ("http://localhost:https", None),
    ("http://localhost:http", None),
    ("http://localhost:443", None),
    ("https://localhost:80", None),
    ("http://localhost", ("http", "localhost", "80", "")),
    ("https://localhost", ("https", "localhost", "443", "")),
    ("http://127.0.0.1", ("http", "127.0.0.1", "80", "")),
    ("https://127.0.0.1", ("https", "127.0.0.1", "443", "")),
    ("http://[::1]", ("http", "::1", "80", "")),
    ("http://localhost:1234", ("http", "localhost", "1234", "")),
    ("https://127.0.0.1:1234", ("https", "127.0.0.1", "1234", "")),
    ("http://[::1]:1234", ("http", "::1", "1234", "")),
    ("", ("", "", "", "")),
    ("::1", None),
    ("localhost::", None),
    ("#$%@", None),
    ("host/path", ("", "host", "", "/path")),
    ("http://host/", ("http", "host", "80", "/")),
    ("//asdf", ("", "asdf", "", "")),
    (":1234/asdf", ("", "", "1234", "/asdf")),
    ("http://host/path", ("http", "host", "80", "/path")),
    ("https://host:443/path/foo", ("https", "host", "443", "/path/foo")),
    ("host:80/path", ("", "host", "80", "/path")),
    ("host:https/path", ("https", "host", "443", "/path")),
]


@pytest.mark.parametrize(
    ("text", "want"),
    ADDRESSES,
    ids=[f"TestStandardizeAddress#{i} {t!r}" for i, (t, _) in enumerate(ADDRESSES)],
)
def test_v1_standardize_address(text: str, want: tuple[str, str, str, str] | None) -> None:
    from meshkit.web.caddyfile.address import AddressError, parse_address

    if want is None:
        with pytest.raises(AddressError):
            parse_address(text)
        return
    got = parse_address(text)
    scheme, host, port, path = want
    default = {"http": 80, "https": 443}.get(scheme, 2015)
    v1_scheme = scheme or ("https" if port == "443" else "http")
    assert (got.scheme, got.host, got.port, got.path) == (
        v1_scheme,
        host,
        int(port) if port else default,
        path or "/",
    )


# --- tokens (caddyfile/lexer_test.go TestLexer) ------------------------------------------------

LEXER: list[tuple[str, list[tuple[int, str]]]] = [
    ("host:123", [(1, "host:123")]),
    ("host:123\n\n\t\t\t\t\tdirective", [(1, "host:123"), (3, "directive")]),
    ("host:123 {\n\tdirective\n}", [(1, "host:123"), (1, "{"), (2, "directive"), (3, "}")]),
    ("host:123 { directive }", [(1, "host:123"), (1, "{"), (1, "directive"), (1, "}")]),
    (
        "host:123 {\n\t#comment\n\tdirective\n\t# comment\n\tfoobar # another comment\n}",
        [(1, "host:123"), (1, "{"), (3, "directive"), (5, "foobar"), (6, "}")],
    ),
    ('a "quoted value" b\n\tfoobar', [(1, "a"), (1, "quoted value"), (1, "b"), (2, "foobar")]),
    ('A "quoted \\"value\\" inside" B', [(1, "A"), (1, 'quoted "value" inside'), (1, "B")]),
    ('"don\'t\\escape"', [(1, "don't\\escape")]),
    ('"don\'t\\\\escape"', [(1, "don't\\\\escape")]),
    (
        'A "quoted value with line\n\t\t\t\t\tbreak inside" {\n\tfoobar\n}',
        [
            (1, "A"),
            (1, "quoted value with line\n\t\t\t\t\tbreak inside"),
            (2, "{"),
            (3, "foobar"),
            (4, "}"),
        ],
    ),
    ('"C:\\php\\php-cgi.exe"', [(1, "C:\\php\\php-cgi.exe")]),
    ('empty "" string', [(1, "empty"), (1, ""), (1, "string")]),
    ("skip those\r\nCR characters", [(1, "skip"), (1, "those"), (2, "CR"), (2, "characters")]),
]


@pytest.mark.parametrize(("text", "want"), LEXER, ids=[f"TestLexer#{i}" for i in range(len(LEXER))])
def test_v1_lexer(text: str, want: list[tuple[int, str]]) -> None:
    from meshkit.web.caddyfile.lexer import lex

    assert [(t.line, t.text) for t in lex(text, "Testfile")] == want


# --- server blocks (caddyfile/parse_test.go) ---------------------------------------------------

# (input, accepted, keys per block, tokens per directive of the first block)
PARSE_ONE: list[tuple[str, bool, list[str], dict[str, int]]] = [
    ("localhost", True, ["localhost"], {}),
    ("localhost\n  dir1", True, ["localhost"], {"dir1": 1}),
    ("localhost:1234\n  dir1 foo bar", True, ["localhost:1234"], {"dir1": 3}),
    ("localhost {\n    dir1\n  }", True, ["localhost"], {"dir1": 1}),
    (
        "localhost:1234 {\n    dir1 foo bar\n    dir2\n  }",
        True,
        ["localhost:1234"],
        {"dir1": 3, "dir2": 1},
    ),
    (
        "http://localhost https://localhost\n  dir1 foo bar",
        True,
        ["http://localhost", "https://localhost"],
        {"dir1": 3},
    ),
    (
        "http://localhost https://localhost {\n    dir1 foo bar\n  }",
        True,
        ["http://localhost", "https://localhost"],
        {"dir1": 3},
    ),
    (
        "http://localhost, https://localhost {\n    dir1 foo bar\n  }",
        True,
        ["http://localhost", "https://localhost"],
        {"dir1": 3},
    ),
    ("http://localhost, {\n  }", False, [], {}),
    (
        "host1:80, http://host2.com\n  dir1 foo bar\n  dir2 baz",
        True,
        ["host1:80", "http://host2.com"],
        {"dir1": 3, "dir2": 2},
    ),
    (
        "http://host1.com,\n  http://host2.com,\n  https://host3.com",
        True,
        ["http://host1.com", "http://host2.com", "https://host3.com"],
        {},
    ),
    (
        "http://host1.com:1234, https://host2.com\n  dir1 foo {\n    bar baz\n  }\n  dir2",
        True,
        ["http://host1.com:1234", "https://host2.com"],
        {"dir1": 6, "dir2": 1},
    ),
    (
        "127.0.0.1\n  dir1 {\n    bar baz\n  }\n  dir2 {\n    foo bar\n  }",
        True,
        ["127.0.0.1"],
        {"dir1": 5, "dir2": 5},
    ),
    ("localhost\n  dir1 {\n    foo", False, [], {}),
    ("localhost\n  dir1 {\n  }", True, ["localhost"], {"dir1": 3}),
    ("localhost\n  dir1 {\n  } }", False, [], {}),
    (
        "localhost\n  dir1 {\n    nested {\n      foo\n    }\n  }\n  dir2 foo bar",
        True,
        ["localhost"],
        {"dir1": 7, "dir2": 3},
    ),
    ("", True, [], {}),
    ("import testdata/not_found.txt", False, [], {}),
    # TestParseAll
    ("localhost:1234, http://host2", True, ["localhost:1234", "http://host2"], {}),
    ("localhost:1234, http://host2,", False, [], {}),
    ("import notfound/*", True, [], {}),
    ("import notfound/file.conf", False, [], {}),
]


@pytest.mark.parametrize(
    ("text", "ok", "keys", "tokens"),
    PARSE_ONE,
    ids=[f"TestParseOneAndImport/TestParseAll {t!r}" for t, *_ in PARSE_ONE],
)
def test_v1_parse_one(
    text: str, ok: bool, keys: list[str], tokens: dict[str, int], tmp_path: Path
) -> None:
    from meshkit.web.caddyfile.parser import parse_text

    result = parse_text(text, path=str(tmp_path / "Caddyfile"))
    assert (not result.errors) == ok, result.errors
    if not ok:
        return
    got_keys = [k.text for k in result.blocks[0].keys] if result.blocks else []
    assert got_keys == keys
    if result.blocks:
        assert {k: len(v) for k, v in result.blocks[0].tokens.items()} == tokens


def test_v1_parse_all_blocks() -> None:
    """TestParseAll#2 and #5: several blocks, each with its keys."""
    from meshkit.web.caddyfile.parser import parse_text

    for text, want in [
        (
            "localhost:1234 {\n  }\n  localhost:2015 {\n  }",
            [["localhost:1234"], ["localhost:2015"]],
        ),
        (
            "http://host1.com, http://host2.com {\n  }\n"
            "  https://host3.com, https://host4.com {\n  }",
            [["http://host1.com", "http://host2.com"], ["https://host3.com", "https://host4.com"]],
        ),
    ]:
        result = parse_text(text)
        assert not result.errors
        assert [[k.text for k in b.keys] for b in result.blocks] == want


def test_v1_environment_replacement() -> None:
    """TestEnvironmentReplacement, each of its inputs."""
    from meshkit.web.caddyfile.parser import parse_text

    env = {"PORT": "8080", "ADDRESS": "servername.com", "FOOBAR": "foobar"}

    def key(text: str) -> str:
        return parse_text(text, environ=env).blocks[0].keys[0].text

    def arg(text: str) -> str:
        return parse_text(text, environ=env).blocks[0].tokens["dir1"][1].text

    assert key("{$ADDRESS}") == "servername.com"
    assert key("{$ADDRESS}:{$PORT}") == "servername.com:8080"
    assert key("{%ADDRESS%}:{$PORT}") == "servername.com:8080"
    assert key("{$ADDRESS}:{%PORT%}") == "servername.com:8080"
    assert key(":{%PORT%}\ndir1 {$FOOBAR}") == ":8080"
    assert arg(":{%PORT%}\ndir1 {$FOOBAR}") == "foobar"
    assert arg(":{%PORT%}\ndir1 {%ADDRESS%}/{%FOOBAR%}") == "servername.com/foobar"
    assert arg(":1234\ndir1 {%ADDRESS}") == "{%ADDRESS}"
    assert key(":{$PORT$}") == ":"
    assert arg(':1234\ndir1 "Test {$FOOBAR} test"') == "Test foobar test"


def test_v1_macro() -> None:
    """TestMacro: a snippet imported into a site brings its directives."""
    from meshkit.web.caddyfile.parser import parse_text

    result = parse_text(
        "(common) {\n\tgzip foo\n\terrors stderr\n\n}\t\nhttp://example.com {\n\timport common\n}\n"
    )
    assert not result.errors
    assert [[k.text for k in b.keys] for b in result.blocks] == [["http://example.com"]]
    tokens = result.blocks[0].tokens
    assert sorted(tokens) == ["errors", "gzip"]
    assert (tokens["gzip"][0].text, tokens["errors"][1].text) == ("gzip", "stderr")


def test_v1_parse_one_empty_quoted_key_is_a_documented_difference() -> None:
    """TestParseOneAndImport `""`: v1 dropped an empty quoted address, leaving a block with no
    address that served nothing. Documented difference: meshkit takes `""` as the catch-all
    address (any host, the default port), which is what the empty address means elsewhere."""
    from meshkit.web.caddyfile.parser import parse_text

    result = parse_text('""')
    assert not result.errors
    assert [[k.text for k in b.keys] for b in result.blocks] == [[""]]
