"""markdown: the directive's forms, front matter (YAML, TOML, JSON) and its errors, the
default and custom templates, the caches, and a real `meshkit web` answering curl."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import build_chain
from meshkit.web.directives import markdown as markdown_d
from meshkit.web.frontmatter import FrontMatterError, parse_page
from meshkit.web.message import Handler
from meshkit.web.site import Site
from support.peers import Proc, free_port, wait_tcp
from support.webfiles import body_of, call, req, site_from, tokens


def parse(text: str, root: Path | None = None) -> markdown_d.MarkdownConfig:
    site = Site([])
    if root is not None:
        site.root = str(root)
    return markdown_d.parse(Dispenser(tokens(text)), site)


# --- front matter ----------------------------------------------------------------------------
def test_front_matter_kinds() -> None:
    p = parse_page("---\ntitle: Y\ndraft: true\nn: 3\n---\n# body\n")
    assert (p.kind, p.meta, p.body) == ("yaml", {"title": "Y", "draft": True, "n": 3}, "# body\n")
    p = parse_page('+++\ntitle = "T"\n[sec]\nk = 1\n+++\ntext')
    assert (p.kind, p.meta, p.body) == ("toml", {"title": "T", "sec": {"k": 1}}, "text")
    p = parse_page('{\n  "title": "J",\n  "x": [1]\n}\n\nbody')
    assert (p.kind, p.meta, p.body) == ("json", {"title": "J", "x": [1]}, "body")
    p = parse_page("# just markdown\n---\n")
    assert (p.kind, p.meta) == ("none", {})
    assert parse_page("---\n---\nempty").meta == {}


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("---\ntitle: ok\nbad: [x\n---\n", 4, "bad YAML front matter"),
        ("---\n- a\n- b\n---\n", 2, "not a mapping"),
        ('+++\ntitle = "a"\nx =\n+++\n', 3, "bad TOML front matter"),
        ('{\n"title": "a",\n}\n', 3, "bad JSON front matter"),
        ("---\ntitle: never closed\n", 1, "never closed"),
    ],
)
def test_front_matter_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(FrontMatterError) as info:
        parse_page(text)
    assert info.value.line == line and message in info.value.message


# --- the directive ----------------------------------------------------------------------------
def test_parse_forms(tmp_path: Path) -> None:
    c = parse("markdown")
    assert [(r.path, r.extensions) for r in c.rules] == [("/", [".md", ".markdown", ".mdown"])]
    (tmp_path / "t.html").write_text("T{{.Doc.body}}")
    (tmp_path / "tdir").mkdir()
    (tmp_path / "tdir" / "a.html").write_text("A")
    (tmp_path / "tdir" / "b.html").write_text("B")
    c = parse(
        "markdown /blog {\n ext .md .txt\n css /a.css\n css /b.css\n js /x.js\n"
        f" template t.html\n template named t.html\n templatedir {tmp_path / 'tdir'}\n}}",
        root=tmp_path,
    )
    r = c.rules[0]
    assert (r.path, r.extensions, r.styles, r.scripts) == (
        "/blog",
        [".md", ".txt"],
        ["/a.css", "/b.css"],
        ["/x.js"],
    )
    assert sorted(r.templates) == ["", "a.html", "b.html", "named"]
    assert r.template_set is not None and r.template_set.execute(None, "b.html") == "B"


@pytest.mark.parametrize(
    "text,message",
    [
        ("markdown /a /b", "Caddyfile:1 - wrong argument count"),
        ("markdown blog", "Caddyfile:1 - markdown path 'blog' must start with '/'"),
        ("markdown {\n css\n}", "Caddyfile:2 - wrong argument count"),
        ("markdown {\n template a b c\n}", "Caddyfile:2 - wrong argument count"),
        ("markdown {\n template missing.html\n}", "Caddyfile:2 - cannot read markdown template"),
        ("markdown {\n templatedir /nonexistent/*.x\n}", "Caddyfile:2 - markdown templatedir"),
        ("markdown {\n ext md\n}", "Caddyfile:2 - markdown extension 'md' must start"),
        ("markdown {\n nope 1\n}", "Caddyfile:2 - unknown markdown option 'nope'"),
        ("markdown {\n template bad.html\n}", "Caddyfile:2 - markdown template: template: "),
    ],
)
def test_parse_errors(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "bad.html").write_text("{{if}}")
    with pytest.raises(CaddyfileError) as info:
        parse(text, root=tmp_path)
    assert str(info.value).startswith(message)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "site"
    (r / "blog").mkdir(parents=True)
    (r / "page.md").write_text(
        "---\ntitle: Hello\ndraft: true\nauthor: me\n---\n# Head\n\n| a | b |\n|---|---|\n"
        "| 1 | 2 |\n\n~~gone~~ <span>raw</span>\n"
    )
    (r / "plain.md").write_text("no *front* matter")
    (r / "broken.md").write_text("---\ntitle: ok\nlist: [x\n---\nbody")
    (r / "blog" / "index.md").write_text('+++\ntitle = "Blog"\ntemplate = "list"\n+++\nintro')
    (r / "blog" / "post.md").write_text('{"title": "Post"}\ntext')
    (r / "t.html").write_text(
        "<h1>{{.Doc.title}}</h1>{{.Doc.body}}{{range .Files}}[{{.Name}}]{{end}}"
        "{{.DocFlags}} {{.Doc.raw}}"
    )
    return r


def chain(root: Path, block: str = "") -> Handler:
    return build_chain(site_from(f"127.0.0.1:2015\nroot {root}\nmarkdown {block}\n"))


def get(h: Handler, path: str, method: str = "GET") -> tuple[int, str, str]:
    resp = call(h, req(path, method=method))
    return resp.status, resp.headers.get("Content-Type") or "", body_of(resp).decode()


def test_default_template(root: Path) -> None:
    h = chain(root, "{\n css /s.css\n js /j.js\n}")
    status, ctype, body = get(h, "/page.md")
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert "<title>Hello</title>" in body
    assert '<link rel="stylesheet" href="/s.css">' in body
    assert '<script src="/j.js"></script>' in body
    assert "<h1>Head</h1>" in body and "<td>2</td>" in body
    assert "<s>gone</s> <span>raw</span>" in body
    assert "<title>plain</title>" in get(h, "/plain.md")[2]  # title from the file name


def test_named_templates_and_index_files(root: Path) -> None:
    h = chain(root, "{\n template list t.html\n}")
    status, _, body = get(h, "/blog/")
    assert status == 200
    assert body == "<h1>Blog</h1><p>intro</p>\n[index.md][post.md]map[] intro"
    assert "<title>Post</title>" in get(h, "/blog/post.md")[2]
    (root / "s.html").write_text("{{range .Files}}{{.Name}}: {{.Summarize 2}};{{end}}")
    h2 = chain(root, "{\n template list s.html\n}")
    assert get(h2, "/blog/")[2] == "index.md: intro;post.md: text;"
    time.sleep(0.01)
    (root / "blog" / "post.md").write_text('{"title": "Post"}\nnew words here')
    assert get(h2, "/blog/")[2] == "index.md: intro;post.md: new words;"


def test_errors_and_passthrough(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (root / "missing-tpl.md").write_text("---\ntemplate: nope\n---\nx")
    h = chain(root)
    assert get(h, "/broken.md")[0] == 500
    assert "broken.md:4: bad YAML front matter" in caplog.text
    assert get(h, "/missing-tpl.md")[0] == 500
    assert 'no template "nope"' in caplog.text
    assert get(h, "/page.md", method="POST")[0] == 405
    assert get(h, "/nope.md")[0] == 404
    assert get(h, "/t.html")[2].startswith("<h1>{{.Doc.title}}")  # not markdown


def test_pages_kept_per_version_with_validators(root: Path) -> None:
    h = chain(root)
    first = call(h, req("/plain.md"))
    assert first.validators is not None and first.validators[0][0].endswith("/plain.md")
    time.sleep(0.01)
    (root / "plain.md").write_text("changed **now**")
    assert "<strong>now</strong>" in get(h, "/plain.md")[2]
    (root / "dyn.md").write_text("---\ntemplate: d\n---\nx")
    (root / "d.html").write_text('{{.Header "X"}}')
    h2 = chain(root, "{\n template d d.html\n}")
    assert call(h2, req("/dyn.md")).validators is None  # read the request: not kept


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_real_server_with_curl(tmp_path: Path, root: Path) -> None:
    port = free_port()
    conf = tmp_path / "Caddyfile"
    conf.write_text(f"127.0.0.1:{port} {{\n root {root}\n markdown {{\n  css /s.css\n }}\n}}\n")
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)

        def curl(path: str) -> tuple[int, str]:
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--max-time",
                    "20",
                    "-w",
                    "\n%{http_code}",
                    f"http://127.0.0.1:{port}{path}",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            body, _, code = out.rpartition("\n")
            return int(code), body

        for _ in range(2):  # the second answer may come from the server's response cache
            code, body = curl("/page.md")
            assert code == 200 and "<title>Hello</title>" in body and "<td>1</td>" in body
        assert curl("/broken.md")[0] == 500
        proc.signal(15)
        proc.wait(15)
        assert "broken.md:4: bad YAML front matter" in proc.stderr()
    finally:
        proc.stop()
