"""The directives root, index, ext, mime and internal: parsing (over hand-made tokens and
through the real Caddyfile loader) and their handlers, in process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import build_chain
from meshkit.web.directives import ext as ext_d
from meshkit.web.directives import index as index_d
from meshkit.web.directives import internal as internal_d
from meshkit.web.directives import mime as mime_d
from meshkit.web.directives import root as root_d
from meshkit.web.fileserver import INTERNAL_VAR, build_fileserver
from meshkit.web.message import FileBody, Handler, HandlerResult, Headers, Request, Response
from meshkit.web.site import DEFAULT_INDEX, Site
from support.webfiles import body_of, call, make_site, req, site_from, tokens


def parse(module: object, text: str, site: Site | None = None) -> tuple[object, Site]:
    site = site or make_site(".")
    toks = tokens(text)
    cfg = module.parse(Dispenser(toks, toks[0].text), site)  # type: ignore[attr-defined]
    return cfg, site


def parse_err(module: object, text: str) -> CaddyfileError:
    with pytest.raises(CaddyfileError) as info:
        parse(module, text)
    return info.value


# --- root ----------------------------------------------------------------------------------


def test_root_parse(tmp_path: Path) -> None:
    cfg, site = parse(root_d, f"root {tmp_path}")
    assert cfg == str(tmp_path) and site.root == str(tmp_path)
    cfg, site = parse(root_d, "root public")
    assert site.root == os.path.abspath("public")
    cfg, site = parse(root_d, "root a\nroot b")
    assert site.root == os.path.abspath("b")


def test_root_errors() -> None:
    err = parse_err(root_d, "root")
    assert err.file == "Caddyfile" and err.line == 1
    err = parse_err(root_d, "root a\nroot a b")
    assert err.line == 2
    assert "wrong argument count" in str(err)


def test_root_through_the_loader(tmp_path: Path) -> None:
    site = site_from(f"127.0.0.1:2015\nroot {tmp_path}\n")
    assert site.root == str(tmp_path)
    config = load_text("127.0.0.1:2015\nroot\n")
    assert config.errors and "Caddyfile:2" in str(config.errors[0])


# --- index ---------------------------------------------------------------------------------


def test_index_parse() -> None:
    cfg, site = parse(index_d, "index home.html main.htm")
    assert cfg == ["home.html", "main.htm"] and site.index_files == ["home.html", "main.htm"]
    cfg, site = parse(index_d, "index a.html\nindex b.html a.html")
    assert site.index_files == ["a.html", "b.html"]


def test_index_errors() -> None:
    assert "wrong argument count" in str(parse_err(index_d, "index"))
    assert "plain file name" in str(parse_err(index_d, "index ../x.html"))
    assert "plain file name" in str(parse_err(index_d, "index a/b.html"))


def test_index_default_and_loader(tmp_path: Path) -> None:
    assert make_site(".").index_files == DEFAULT_INDEX
    (tmp_path / "home.html").write_text("home")
    (tmp_path / "index.html").write_text("index")
    site = site_from(f'127.0.0.1:2015\nroot {tmp_path}\nindex home.html "my index.html"\n')
    assert site.index_files == ["home.html", "my index.html"]
    chain = build_chain(site)
    assert body_of(call(chain, req("/"))) == b"home"
    resp = call(chain, req("/home.html"))
    assert resp.status == 301 and resp.headers["Location"] == "/"
    assert call(chain, req("/index.html")).status == 200  # no longer an index name


# --- mime ----------------------------------------------------------------------------------


def test_mime_parse_line_and_block() -> None:
    cfg, site = parse(mime_d, "mime .foo text/x-foo\nmime {\n.Bar application/x-bar\n}")
    assert cfg == {".foo": "text/x-foo", ".bar": "application/x-bar"}
    assert site.mime == cfg


def test_mime_errors() -> None:
    assert "start with a dot" in str(parse_err(mime_d, "mime foo text/plain"))
    assert "duplicate" in str(parse_err(mime_d, "mime .a text/plain\nmime .A text/html"))
    assert "wrong argument count" in str(parse_err(mime_d, "mime .a"))
    assert "media type" in str(parse_err(mime_d, "mime .a plain"))
    err = parse_err(mime_d, "mime {\n.a text/plain\n.b\n}")
    assert err.line == 3


def test_mime_applies_to_files(tmp_path: Path) -> None:
    (tmp_path / "x.foo").write_text("foo")
    (tmp_path / "y.bin").write_text("bin")
    site = site_from(
        f"127.0.0.1:2015\nroot {tmp_path}\nmime {{\n  .foo text/x-foo\n  .bin image/x-bin\n}}\n"
    )
    chain = build_chain(site)
    assert call(chain, req("/x.foo")).headers["Content-Type"] == "text/x-foo; charset=utf-8"
    assert call(chain, req("/y.bin")).headers["Content-Type"] == "image/x-bin"


# --- ext -----------------------------------------------------------------------------------


def test_ext_parse() -> None:
    cfg, _ = parse(ext_d, "ext .html .htm\next .txt .html")
    assert cfg == [".html", ".htm", ".txt"]
    assert "start with a dot" in str(parse_err(ext_d, "ext html"))
    assert "wrong argument count" in str(parse_err(ext_d, "ext"))


@pytest.fixture
def ext_root(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "about.html").write_text("about html")
    (root / "contact.htm").write_text("contact htm")
    (root / "both.html").write_text("both html")
    (root / "both.htm").write_text("both htm")
    (root / "blog").mkdir()
    (root / "blog" / "post.html").write_text("post")
    (root / "dir.html").mkdir()  # a folder is not a file
    (tmp_path / "outside.html").write_text("outside")
    return root


def ext_chain(root: Path) -> Handler:
    return build_chain(site_from(f"127.0.0.1:2015\nroot {root}\next .html .htm\n"))


def test_ext_appends_first_existing(ext_root: Path) -> None:
    chain = ext_chain(ext_root)
    assert body_of(call(chain, req("/about"))) == b"about html"
    assert body_of(call(chain, req("/contact"))) == b"contact htm"
    assert body_of(call(chain, req("/both"))) == b"both html"
    assert body_of(call(chain, req("/blog/post"))) == b"post"


def test_ext_leaves_other_paths(ext_root: Path) -> None:
    chain = ext_chain(ext_root)
    assert call(chain, req("/about/")).status == 404  # trailing slash: not touched
    assert call(chain, req("/about.txt")).status == 404  # has an extension
    assert call(chain, req("/missing")).status == 404
    assert call(chain, req("/dir")).status == 404  # dir.html is a folder
    assert call(chain, req("/../outside")).status == 404
    resp = call(chain, req("/blog"))
    assert resp.status == 301  # a folder, no blog.html: the file server's redirect


def test_ext_rewrites_the_request_path(ext_root: Path) -> None:
    site = site_from(f"127.0.0.1:2015\nroot {ext_root}\next .html\n")
    seen: list[str] = []

    def last(r: Request) -> HandlerResult:
        seen.append(r.path)
        return Response(204)

    handler = ext_d.build([".html"], last, site)
    call(handler, req("/about"))
    assert seen == ["/about.html"]


# --- internal ------------------------------------------------------------------------------


def test_internal_parse() -> None:
    cfg, site = parse(internal_d, "internal /private\ninternal /a\ninternal /b")
    assert cfg == ["/private", "/a", "/b"] and site.internal == cfg
    # one path per line, as v1
    assert "one path per line" in str(parse_err(internal_d, "internal /a /b"))
    assert "must start with '/'" in str(parse_err(internal_d, "internal private"))
    # no path (v1): nothing hidden, X-Accel-Redirect still followed
    cfg, site = parse(internal_d, "internal")
    assert cfg == [] and site.internal == []


@pytest.fixture
def internal_root(tmp_path: Path) -> Path:
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "file.txt").write_text("secret file\n")
    (tmp_path / "public.txt").write_text("public\n")
    return tmp_path


def test_internal_404_from_outside(internal_root: Path) -> None:
    chain = build_chain(site_from(f"127.0.0.1:2015\nroot {internal_root}\ninternal /private\n"))
    assert call(chain, req("/private/file.txt")).status == 404
    assert call(chain, req("//private/file.txt")).status == 404
    assert call(chain, req("/privatefile")).status == 404  # plain prefix, as in Caddy
    assert body_of(call(chain, req("/public.txt"))) == b"public\n"


class Upstream:
    """Stands for a proxy/fastcgi handler: answers with X-Accel-Redirect for some paths."""

    def __init__(self, next: Handler, redirects: dict[str, str], delay: bool = False) -> None:
        self.next = next
        self.redirects = redirects
        self.delay = delay
        self.seen: list[str] = []

    def __call__(self, r: Request) -> HandlerResult:
        self.seen.append(r.path)
        target = self.redirects.get(r.path)
        if target is None:
            return self.next(r)
        resp = Response(200, Headers([("X-Accel-Redirect", target)]), b"from upstream")
        if self.delay:
            return self._later(resp)
        return resp

    async def _later(self, resp: Response) -> Response:
        return resp


def internal_chain(root: Path, redirects: dict[str, str], delay: bool = False) -> Handler:
    site = make_site(root)
    internal_d.parse(Dispenser(tokens("internal /private")), site)
    upstream = Upstream(build_fileserver(site), redirects, delay)
    return internal_d.build(["/private"], upstream, site)


@pytest.mark.parametrize("delay", [False, True])
def test_x_accel_redirect(internal_root: Path, delay: bool) -> None:
    chain = internal_chain(internal_root, {"/download": "/private/file.txt"}, delay)
    resp = call(chain, req("/download"))
    assert resp.status == 200
    assert body_of(resp) == b"secret file\n"
    assert "X-Accel-Redirect" not in resp.headers


def test_x_accel_redirect_with_query_and_encoding(internal_root: Path) -> None:
    (internal_root / "private" / "a b.txt").write_text("spaced\n")
    chain = internal_chain(internal_root, {"/dl": "/private/a%20b.txt?x=1"})
    r = req("/dl")
    resp = call(chain, r)
    assert body_of(resp) == b"spaced\n"
    assert r.vars[INTERNAL_VAR] == "1" and r.query == "x=1"


def test_x_accel_redirect_releases_the_dropped_body(internal_root: Path) -> None:
    released: list[bool] = []
    fd = os.open(internal_root / "public.txt", os.O_RDONLY)
    try:

        def upstream(r: Request) -> HandlerResult:
            if r.path == "/dl":
                body = FileBody(fd, 0, 7, 7, release=lambda: released.append(True))
                return Response(200, Headers([("X-Accel-Redirect", "/public.txt")]), body)
            return build_fileserver(make_site(internal_root))(r)

        chain = internal_d.build(["/private"], upstream, make_site(internal_root))
        assert body_of(call(chain, req("/dl"))) == b"public\n"
        assert released == [True]
    finally:
        os.close(fd)


def test_x_accel_redirect_streamed_body_closed(internal_root: Path) -> None:
    closed: list[bool] = []

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"never"
        finally:
            closed.append(True)

    async def upstream_later(r: Request) -> Response:
        if r.path == "/dl":
            gen = stream()
            await gen.__anext__()  # started, so closing it runs its finally
            return Response(200, Headers([("X-Accel-Redirect", "/public.txt")]), gen)
        resp = build_fileserver(make_site(internal_root))(r)
        assert isinstance(resp, Response)
        return resp

    def upstream(r: Request) -> HandlerResult:
        return upstream_later(r)

    chain = internal_d.build(["/private"], upstream, make_site(internal_root))
    assert body_of(call(chain, req("/dl"))) == b"public\n"
    assert closed == [True]


def test_x_accel_redirect_loop_stops(internal_root: Path) -> None:
    chain = internal_chain(internal_root, {"/a": "/b", "/b": "/a"})
    resp = call(chain, req("/a"))
    assert resp.status == 500


def test_x_accel_redirect_ten_hops_allowed(internal_root: Path) -> None:
    hops = {f"/h{i}": f"/h{i + 1}" for i in range(10)}
    hops["/h10"] = "/private/file.txt"
    # 11 redirects: one too many
    assert call(internal_chain(internal_root, hops), req("/h0")).status == 500
    hops.pop("/h10")
    hops["/h9"] = "/private/file.txt"
    resp = call(internal_chain(internal_root, hops), req("/h0"))
    assert resp.status == 200 and body_of(resp) == b"secret file\n"


def test_internal_through_the_loader(internal_root: Path) -> None:
    site = site_from(f"127.0.0.1:2015\nroot {internal_root}\ninternal /private\n")
    assert site.internal == ["/private"]
    assert site.directives["internal"] == ["/private"]
