"""browse: folder listings (HTML and JSON), sorting, limits, cookies, templates, and what is
left out of listings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import browse as browse_d
from meshkit.web.directives import build_chain
from meshkit.web.directives.browse import human_size, rfc3339
from meshkit.web.message import Handler
from support.webfiles import body_of, call, make_site, req, site_from, tokens

JSON = ("Accept", "application/json")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "site"
    r.mkdir()
    (r / "b.txt").write_bytes(b"x" * 300)
    (r / "A.txt").write_bytes(b"x" * 10)
    (r / "c.txt").write_bytes(b"x" * 20)
    (r / "zdir").mkdir()
    (r / "adir").mkdir()
    (r / "adir" / "inner.txt").write_text("inner")
    (r / "withindex").mkdir()
    (r / "withindex" / "index.html").write_text("the index")
    (r / "with space & <tag>.txt").write_text("odd")
    for i, name in enumerate(["A.txt", "b.txt", "c.txt"]):
        t = 1_700_000_000 + [3, 1, 2][i] * 100
        os.utime(r / name, (t, t))
    (tmp_path / "outside.txt").write_text("outside")
    return r


def chain_for(root: Path, lines: str = "browse") -> Handler:
    return build_chain(site_from(f"127.0.0.1:2015\nroot {root}\n{lines}\n"))


def listing(chain: Handler, path: str = "/", **kw: object) -> list[dict[str, object]]:
    headers = [JSON, *kw.pop("headers", [])]  # type: ignore[misc]
    resp = call(chain, req(path, headers=headers, **kw))  # type: ignore[arg-type]
    assert resp.status == 200, resp
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    data = json.loads(body_of(resp))
    assert isinstance(data, list)
    return data


def names(items: list[dict[str, object]]) -> list[object]:
    return [i["Name"] for i in items]


def test_parse() -> None:
    site = make_site(".")
    cfg = browse_d.parse(Dispenser(tokens("browse\nbrowse /files")), site)
    assert cfg == [{"path": "/", "template": None}, {"path": "/files", "template": None}]
    assert site.browse_on


def test_parse_errors(tmp_path: Path) -> None:
    for text, msg in [
        ("browse files", "must start with '/'"),
        ("browse / a b", "wrong argument count"),
        (f"browse / {tmp_path}/missing.tpl", "is not a file"),
        ("browse /x\nbrowse /x", "configured twice"),
    ]:
        with pytest.raises(CaddyfileError, match=msg):
            browse_d.parse(Dispenser(tokens(text)), make_site("."))


def test_json_listing_fields(root: Path) -> None:
    items = listing(chain_for(root))
    by_name = {i["Name"]: i for i in items}
    a = by_name["A.txt"]
    assert set(a) == {"Name", "Size", "URL", "ModTime", "Mode", "IsDir", "IsSymlink"}
    assert a["Size"] == 10 and a["URL"] == "./A.txt" and a["IsDir"] is False
    assert a["ModTime"] == "2023-11-14T22:18:20Z"
    assert a["Mode"] == os.stat(root / "A.txt").st_mode & 0o777
    d = by_name["adir"]
    assert d["IsDir"] is True and d["URL"] == "./adir/"
    assert isinstance(d["Mode"], int) and d["Mode"] & (1 << 31)
    odd = by_name["with space & <tag>.txt"]
    assert odd["URL"] == "./with%20space%20%26%20%3Ctag%3E.txt"


def test_default_sort_is_namedirfirst(root: Path) -> None:
    assert names(listing(chain_for(root))) == [
        "adir",
        "withindex",
        "zdir",
        "A.txt",
        "b.txt",
        "c.txt",
        "with space & <tag>.txt",
    ]


def test_sorts_and_orders(root: Path) -> None:
    chain = chain_for(root)
    files = ["A.txt", "b.txt", "c.txt"]

    def only_files(query: str) -> list[object]:
        return [n for n in names(listing(chain, query=query)) if n in files]

    assert only_files("sort=name") == ["A.txt", "b.txt", "c.txt"]
    assert only_files("sort=name&order=desc") == ["c.txt", "b.txt", "A.txt"]
    assert only_files("sort=size") == ["A.txt", "c.txt", "b.txt"]
    assert only_files("sort=size&order=desc") == ["b.txt", "c.txt", "A.txt"]
    assert only_files("sort=time") == ["b.txt", "c.txt", "A.txt"]
    assert only_files("sort=time&order=desc") == ["A.txt", "c.txt", "b.txt"]
    assert names(listing(chain, query="sort=name"))[0] == "A.txt"  # folders mixed in
    assert names(listing(chain, query="sort=size"))[:3] == ["adir", "withindex", "zdir"]


def test_limit(root: Path) -> None:
    chain = chain_for(root)
    assert names(listing(chain, query="limit=2")) == ["adir", "withindex"]
    assert listing(chain, query="limit=0") == []
    resp = call(chain, req("/", query="limit=abc"))
    assert resp.status == 400


def test_choices_remembered_in_cookies(root: Path) -> None:
    chain = chain_for(root, "browse /")
    resp = call(chain, req("/", query="sort=size&order=desc&limit=2", headers=[JSON]))
    cookies = resp.headers.get_all("Set-Cookie")
    assert "sort=size; Path=/" in cookies
    assert "order=desc; Path=/" in cookies
    assert "limit=2; Path=/" in cookies
    body_of(resp)
    cookie = ("Cookie", "sort=size; order=desc; limit=2")
    assert names(listing(chain, headers=[cookie])) == ["b.txt", "c.txt"]
    # the query wins over the cookie; bad cookie values fall back to the defaults
    assert names(listing(chain, query="order=asc", headers=[cookie])) == ["adir", "withindex"]
    assert names(listing(chain, headers=[("Cookie", "sort=evil; order=up")]))[0] == "adir"
    # nothing given: no cookie set
    resp = call(chain, req("/", headers=[JSON]))
    assert resp.headers.get_all("Set-Cookie") == []


def test_html_listing(root: Path) -> None:
    resp = call(chain_for(root), req("/"))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    page = body_of(resp).decode()
    assert "Index of /" in page
    assert 'href="./adir/"' in page and 'href="./A.txt"' in page
    assert "with space &amp; &lt;tag&gt;.txt" in page
    assert "<tag>" not in page
    assert 'href="../"' not in page  # no parent above the root
    sub = body_of(call(chain_for(root), req("/adir/"))).decode()
    assert 'href="../"' in sub and "inner.txt" in sub


def test_folder_with_index_is_not_listed(root: Path) -> None:
    chain = chain_for(root)
    assert body_of(call(chain, req("/withindex/"))) == b"the index"


def test_folder_without_slash_redirects(root: Path) -> None:
    resp = call(chain_for(root), req("/adir"))
    assert resp.status == 301 and resp.headers["Location"] == "/adir/"


def test_files_pass_through(root: Path) -> None:
    assert body_of(call(chain_for(root), req("/adir/inner.txt"))) == b"inner"


def test_browse_path_scope(root: Path) -> None:
    chain = chain_for(root, "browse /adir")
    assert call(chain, req("/")).status == 404  # browse on: no welcome page either
    assert names(listing(chain, "/adir/")) == ["inner.txt"]
    assert call(chain, req("/zdir/")).status == 404


def test_hidden_entries_left_out(root: Path, tmp_path: Path) -> None:
    (root / "Caddyfile").write_text("x")
    (root / "private").mkdir()
    os.symlink(tmp_path / "outside.txt", root / "out-link.txt")
    os.symlink("adir", root / "in-link")
    os.symlink("missing", root / "dangling")
    os.mkfifo(root / "fifo")
    site = site_from(f"127.0.0.1:2015\nroot {root}\nbrowse\ninternal /private\n")
    site.config_path = str(root / "Caddyfile")
    site.hidden.append(str(root / "Caddyfile"))
    items = listing(build_chain(site))
    shown = names(items)
    for gone in ("Caddyfile", "private", "out-link.txt", "dangling", "fifo"):
        assert gone not in shown
    link = next(i for i in items if i["Name"] == "in-link")
    assert link["IsSymlink"] is True and link["IsDir"] is True and link["URL"] == "./in-link/"


def test_listing_traversal_refused(root: Path) -> None:
    chain = chain_for(root)
    assert call(chain, req("/../", headers=[JSON])).status == 404
    assert call(chain, req("/adir/../../", headers=[JSON])).status == 404


def test_custom_template(root: Path, tmp_path: Path) -> None:
    tpl = tmp_path / "list.tpl"
    tpl.write_text(
        "<title>{{.Name}} at {{.Path}}</title>{{if .CanGoUp}}<a href=\"../\">up</a>{{end}}\n"
        "{{range .Items}}<a href=\"{{html .URL}}\">{{.Name}}</a> {{.Size}} {{.HumanSize}} "
        "{{.IsDir}} {{.Mode}} {{.HumanModTime \"2006\"}}\n{{end}}"
        "{{.NumDirs}}/{{.NumFiles}} {{.Sort}} {{.Order}} {{.ItemsLimitedTo}} $5"
    )
    chain = chain_for(root, f"browse / {tpl}")
    page = body_of(call(chain, req("/adir/"))).decode()
    assert page.startswith('<title>adir at /adir/</title><a href="../">up</a>')
    assert '<a href="./inner.txt">inner.txt</a> 5 5 B false -rw-' in page
    assert page.endswith("0/1 namedirfirst asc 0 $5")
    top = body_of(call(chain, req("/", query="sort=size&limit=2"))).decode()
    assert '<a href="../">' not in top
    assert top.endswith("3/4 size asc 2 $5")  # counts of the whole folder, as v1


def test_custom_template_crumbs_and_context(root: Path, tmp_path: Path) -> None:
    tpl = tmp_path / "crumbs.tpl"
    tpl.write_text(
        "{{range $k, $v := .BreadcrumbMap}}[{{$k}}={{$v}}]{{end}} "
        "{{range .Breadcrumbs}}<{{.Link}}|{{.Text}}>{{end}} {{.Header \"X-A\"}}"
    )
    (root / "adir" / "deeper").mkdir()
    chain = chain_for(root, f"browse / {tpl}")
    page = body_of(call(chain, req("/adir/deeper/", headers=[("X-A", "1")]))).decode()
    assert page == (
        "[/=/][/adir=adir][/adir/deeper=deeper] <../../|/><../|adir><|deeper> 1"
    )
    # it read the request: rendered again, not kept
    again = body_of(call(chain, req("/adir/deeper/", headers=[("X-A", "2")]))).decode()
    assert again.endswith(" 2")


V1_STYLE = """<h1>{{range $i, $c := .Breadcrumbs}}<a href="{{html $c.Link}}">{{html $c.Text}}</a>\
{{if ne $i 0}}/{{end}}{{end}}</h1>
<b>{{.NumDirs}}</b> director{{if eq 1 .NumDirs}}y{{else}}ies{{end}}
<b>{{.NumFiles}}</b> file{{if ne 1 .NumFiles}}s{{end}}
{{- if ne 0 .ItemsLimitedTo}} (only {{.ItemsLimitedTo}}){{end}}
{{- if and (eq .Sort "namedirfirst") (ne .Order "desc")}}
<a href="?sort=namedirfirst&order=desc">up</a>
{{- else if and (eq .Sort "namedirfirst") (ne .Order "asc")}}
<a href="?sort=namedirfirst&order=asc">down</a>
{{- else}}
<a href="?sort=namedirfirst&order=asc">none</a>
{{- end}}
{{- if .CanGoUp}}
<a href="..">Go up</a>
{{- end}}
{{- range .Items}}
<a href="{{html .URL}}">{{if .IsDir}}D{{else}}F{{end}}{{if .IsSymlink}}-shortcut{{end}} \
{{html .Name}}</a> {{if .IsDir}}&mdash;{{else}}{{.HumanSize}}{{end}} \
<time datetime="{{.HumanModTime "2006-01-02T15:04:05Z"}}">\
{{.HumanModTime "01/02/2006 03:04:05 PM -07:00"}}</time>
{{- end}}
"""


def test_v1_style_template(root: Path, tmp_path: Path) -> None:
    """The constructs of Caddy v1's own default listing template."""
    tpl = tmp_path / "v1.tpl"
    tpl.write_text(V1_STYLE)
    chain = chain_for(root, f"browse / {tpl}")
    page = body_of(call(chain, req("/", query="order=desc&limit=3"))).decode()
    assert page.startswith('<h1><a href="">/</a></h1>\n<b>3</b> directories\n<b>4</b> files')
    assert "(only 3)" in page and '<a href="?sort=namedirfirst&order=asc">down</a>' in page
    assert "Go up" not in page
    odd = '<a href="./with%20space%20%26%20%3Ctag%3E.txt">F with space &amp; &lt;tag&gt;.txt</a>'
    assert odd in page
    page = body_of(call(chain, req("/adir/", headers=[("Cookie", "limit=-1")]))).decode()
    assert '<a href="../">/</a><a href="">adir</a>/' in page
    assert "<b>0</b> directories\n<b>1</b> file\n<a" in page and "Go up" in page
    assert '<a href="./inner.txt">F inner.txt</a> 5 B <time datetime="' in page


