"""The Caddyfile parser (blocks, snippets, imports, env), addresses, loading into Sites, and
the chain builder (with stub directives)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.base.errors import MeshkitError
from meshkit.web import directives
from meshkit.web.caddyfile.address import AddressError, parse_address
from meshkit.web.caddyfile.load import (
    CaddyfileErrors,
    Defaults,
    default_config,
    load_file,
    load_lines,
    load_text,
)
from meshkit.web.caddyfile.parser import ParseResult, parse_text
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.message import Handler, Headers, Request, Response, resolve
from meshkit.web.site import Address, Site

KNOWN = {"root", "gzip", "log", "header", "redir", "browse", "index", "status", "errors"}


def check(name: str) -> str | None:
    return None if name in KNOWN else f"unknown directive {name!r}"


def parse(src: str, path: str | None = None, **env: str) -> ParseResult:
    return parse_text(src, "Caddyfile", path=path, check_directive=check, environ=env)


def shape(result: ParseResult) -> list[tuple[list[str], dict[str, list[str]]]]:
    return [
        ([k.text for k in b.keys], {n: [t.text for t in ts] for n, ts in b.tokens.items()})
        for b in result.blocks
    ]


def errors(result: ParseResult) -> list[str]:
    return [str(e) for e in result.errors]


# --- blocks ----------------------------------------------------------------------------------


def test_one_site_without_braces() -> None:
    r = parse("localhost:8080\ngzip\nlog ./2015.log\n")
    assert errors(r) == []
    assert shape(r) == [(["localhost:8080"], {"gzip": ["gzip"], "log": ["log", "./2015.log"]})]


def test_several_sites_with_braces() -> None:
    r = parse("a.example.com {\n  gzip\n}\n\nb.example.com:81 {\n  root /srv\n}\n")
    assert errors(r) == []
    assert shape(r) == [
        (["a.example.com"], {"gzip": ["gzip"]}),
        (["b.example.com:81"], {"root": ["root", "/srv"]}),
    ]


def test_addresses_with_spaces_and_commas() -> None:
    r = parse("a.test b.test,c.test, d.test,\n  e.test\n{\n gzip\n}\n")
    assert errors(r) == []
    assert shape(r)[0][0] == ["a.test", "b.test", "c.test", "d.test", "e.test"]


def test_only_addresses() -> None:
    assert shape(parse(":8080")) == [([":8080"], {})]
    assert shape(parse("")) == []
    assert shape(parse("# nothing\n")) == []


def test_directive_occurrences_and_blocks_collected_in_file_order() -> None:
    src = """:2015 {
    header / X-A a
    gzip {
        level 5
        ext .html {
            nested
        }
    }
    header /b {
        X-B b
    }
}
"""
    r = parse(src)
    assert errors(r) == []
    toks = r.blocks[0].tokens
    assert [t.text for t in toks["header"]] == [
        "header",
        "/",
        "X-A",
        "a",
        "header",
        "/b",
        "{",
        "X-B",
        "b",
        "}",
    ]
    assert [t.text for t in toks["gzip"]] == [
        "gzip",
        "{",
        "level",
        "5",
        "ext",
        ".html",
        "{",
        "nested",
        "}",
        "}",
    ]
    assert [t.line for t in toks["header"]][:4] == [2, 2, 2, 2]


def test_one_line_site() -> None:
    r = parse(":80 { gzip }\n:81 { root /x }")
    assert errors(r) == []
    assert shape(r) == [([":80"], {"gzip": ["gzip"]}), ([":81"], {"root": ["root", "/x"]})]


def test_unknown_directives_all_reported_with_file_line_and_token() -> None:
    r = parse(":80 {\n  gzip\n  gzp on\n  wat {\n    x\n  }\n  root /x\n}\n")
    assert errors(r) == [
        "Caddyfile:3 - unknown directive 'gzp'",
        "Caddyfile:4 - unknown directive 'wat'",
    ]
    # parsing went on after them
    assert shape(r) == [([":80"], {"gzip": ["gzip"], "root": ["root", "/x"]})]


def test_second_site_needs_braces() -> None:
    r = parse("a.test\ngzip\nb.test {\n  gzip\n}\n")
    assert "Caddyfile:3 - unknown directive 'b.test'" in errors(r)


def test_unmatched_braces() -> None:
    r = parse(":80 {\n  gzip\n")
    assert errors(r) == [
        "Caddyfile:2 - unexpected end of file: the site block at Caddyfile:1 has no closing '}'"
    ]
    r = parse(":80 {\n  gzip {\n    level 1\n}\n")
    assert errors(r) == [
        "Caddyfile:4 - unexpected end of file: the site block at Caddyfile:1 has no closing '}'"
    ]
    r = parse(":80\ngzip {\n    level 1\n")
    assert errors(r) == [
        "Caddyfile:2 - unexpected end of file: the block of 'gzip' has no closing '}'"
    ]
    r = parse("}\n")
    assert errors(r) == ["Caddyfile:1 - unexpected '}': no block is open here"]
    r = parse(":80\ngzip\n}\n")
    assert errors(r) == ["Caddyfile:3 - unexpected '}': no block is open here"]


def test_brace_on_its_own_line_is_an_error() -> None:
    r = parse(":80 {\n  gzip\n  {\n    level 1\n  }\n  root /x\n}\n")
    assert errors(r) == [
        "Caddyfile:3 - unexpected '{': a block opens at the end of its directive's line"
    ]
    assert shape(r)[0][1]["root"] == ["root", "/x"]


def test_extra_comma_before_brace() -> None:
    r = parse("a.test, {\n gzip\n}\n")
    assert errors(r) == ["Caddyfile:1 - expected another address after ',' but found '{'"]


def test_trailing_comma_at_end_of_file() -> None:
    r = parse("a.test,")
    assert errors(r) == ["Caddyfile:1 - expected another address after 'a.test,'"]


def test_block_without_address() -> None:
    r = parse("{\n  gzip\n}\n")
    assert errors(r) == ["Caddyfile:1 - a site block needs at least one address before '{'"]


def test_quoted_empty_address_is_the_catch_all() -> None:
    r = parse('"" {\n gzip\n}\n')
    assert shape(r) == [([""], {"gzip": ["gzip"]})]


def test_lexer_error_is_reported() -> None:
    r = parse(':80 {\n  log "open\n}\n')
    assert errors(r) == ["Caddyfile:2 - unterminated quoted string (missing '\"')"]


# --- env -------------------------------------------------------------------------------------


def test_env_in_addresses_and_arguments() -> None:
    r = parse(
        "{$HOST}:{%PORT%} {\n  root {$ROOT}/www\n  log {$UNSET}x\n}\n",
        HOST="example.com",
        PORT="8080",
        ROOT="/srv",
    )
    assert shape(r) == [(["example.com:8080"], {"root": ["root", "/srv/www"], "log": ["log", "x"]})]


def test_env_value_with_spaces_stays_one_token() -> None:
    r = parse(":80\nroot {$DIR}\n", DIR="/my site")
    assert shape(r)[0][1]["root"] == ["root", "/my site"]


# --- snippets --------------------------------------------------------------------------------


def test_snippet_import() -> None:
    src = "(common) {\n  gzip\n  log access.log\n}\n:80 {\n  root /x\n  import common\n}\n"
    r = parse(src)
    assert errors(r) == []
    assert shape(r) == [
        ([":80"], {"root": ["root", "/x"], "gzip": ["gzip"], "log": ["log", "access.log"]})
    ]


def test_snippet_imported_twice_in_a_row_is_two_lines() -> None:
    src = "(g) {\n  gzip\n}\n:80 {\n  import g\n  import g\n  root /x\n}\n"
    r = parse(src)
    assert errors(r) == []
    toks = r.blocks[0].tokens["gzip"]
    assert [t.text for t in toks] == ["gzip", "gzip"]
    d = Dispenser(toks)
    n = 0
    while d.next():
        assert d.remaining_args() == []
        n += 1
    assert n == 2
    assert [t.text for t in r.blocks[0].tokens["root"]] == ["root", "/x"]


def test_snippet_after_a_directive_is_a_new_line() -> None:
    # the snippet's tokens come from earlier lines of the file than the import
    r = parse("(g) {\n  gzip\n}\n:80 {\n  root /x\n  import g\n}\n")
    assert shape(r) == [([":80"], {"root": ["root", "/x"], "gzip": ["gzip"]})]


def test_snippet_with_site_blocks_at_top_level() -> None:
    r = parse("(sites) {\n  a.test {\n    gzip\n  }\n}\nimport sites\nb.test {\n root /x\n}\n")
    assert errors(r) == []
    assert shape(r) == [(["a.test"], {"gzip": ["gzip"]}), (["b.test"], {"root": ["root", "/x"]})]


def test_snippet_import_in_directive_block() -> None:
    r = parse("(lv) {\n  level 9\n}\n:80 {\n  gzip {\n    import lv\n    min_length 10\n  }\n}\n")
    assert errors(r) == []
    assert shape(r)[0][1]["gzip"] == ["gzip", "{", "level", "9", "min_length", "10", "}"]


def test_snippet_used_before_its_definition() -> None:
    r = parse(":80 {\n  import later\n}\n(later) {\n  gzip\n}\n")
    assert errors(r) == [
        "Caddyfile:2 - file to import not found: 'later' "
        "(a snippet must be defined before it is imported)"
    ]


def test_snippet_errors() -> None:
    r = parse("(a) {\n gzip\n}\n(a) {\n log\n}\n")
    assert errors(r) == ["Caddyfile:4 - snippet (a) is defined twice"]
    r = parse("(a)\ngzip\n")
    assert errors(r) == ["Caddyfile:2 - snippet (a) needs a { } block"]
    r = parse("(a) {\n gzip\n")
    assert errors(r) == ["Caddyfile:1 - unexpected end of file: snippet (a) has no '}'"]


def test_snippet_cycle_is_an_error_not_a_hang() -> None:
    r = parse("(a) {\n  gzip\n  import a\n}\n:80 {\n  import a\n}\n")
    assert len(r.errors) == 1
    assert "import cycle" in errors(r)[0] and "(a)" in errors(r)[0]
    assert errors(r)[0].startswith("Caddyfile:3 - ")
    r = parse("(a) {\n  import b\n}\n(b) {\n  import a\n}\n:80 {\n  import a\n}\n")
    assert any("import cycle" in e for e in errors(r))


def test_import_argument_count() -> None:
    r = parse(":80 {\n  import\n  import a b\n  gzip\n}\n")
    assert errors(r) == [
        "Caddyfile:2 - import takes exactly one argument (a file, a glob or a snippet name), got 0",
        "Caddyfile:3 - import takes exactly one argument (a file, a glob or a snippet name), got 2",
    ]
    assert shape(r)[0][1] == {"gzip": ["gzip"]}


# --- file imports ----------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_import_relative_to_the_importing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = write(tmp_path / "conf" / "Caddyfile", ":80 {\n  import sites/common.conf\n}\n")
    write(tmp_path / "conf" / "sites" / "common.conf", "gzip\nimport more/x.conf\n")
    write(tmp_path / "conf" / "sites" / "more" / "x.conf", "log x.log\n")
    monkeypatch.chdir(tmp_path)  # not the Caddyfile's folder
    r = parse_text(main.read_text(), "conf/Caddyfile", path=str(main), check_directive=check)
    assert errors(r) == []
    assert shape(r) == [([":80"], {"gzip": ["gzip"], "log": ["log", "x.log"]})]
    log = r.blocks[0].tokens["log"][0]
    assert log.file == "conf/sites/more/x.conf" and log.line == 1
    assert r.files == [
        str(main.resolve()),
        str((tmp_path / "conf/sites/common.conf").resolve()),
        str((tmp_path / "conf/sites/more/x.conf").resolve()),
    ]


def test_import_of_site_blocks(tmp_path: Path) -> None:
    main = write(tmp_path / "Caddyfile", "import sites/*.caddy\nc.test {\n  gzip\n}\n")
    write(tmp_path / "sites" / "b.caddy", "b.test {\n  root /b\n}\n")
    write(tmp_path / "sites" / "a.caddy", "a.test {\n  root /a\n}\n")
    write(tmp_path / "sites" / "skip.txt", "nonsense {\n")
    r = parse_text(main.read_text(), str(main), path=str(main), check_directive=check)
    assert errors(r) == []
    assert [b.keys[0].text for b in r.blocks] == ["a.test", "b.test", "c.test"]


def test_import_glob_rules(tmp_path: Path) -> None:
    main = write(tmp_path / "Caddyfile", ":80 {\n  import none/*.conf\n  import *.x*\n  gzip\n}\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert errors(r) == ["Caddyfile:3 - import pattern '*.x*' may hold at most one '*'"]
    assert r.warnings == ["Caddyfile:2 - no files match the import pattern 'none/*.conf'"]
    assert shape(r)[0][1] == {"gzip": ["gzip"]}


def test_import_glob_takes_dot_files_and_literal_brackets(tmp_path: Path) -> None:
    write(tmp_path / "d" / ".hidden.conf", "gzip\n")
    write(tmp_path / "d" / "[x].conf", "root /x\n")
    main = write(tmp_path / "Caddyfile", ":80 {\n  import d/*.conf\n}\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert errors(r) == []
    assert shape(r)[0][1] == {"gzip": ["gzip"], "root": ["root", "/x"]}


def test_missing_literal_import_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "Caddyfile", ":80 {\n  import nope.conf\n  gzip\n}\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert errors(r) == ["Caddyfile:2 - file to import not found: 'nope.conf'"]
    assert shape(r)[0][1] == {"gzip": ["gzip"]}


def test_import_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    main = write(tmp_path / "Caddyfile", ":80 {\n  import dir\n}\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert len(r.errors) == 1 and "it is a folder" in errors(r)[0]


def test_file_import_cycle_is_an_error_not_a_hang(tmp_path: Path) -> None:
    main = write(tmp_path / "Caddyfile", ":80 {\n  import a.conf\n}\n")
    write(tmp_path / "a.conf", "gzip\nimport b.conf\n")
    write(tmp_path / "b.conf", "import a.conf\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert len(r.errors) == 1
    msg = errors(r)[0]
    assert msg.startswith("b.conf:1 - import cycle: ") and "a.conf imports" in msg
    assert shape(r)[0][1] == {"gzip": ["gzip"]}


def test_self_import_through_glob(tmp_path: Path) -> None:
    main = write(tmp_path / "Caddyfile", ":80 {\n  gzip\n}\nimport Caddy*\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert len(r.errors) == 1 and "import cycle" in errors(r)[0]


def test_import_from_stdin_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "x.conf", "gzip\n")
    monkeypatch.chdir(tmp_path)
    r = parse_text(":80 {\n  import x.conf\n}\n", "stdin", check_directive=check)
    assert errors(r) == []
    assert r.blocks[0].tokens["gzip"][0].file == "x.conf"


def test_import_path_from_env(tmp_path: Path) -> None:
    write(tmp_path / "x.conf", "gzip\n")
    r = parse_text(
        ":80 {\n  import {$DIR}/x.conf\n}\n",
        "stdin",
        check_directive=check,
        environ={"DIR": str(tmp_path)},
    )
    assert errors(r) == [] and "gzip" in r.blocks[0].tokens


def test_imported_lexer_error_names_the_imported_file(tmp_path: Path) -> None:
    write(tmp_path / "bad.conf", 'log "x\n')
    main = write(tmp_path / "Caddyfile", ":80 {\n  import bad.conf\n}\n")
    r = parse_text(main.read_text(), "Caddyfile", path=str(main), check_directive=check)
    assert errors(r) == ["bad.conf:1 - unterminated quoted string (missing '\"')"]


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "path"),
    [
        ("", "", 2015, "/"),
        (":8080", "", 8080, "/"),
        ("localhost", "localhost", 2015, "/"),
        ("Example.COM:81", "example.com", 81, "/"),
        ("http://example.com", "example.com", 80, "/"),
        ("http://example.com:8080/api/", "example.com", 8080, "/api/"),
        ("example.com/blog", "example.com", 2015, "/blog"),
        ("/blog", "", 2015, "/blog"),
        ("*.example.com", "*.example.com", 2015, "/"),
        ("*.*.example.com:9", "*.*.example.com", 9, "/"),
        ("127.0.0.1:8080", "127.0.0.1", 8080, "/"),
        ("[::1]:8080", "::1", 8080, "/"),
        ("example.com:http", "example.com", 80, "/"),
        ("http://", "", 80, "/"),
        ("example.com.", "example.com", 2015, "/"),
    ],
)
def test_addresses(text: str, host: str, port: int, path: str) -> None:
    a = parse_address(text)
    assert (a.scheme, a.host, a.port, a.path, a.original) == ("http", host, port, path, text)


def test_default_port() -> None:
    assert parse_address("example.com", 8080).port == 8080
    assert parse_address("http://example.com", 8080).port == 80


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://example.com:443", "scheme http:// and port 443 do not go together"),
        ("https://example.com:80", "scheme https:// and port 80 do not go together"),
        ("http://example.com:https", "scheme specified twice"),
        ("ftp://example.com", "unsupported scheme 'ftp'"),
        ("example.com:99999", "port '99999' is not a number from 1 to 65535"),
        ("example.com:0", "port '0' is not a number"),
        ("example.com:abc", "port 'abc' is not a number"),
        ("ex*mple.com", "a wildcard must be a whole label on the left"),
        ("example.*", "a wildcard must be a whole label on the left"),
        ("exa mple", "white space"),
        ("a..b", "is not a valid host name"),
        ("::1", "must be written in brackets"),
        ("[::1", "missing ']'"),
        ("example.com/x?y=1", "a query or fragment"),
    ],
)
def test_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address(text)
    assert message in str(exc.value) and repr(text) in str(exc.value)


# --- loading into Sites -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("https://example.com", 443),
        ("example.com:443", 443),
        ("example.com:https", 443),
        ("https://example.com:8443", 8443),
    ],
)
def test_https_addresses(text: str, port: int) -> None:
    a = parse_address(text)
    assert (a.scheme, a.host, a.port) == ("https", "example.com", port)


def test_http_and_https_ports_move() -> None:
    assert parse_address("https://example.com", 2015, 8080, 8443).port == 8443
    assert parse_address("http://example.com", 2015, 8080, 8443).port == 8080
    assert parse_address("example.com:8443", 2015, 8080, 8443).scheme == "https"
    with pytest.raises(AddressError, match="do not go together"):
        parse_address("http://example.com:8443", 2015, 8080, 8443)


def test_load_sites_with_root_and_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = load_text("a.test:8080, b.test {\n  root www\n  index home.html\n}\n:9000\n")
    assert [str(e) for e in c.errors] == []
    a, b = c.sites
    assert [x.original for x in a.addresses] == ["a.test:8080", "b.test"]
    assert [x.port for x in a.addresses] == [8080, 2015]
    assert a.root == str(tmp_path / "www")
    assert a.index_files == ["home.html"]
    assert a.directives == {"root": "www", "index": ["home.html"]}
    assert b.root == str(tmp_path) and b.addresses[0].port == 9000 and b.directives == {}


def test_load_collects_every_error() -> None:
    src = (
        "https://a.test {\n  root\n  nope\n}\n"
        "b.test:99999 {\n  index\n  cors /\n  tls off\n}\n"
        ":80 {\n  root /a /b\n}\n"
    )
    c = load_text(src)
    msgs = [str(e) for e in c.errors]
    assert "Caddyfile:3 - unknown directive 'nope'" in msgs
    assert "Caddyfile:7 - directive 'cors' is not available in this version of meshkit" in msgs
    assert any(
        m.startswith("Caddyfile:1 - site address 'https://a.test': it needs a certificate")
        and "-agree for one from the ACME CA (automatic HTTPS (ACME) is not on)" in m
        for m in msgs
    )
    assert any(m.startswith("Caddyfile:5 - site address 'b.test:99999'") for m in msgs)
    assert any(m.startswith("Caddyfile:2 - ") for m in msgs)  # root without a path
    assert any(m.startswith("Caddyfile:6 - ") for m in msgs)  # index without files
    assert any(m.startswith("Caddyfile:11 - ") for m in msgs)  # root with two paths
    assert len(msgs) == 7, msgs
    with pytest.raises(CaddyfileErrors) as exc:
        c.raise_errors()
    assert str(exc.value).count("\n") == 7 and "7 errors" in str(exc.value)


def test_unknown_directive_suggests() -> None:
    c = load_text(":80\nroott /x\n")
    assert [str(e) for e in c.errors] == [
        "Caddyfile:2 - unknown directive 'roott' (did you mean 'root'?)"
    ]


def test_duplicate_site_address() -> None:
    c = load_text("a.test:80 {\n root /a\n}\nhttp://a.test {\n root /b\n}\n")
    assert [str(e) for e in c.errors] == [
        "Caddyfile:4 - duplicate site address 'http://a.test' (already at Caddyfile:1)"
    ]


def test_no_site_is_an_error() -> None:
    for src in ("", "# only a comment\n", "(snip) {\n  gzip\n}\n"):
        assert [str(e) for e in load_text(src).errors] == [
            "Caddyfile:1 - no site is defined (a site block starts with its address)"
        ]


def test_defaults_apply(tmp_path: Path) -> None:
    c = load_text("a.test\n", defaults=Defaults(port=8080, root=str(tmp_path)))
    assert c.sites[0].addresses[0].port == 8080 and c.sites[0].root == str(tmp_path)


def test_load_file_hides_the_caddyfile_and_imports(tmp_path: Path) -> None:
    write(tmp_path / "more.conf", "index a.html\n")
    main = write(tmp_path / "Caddyfile", ":80 {\n  import more.conf\n}\n")
    c = load_file(str(main))
    assert c.errors == []
    site = c.sites[0]
    assert site.config_path == str(main.resolve())
    assert site.hidden == [str(main.resolve()), str((tmp_path / "more.conf").resolve())]
    assert site.index_files == ["a.html"]


def test_load_file_missing(tmp_path: Path) -> None:
    with pytest.raises(MeshkitError, match="cannot read the Caddyfile"):
        load_file(str(tmp_path / "nope"))


def test_load_lines_is_the_default_site() -> None:
    c = load_lines(["root /srv", "index a.html b.html"], defaults=Defaults(port=8081))
    assert c.errors == []
    (site,) = c.sites
    assert site.addresses[0].port == 8081 and site.addresses[0].host == ""
    assert site.root == "/srv" and site.index_files == ["a.html", "b.html"]


def test_load_lines_errors_name_the_argument() -> None:
    c = load_lines(["index a.html", "bogus thing"])
    assert [str(e) for e in c.errors] == ["<command line>:2 - unknown directive 'bogus'"]
    c = load_lines(["index a.html", 'root "x'])
    assert [str(e) for e in c.errors] == [
        "<command line>:2 - unterminated quoted string (missing '\"')"
    ]


def test_load_lines_host() -> None:
    c = load_lines([], defaults=Defaults(host="example.com", port=9))
    assert c.sites[0].addresses[0].host == "example.com" and c.sites[0].addresses[0].port == 9


def test_default_config(tmp_path: Path) -> None:
    c = default_config(Defaults(port=8123, root=str(tmp_path)))
    (site,) = c.sites
    assert site.addresses == [Address(original=":8123", port=8123)]
    assert site.root == str(tmp_path) and site.directives == {}


# --- the chain -----------------------------------------------------------------------------


def _stub(name: str) -> directives.Directive:
    def parse(d: Dispenser, site: Site) -> str:
        args: list[str] = []
        while d.next():
            args += d.remaining_args()
        return " ".join(args) or name

    def build(config: object, nxt: Handler, site: Site) -> Handler:
        def handler(req: Request) -> Response:
            req.vars.setdefault("trail", "")
            req.vars["trail"] += name + ","
            if config == "answer":
                return Response.text(200, req.vars["trail"])
            resp = nxt(req)
            assert isinstance(resp, Response)
            resp.headers.add("X-Out", name)
            return resp

        return handler

    return directives.Directive(name, parse, build)


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("header", "redir", "gzip", "log", "browse", "status"):
        monkeypatch.setitem(directives.REGISTRY, name, _stub(name))


def last(req: Request) -> Response:
    return Response.text(200, req.vars.get("trail", "") + "files")


@pytest.mark.usefixtures("stubs")
def test_chain_follows_order_not_file_order() -> None:
    c = load_text(":80 {\n  browse\n  redir\n  header\n  gzip\n  log\n}\n")
    assert c.errors == []
    site = c.sites[0]
    h = directives.build_chain(site, last)
    resp = h(Request("GET", "/", "/"))
    assert isinstance(resp, Response)
    assert resp.body == b"log,gzip,header,redir,browse,files"
    assert resp.headers.get_all("X-Out") == ["browse", "redir", "header", "gzip", "log"]


@pytest.mark.usefixtures("stubs")
def test_chain_link_may_answer() -> None:
    c = load_text(":80 {\n  status answer\n  log\n  browse\n}\n")
    h = directives.build_chain(c.sites[0], last)
    resp = h(Request("GET", "/", "/"))
    assert isinstance(resp, Response) and resp.body == b"log,status,"


def test_chain_skips_none_and_git_without_hooks() -> None:
    from meshkit.web.directives.git import GitDirectiveConfig
    from meshkit.web.gitdeploy import GitConfig

    config = GitDirectiveConfig([GitConfig("x", "/srv/x")])
    site = Site([Address(":80")], directives={"git": config, "status": None})
    assert directives.build_chain(site, last) is last
    assert len(site.background) == 1  # the puller runs beside the server


def test_chain_unavailable_directive(monkeypatch: pytest.MonkeyPatch) -> None:
    directives.load_all()
    monkeypatch.delitem(directives.REGISTRY, "fastcgi")
    site = Site([Address(":80")], directives={"fastcgi": {"x": 1}})
    with pytest.raises(MeshkitError, match="'fastcgi' is not available"):
        directives.build_chain(site, last)


def test_chain_defaults_to_the_file_server(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("hello")
    site = Site([Address(":80")], root=str(tmp_path))
    h = directives.build_chain(site)
    resp = asyncio.run(resolve(h(Request("GET", "/", "/", headers=Headers([("Host", "x")])))))
    assert resp.status == 200


def test_load_all_is_idempotent() -> None:
    directives.load_all()
    before = dict(directives.REGISTRY)
    directives.load_all()
    assert before == directives.REGISTRY
    assert set(directives.REGISTRY) <= set(directives.ORDER)


def test_env_in_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MK_TEST_PORT", "8765")
    c = load_text(":{$MK_TEST_PORT}\n")
    assert c.sites[0].addresses[0].port == 8765
    assert os.environ["MK_TEST_PORT"] == "8765"


# --- hypothesis: the parser never crashes ---------------------------------------------------

caddy_alphabet = st.sampled_from(
    [*'ab{}"#\\ \t\n,*()/:', "import", "import a", "(a)", "gzip", "root", "{$X}", ".conf"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(caddy_alphabet, max_size=40).map("".join))
def test_parser_never_crashes(src: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:  # imports resolve in an empty folder
        path = os.path.join(tmp, "Caddyfile")
        r = parse(src, path, X="{")
        for e in r.errors:
            assert e.file == "Caddyfile" and e.line >= 0
        c = load_text(src, path=path, environ={"X": "import a"})
        assert all(str(e).startswith("Caddyfile:") for e in c.errors)
