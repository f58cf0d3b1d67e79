"""templates: the directive's forms, Caddy v1's context functions, what is refused, the
per-version caches, and a real `meshkit web` process answered with curl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import build_chain
from meshkit.web.directives import templates as templates_d
from meshkit.web.message import Handler
from meshkit.web.site import Site
from support.peers import Proc, free_port, wait_tcp
from support.webfiles import body_of, call, req, site_from, tokens


def parse(text: str) -> templates_d.TemplatesConfig:
    return templates_d.parse(Dispenser(tokens(text)), Site([]))


def test_parse_forms() -> None:
    c = parse("templates")
    assert [(r.path, r.extensions, r.delims) for r in c.rules] == [
        ("/", [".html", ".htm", ".tmpl", ".tpl", ".txt"], [])
    ]
    c = parse("templates /docs")
    assert c.rules[0].path == "/docs" and c.rules[0].extensions[0] == ".html"
    c = parse("templates /docs .md .txt")
    assert c.rules[0].extensions == [".md", ".txt"]
    assert c.rules[0].index_files == ["index.md", "index.txt"]
    c = parse("templates {\n path /x\n ext .a .b\n between [[ ]]\n}")
    assert (c.rules[0].path, c.rules[0].extensions, c.rules[0].delims) == (
        "/x",
        [".a", ".b"],
        ["[[", "]]"],
    )
    c = parse("templates { path /y }\ntemplates /z")
    assert [r.path for r in c.rules] == ["/y", "/z"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("templates {\n path\n}", "Caddyfile:2 - wrong argument count"),
        ("templates {\n path /a /b\n}", "Caddyfile:2 - wrong argument count"),
        ("templates {\n ext\n}", "Caddyfile:2 - wrong argument count"),
        ("templates {\n between {{\n}", "Caddyfile:2 - wrong argument count"),
        ("templates {\n bogus 1\n}", "Caddyfile:2 - unknown templates option 'bogus'"),
        ("templates / html", "Caddyfile:1 - templates extension 'html' must start with '.'"),
        ("templates docs", "Caddyfile:1 - templates path 'docs' must start with '/'"),
        ("templates /a {\n ext .x\n}", "Caddyfile:2 - templates PATH [EXT...] takes no block"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(CaddyfileError) as info:
        parse(text)
    assert str(info.value).startswith(message)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "site"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "b.txt").write_text("b")
    (r / "sub" / "a.txt").write_text("a")
    (r / "nav.html").write_text("<nav>{{index .Args 0}} {{.Method}}</nav>")
    (r / "doc.md").write_text("# Hello\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (r / "page.txt").write_text('plain {{.ToUpper "x"}}')
    (r / "raw.css").write_text("body {{color}}")
    (tmp_path / "secret.txt").write_text("SECRET")
    os.symlink(tmp_path / "secret.txt", r / "link.txt")
    return r


def chain(root: Path, lines: str = "templates") -> Handler:
    return build_chain(site_from(f"127.0.0.1:2015\nroot {root}\n{lines}\n"))


def get(h: Handler, path: str, **kw: object) -> tuple[int, str, str]:
    resp = call(h, req(path, **kw))  # type: ignore[arg-type]
    return resp.status, resp.headers.get("Content-Type") or "", body_of(resp).decode()


def test_context_functions(root: Path) -> None:
    (root / "index.html").write_text(
        '{{.Host}}|{{.Port}}|{{.Method}}|{{.URI}}|{{.IP}}|{{.Header "X-A"}}|'
        '{{.Cookie "c"}}|{{.Query "q"}}|{{.PathMatches "/"}}|{{.PathMatches "/no"}}\n'
        '{{.Include "nav.html" "first"}}\n'
        '{{range .Files "sub"}}[{{.}}]{{end}} {{.IsDir "sub"}} {{.IsDir "nav.html"}}\n'
        '{{.Truncate "abcdef" 3}} {{.Truncate "abcdef" -2}} {{.StripExt "a/b.c.txt"}} '
        '{{.Ext "x/y.md"}} {{.Replace "aXbX" "X" "-"}} {{.ToLower "AbC"}} '
        '{{.Join (.Split "a,b,c" ",") "+"}} {{.StripHTML "<b>bold</b> <i"}}\n'
        '{{$m := .Map "k" 1 "j" 2}}{{$m.k}} {{index (.Slice 1 2 3) 2}} '
        '{{len (.RandomString 5 5)}} {{.Now "2006" | len}} {{.NowDate.Year | printf "%T"}}\n'
        '{{.Markdown "doc.md"}}'
    )
    h = chain(root)
    status, ctype, body = get(
        h, "/", headers=[("X-A", "va"), ("Cookie", "a=1; c=cv")], query="q=qv"
    )
    assert status == 200 and ctype == "text/html; charset=utf-8"
    lines = body.split("\n")
    assert lines[0] == "127.0.0.1|2015|GET|/?q=qv||va|cv|qv|true|false"
    assert lines[1] == "<nav>first GET</nav>"
    assert lines[2] == "[a.txt][b.txt] true false"
    assert lines[3] == "abc ef a/b.c .md a-b- abc a+b+c bold <i"
    assert lines[4] == "1 3 5 4 int"
    assert "<h1>Hello</h1>" in body and "<td>1</td>" in body


def test_extensions_index_and_passthrough(root: Path) -> None:
    (root / "sub" / "index.txt").write_text("{{.URI}}")
    h = chain(root)
    assert get(h, "/page.txt")[::2] == (200, "plain X")
    assert get(h, "/page.txt")[1] == "text/plain; charset=utf-8"
    assert get(h, "/sub/") == (200, "text/plain; charset=utf-8", "/sub/")
    assert get(h, "/raw.css")[2] == "body {{color}}"  # not a template extension
    assert get(h, "/nope.html")[0] == 404
    h2 = chain(root, "templates /sub .txt")
    assert get(h2, "/page.txt")[2] == 'plain {{.ToUpper "x"}}'  # outside the path


def test_internal_paths_only_through_include(root: Path) -> None:
    (root / "private").mkdir()
    (root / "private" / "part.html").write_text("{{.Method}} part")
    (root / "uses.html").write_text('{{.Include "private/part.html"}}')
    h = chain(root, "templates\ninternal /private")
    assert get(h, "/private/part.html")[0] == 404  # not from outside
    assert get(h, "/uses.html")[2] == "GET part"  # server-side include, as v1


def test_delimiters(root: Path) -> None:
    (root / "d.html").write_text("[[.Method]] {{.Method}}")
    h = chain(root, "templates {\n between [[ ]]\n}")
    assert get(h, "/d.html")[2] == "GET {{.Method}}"


def test_refused_files(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (root / "up.html").write_text('{{.Include "../secret.txt"}}')
    (root / "link.html").write_text('{{.Include "link.txt"}}')
    (root / "cf.html").write_text('{{.Include "Caddyfile"}}')
    (root / "Caddyfile").write_text("x")
    site = site_from(f"127.0.0.1:2015\nroot {root}\ntemplates\n")
    site.config_path = str(root / "Caddyfile")
    site.hidden.append(str(root / "Caddyfile"))
    h = build_chain(site)
    for page in ("/up.html", "/link.html", "/cf.html"):
        status, _, body = get(h, page)
        assert status == 500 and "SECRET" not in body
    assert "refusing a path outside the site root" in caplog.text
    assert "template: up.html:1:2:" in caplog.text


def test_runtime_errors_answer_500_with_file_line(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "loop.html").write_text("one\n{{range 100000000}}{{.}}{{end}}")
    (root / "rec.html").write_text('{{define "r"}}{{template "r" .}}{{end}}\n\n{{template "r"}}')
    (root / "bad.html").write_text("a\nb\n{{if}}")
    (root / "sub" / "err.html").write_text("\n  {{.Nope}}")
    h = chain(root)
    for page in ("/loop.html", "/rec.html", "/bad.html", "/sub/err.html"):
        assert get(h, page)[0] == 500
    assert "template: loop.html:2:" in caplog.text and "steps" in caplog.text
    assert "exceeded maximum template depth" in caplog.text
    assert "template: bad.html:3: missing value for if" in caplog.text
    assert "template: sub/err.html:2:4:" in caplog.text


def test_include_errors(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (root / "self.html").write_text('x{{.Include "self.html"}}')
    (root / "inc-bad.html").write_text('{{.Include "broken.part"}}')
    (root / "broken.part").write_text("a\n{{end}}")
    h = chain(root)
    assert get(h, "/self.html")[0] == 500
    assert "includes nested more than 16 deep" in caplog.text
    assert get(h, "/inc-bad.html")[0] == 500
    assert "template: broken.part:2: unexpected {{end}}" in caplog.text


def test_parsed_and_rendered_caches_follow_file_versions(root: Path) -> None:
    page = root / "static.html"
    page.write_text('v1 {{.Include "nav2.html"}}')
    (root / "nav2.html").write_text("n1")
    h = chain(root)
    handler = h
    while not isinstance(handler, templates_d.TemplatesHandler):
        handler = handler.next  # type: ignore[attr-defined]
    assert get(h, "/static.html")[2] == "v1 n1"
    assert len(handler.outputs.lru.items) == 1  # request-independent: kept
    assert get(h, "/static.html")[2] == "v1 n1"
    time.sleep(0.01)
    (root / "nav2.html").write_text("n2 changed")
    assert get(h, "/static.html")[2] == "v1 n2 changed"  # an included file changed
    page.write_text('v2 {{.Header "X"}}')
    assert get(h, "/static.html", headers=[("X", "1")])[2] == "v2 1"
    assert get(h, "/static.html", headers=[("X", "2")])[2] == "v2 2"  # dynamic: not kept


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_real_server_with_curl(tmp_path: Path, root: Path) -> None:
    (root / "index.html").write_text(
        '<p>{{.Header "X-Who"}} {{.Include "nav.html" "a"}}</p>\n{{.Markdown "doc.md"}}'
    )
    (root / "forever.html").write_text("x\n{{range 1000000000}}{{.}}{{end}}")
    listing = tmp_path / "listing.tpl"
    listing.write_text("{{.Path}}:{{range .Items}} {{.Name}}={{.Size}}{{end}}")
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n root {root}\n templates\n browse /sub {listing}\n}}\n")
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)

        def curl(path: str, *args: str) -> tuple[int, str]:
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--max-time",
                    "30",
                    "-w",
                    "\n%{http_code}",
                    *args,
                    f"http://127.0.0.1:{port}{path}",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=40,
            ).stdout
            body, _, code = out.rpartition("\n")
            return int(code), body

        code, body = curl("/", "-H", "X-Who: curl")
        assert code == 200
        assert body.startswith("<p>curl <nav>a GET</nav></p>")
        assert "<th>a</th>" in body
        assert curl("/sub/") == (200, "/sub/: a.txt=1 b.txt=1")
        code, _ = curl("/forever.html")
        assert code == 500
        assert curl("/")[0] == 200  # still answering
        proc.signal(15)
        proc.wait(15)
        assert "template: forever.html:2:" in proc.stderr()
    finally:
        proc.stop()