def test_custom_template_errors(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.tpl"
    bad.write_text("ok\n{{if}}")
    with pytest.raises(CaddyfileError, match=r"browse template: template: .*bad.tpl:2: "):
        browse_d.parse(Dispenser(tokens(f"browse / {bad}")), site_from("127.0.0.1:2015\n"))
    failing = tmp_path / "failing.tpl"
    failing.write_text("a\n{{range .Items}}{{.Nope}}{{end}}")
    chain = chain_for(root, f"browse / {failing}")
    assert call(chain, req("/adir/")).status == 500
    assert "failing.tpl:2:" in caplog.text and "can't evaluate field Nope" in caplog.text


def test_listing_rendered_once_per_version(root: Path) -> None:
    chain = chain_for(root)
    handler = chain
    while not isinstance(handler, browse_d.BrowseHandler):
        handler = handler.next  # type: ignore[attr-defined]
    first = body_of(call(chain, req("/adir/"))).decode()
    assert len(handler.rendered.items) == 1
    assert body_of(call(chain, req("/adir/"))).decode() == first
    assert len(handler.rendered.items) == 1  # the same version: served from what was kept
    call(chain, req("/adir/", query="order=desc"))
    assert len(handler.rendered.items) == 2  # other options: another rendering
    (root / "adir" / "inner.txt").write_text("longer contents now")  # size changes
    page = body_of(call(chain, req("/adir/"))).decode()
    assert page != first and 'data-size="19"' in page
    (root / "adir" / "new.txt").write_text("n")
    assert "new.txt" in body_of(call(chain, req("/adir/"))).decode()


def test_head_and_post(root: Path) -> None:
    chain = chain_for(root)
    assert call(chain, req("/", method="HEAD")).status == 200
    assert call(chain, req("/", method="POST")).status == 405


def test_helpers() -> None:
    assert rfc3339(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.5Z"
    assert human_size(10) == "10 B" and human_size(2048) == "2.0 KiB"
