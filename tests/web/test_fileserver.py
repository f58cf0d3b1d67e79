"""The static file server, in process: Site -> handler -> Request -> Response (FileBody read
with pread, as sendfile would). Also the shared helpers of the other file server tests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshkit.web import filecache
from meshkit.web.filecache import FileCache, base36
from meshkit.web.fileserver import FileServer, parse_range
from meshkit.web.message import FileBody
from meshkit.web.mimetypes import sniff, type_by_extension
from support.webfiles import body_of, call, get, make_site, req, server

# --- helpers (imported by the other file server tests) -------------------------------------


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "hello.txt").write_text("hello, world\n")
    (root / "style.css").write_text("body{}\n")
    (root / "sub").mkdir()
    (root / "sub" / "index.htm").write_text("sub index\n")
    (root / "sub" / "test-index.html").write_text("not an index\n")
    (root / "empty").mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "default.txt").write_text("docs default\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB: not kept in memory
    (root / "zero.txt").write_bytes(b"")
    return root


# --- plain files ---------------------------------------------------------------------------


def test_serves_a_file_with_validators(site_root: Path) -> None:
    fs = server(site_root)
    resp, body = get(fs, "/hello.txt")
    assert resp.status == 200
    assert body == b"hello, world\n"
    st = os.stat(site_root / "hello.txt")
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert resp.headers["ETag"] == f'"{base36(st.st_mtime_ns)}{base36(st.st_size)}"'
    assert resp.headers["Last-Modified"].endswith(" GMT")
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert "Content-Encoding" not in resp.headers
    assert isinstance(resp.body, FileBody) and resp.body.size == st.st_size


def test_small_file_has_data_large_file_does_not(site_root: Path) -> None:
    fs = server(site_root)
    small = call(fs, req("/hello.txt"))
    assert isinstance(small.body, FileBody) and small.body.data == b"hello, world\n"
    body_of(small)
    big = call(fs, req("/big.bin"))
    assert isinstance(big.body, FileBody)
    assert big.body.data is None
    assert big.body.length == 256 * 1024
    assert body_of(big) == bytes(range(256)) * 1024
    assert big.headers["Content-Type"] == "application/octet-stream"


def test_empty_file(site_root: Path) -> None:
    resp, body = get(server(site_root), "/zero.txt")
    assert resp.status == 200 and body == b""


def test_head_is_like_get(site_root: Path) -> None:
    resp, _ = get(server(site_root), "/hello.txt", method="HEAD")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
def test_other_methods_405(site_root: Path, method: str) -> None:
    resp, body = get(server(site_root), "/hello.txt", method=method)
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"
    assert body == b"405 Method Not Allowed\n"


def test_missing_404(site_root: Path) -> None:
    resp, body = get(server(site_root), "/nope.txt")
    assert resp.status == 404 and body == b"404 Not Found\n"
    assert resp.default_error
    assert get(server(site_root), "/hello.txt/more")[0].status == 404


def test_fifo_is_not_served(site_root: Path) -> None:
    os.mkfifo(site_root / "pipe")
    assert get(server(site_root), "/pipe")[0].status == 404


def test_unreadable_file_403(site_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tests run as root, who can read everything: make open() refuse like for other users
    real_open = os.open

    def refusing_open(path: str, flags: int, *a: object) -> int:
        if str(path).endswith("hello.txt"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(filecache.os, "open", refusing_open)
    resp, body = get(server(site_root), "/hello.txt")
    assert resp.status == 403 and body == b"403 Forbidden\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_403_for_real(site_root: Path) -> None:
    p = site_root / "secret.txt"
    p.write_text("x")
    p.chmod(0)
    assert get(server(site_root), "/secret.txt")[0].status == 403


# --- index files and canonical redirects ---------------------------------------------------


def test_index_html_at_root(site_root: Path) -> None:
    resp, body = get(server(site_root), "/")
    assert resp.status == 200 and body == b"<h1>home</h1>\n"
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"


def test_index_order(site_root: Path) -> None:
    fs = server(site_root)
    assert get(fs, "/sub/")[1] == b"sub index\n"
    assert get(fs, "/docs/")[1] == b"docs default\n"
    (site_root / "docs" / "index.txt").write_text("index txt\n")
    assert get(fs, "/docs/")[1] == b"index txt\n"  # earlier in the list, found at once


def test_custom_index_list(site_root: Path) -> None:
    (site_root / "sub" / "main.html").write_text("main\n")
    fs = server(site_root, index_files=["main.html"])
    assert get(fs, "/sub/")[1] == b"main\n"
    assert get(fs, "/docs/")[0].status == 404  # default.txt is no longer an index


def test_folder_without_slash_301(site_root: Path) -> None:
    resp, _ = get(server(site_root), "/sub", query="a=1&b=%20")
    assert resp.status == 301
    assert resp.headers["Location"] == "/sub/?a=1&b=%20"


def test_file_with_slash_301(site_root: Path) -> None:
    resp, _ = get(server(site_root), "/hello.txt/")
    assert resp.status == 301 and resp.headers["Location"] == "/hello.txt"


def test_index_file_redirects_to_folder(site_root: Path) -> None:
    fs = server(site_root)
    resp, _ = get(fs, "/sub/index.htm", query="x=1")
    assert resp.status == 301 and resp.headers["Location"] == "/sub/?x=1"
    resp, _ = get(fs, "/index.html")
    assert resp.status == 301 and resp.headers["Location"] == "/"


def test_test_index_html_is_not_an_index(site_root: Path) -> None:
    # Caddy #1812: /sub/test-index.html was redirected to /sub/test-
    resp, body = get(server(site_root), "/sub/test-index.html")
    assert resp.status == 200 and body == b"not an index\n"


def test_redirect_keeps_the_raw_encoding(site_root: Path) -> None:
    (site_root / "a b").mkdir()
    resp, _ = get(server(site_root), "/a b", uri="/a%20b")
    assert resp.status == 301 and resp.headers["Location"] == "/a%20b/"


def test_no_protocol_relative_redirect(site_root: Path) -> None:
    (site_root / "evil.example").mkdir()
    resp, _ = get(server(site_root), "//evil.example", uri="//evil.example")
    assert resp.status == 301
    assert resp.headers["Location"] == "/evil.example/"


def test_rewritten_to_index_is_served_not_redirected(site_root: Path) -> None:
    # a single-page-app fallback: rewrite /anything -> /index.html must not bounce to /
    r = req("/index.html", uri="/index.html")
    r.original_uri = "/app/route"
    resp = call(server(site_root), r)
    assert resp.status == 200 and body_of(resp) == b"<h1>home</h1>\n"


# --- the welcome page ----------------------------------------------------------------------


def test_welcome_page_when_no_index(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("n")
    fs = server(tmp_path)
    resp, body = get(fs, "/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert str(tmp_path) in page
    assert "http://127.0.0.1:2015" in page
    assert "Caddyfile" in page and "index.html" in page
    assert get(fs, "/notes.txt")[1] == b"n"


def test_welcome_page_escapes_the_folder_name(tmp_path: Path) -> None:
    root = tmp_path / "<b>"
    root.mkdir()
    page = get(server(root), "/")[1].decode()
    assert "<b>" not in page
    assert "&lt;b&gt;" in page


def test_no_welcome_page_elsewhere_or_with_browse(site_root: Path) -> None:
    assert get(server(site_root), "/empty/")[0].status == 404
    (site_root / "index.html").unlink()
    assert get(server(site_root, browse_on=True), "/")[0].status == 404
    assert get(server(site_root), "/")[0].status == 200


def test_welcome_page_goes_once_an_index_appears(tmp_path: Path) -> None:
    fs = server(tmp_path)
    assert b"meshkit" in get(fs, "/")[1]
    (tmp_path / "index.html").write_text("mine")
    assert get(fs, "/")[1] == b"mine"


# --- conditional requests ------------------------------------------------------------------


def test_if_none_match_304(site_root: Path) -> None:
    fs = server(site_root)
    etag = get(fs, "/hello.txt")[0].headers["ETag"]
    resp, body = get(fs, "/hello.txt", headers=[("If-None-Match", etag)])
    assert resp.status == 304 and body == b""
    assert resp.headers["ETag"] == etag
    assert get(fs, "/hello.txt", headers=[("If-None-Match", f'"x", W/{etag}')])[0].status == 304
    assert get(fs, "/hello.txt", headers=[("If-None-Match", "*")])[0].status == 304
    assert get(fs, "/hello.txt", headers=[("If-None-Match", '"other"')])[0].status == 200


def test_if_modified_since_304(site_root: Path) -> None:
    fs = server(site_root)
    lm = get(fs, "/hello.txt")[0].headers["Last-Modified"]
    assert get(fs, "/hello.txt", headers=[("If-Modified-Since", lm)])[0].status == 304
    later = "Fri, 01 Jan 2100 00:00:00 GMT"
    assert get(fs, "/hello.txt", headers=[("If-Modified-Since", later)])[0].status == 304
    earlier = "Thu, 01 Jan 1970 00:00:01 GMT"
    assert get(fs, "/hello.txt", headers=[("If-Modified-Since", earlier)])[0].status == 200
    assert get(fs, "/hello.txt", headers=[("If-Modified-Since", "garbage")])[0].status == 200
    # If-None-Match wins over If-Modified-Since
    both = [("If-None-Match", '"other"'), ("If-Modified-Since", later)]
    assert get(fs, "/hello.txt", headers=both)[0].status == 200


def test_if_match_and_if_unmodified_since_412(site_root: Path) -> None:
    fs = server(site_root)
    etag = get(fs, "/hello.txt")[0].headers["ETag"]
    assert get(fs, "/hello.txt", headers=[("If-Match", etag)])[0].status == 200
    assert get(fs, "/hello.txt", headers=[("If-Match", '"nope"')])[0].status == 412
    assert get(fs, "/hello.txt", headers=[("If-Match", f"W/{etag}")])[0].status == 412
    old = "Thu, 01 Jan 1970 00:00:01 GMT"
    assert get(fs, "/hello.txt", headers=[("If-Unmodified-Since", old)])[0].status == 412


def test_changed_file_changes_etag_and_content(site_root: Path) -> None:
    fs = server(site_root)
    p = site_root / "hello.txt"
    r1, _b1 = get(fs, "/hello.txt")
    p.write_text("HELLO, WORLD\n")  # same size
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    r2, b2 = get(fs, "/hello.txt")
    assert b2 == b"HELLO, WORLD\n"
    assert r2.headers["ETag"] != r1.headers["ETag"]
    assert get(fs, "/hello.txt", headers=[("If-None-Match", r1.headers["ETag"])])[0].status == 200


def test_changed_file_same_mtime_is_not_stale(site_root: Path) -> None:
    # content rewritten and mtime put back: ctime still tells
    fs = server(site_root)
    p = site_root / "hello.txt"
    st = os.stat(p)
    assert get(fs, "/hello.txt")[1] == b"hello, world\n"
    p.write_text("HELLO, WORLD\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert get(fs, "/hello.txt")[1] == b"HELLO, WORLD\n"


def test_replaced_and_deleted_file(site_root: Path) -> None:
    fs = server(site_root)
    assert get(fs, "/hello.txt")[1] == b"hello, world\n"
    tmp = site_root / "new.tmp"
    tmp.write_text("replaced by rename\n")
    os.replace(tmp, site_root / "hello.txt")
    assert get(fs, "/hello.txt")[1] == b"replaced by rename\n"
    (site_root / "hello.txt").unlink()
    assert get(fs, "/hello.txt")[0].status == 404


# --- ranges --------------------------------------------------------------------------------


def test_single_range_206(site_root: Path) -> None:
    fs = server(site_root)
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=0-4")])
    assert resp.status == 206 and body == b"hello"
    assert resp.headers["Content-Range"] == "bytes 0-4/13"
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=-6")])
    assert body == b"world\n" and resp.headers["Content-Range"] == "bytes 7-12/13"
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=7-")])
    assert body == b"world\n"
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=7-1000")])
    assert body == b"world\n" and resp.headers["Content-Range"] == "bytes 7-12/13"
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=-100")])
    assert resp.status == 206 and body == b"hello, world\n"


def test_range_on_large_file_uses_offset(site_root: Path) -> None:
    resp = call(server(site_root), req("/big.bin", headers=[("Range", "bytes=1000-1999")]))
    assert resp.status == 206
    assert isinstance(resp.body, FileBody)
    assert (resp.body.offset, resp.body.length, resp.body.size) == (1000, 1000, 256 * 1024)
    assert body_of(resp) == (bytes(range(256)) * 1024)[1000:2000]


def test_unsatisfiable_range_416(site_root: Path) -> None:
    fs = server(site_root)
    resp, _ = get(fs, "/hello.txt", headers=[("Range", "bytes=13-")])
    assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */13"
    assert get(fs, "/zero.txt", headers=[("Range", "bytes=0-0")])[0].status == 416
    assert get(fs, "/hello.txt", headers=[("Range", "bytes=-0")])[0].status == 416


@pytest.mark.parametrize(
    "value", ["bytes=5-1", "bytes=a-b", "items=0-1", "bytes=0-1x", "bytes", "bytes=1"]
)
def test_malformed_range_ignored(site_root: Path, value: str) -> None:
    resp, body = get(server(site_root), "/hello.txt", headers=[("Range", value)])
    assert resp.status == 200 and body == b"hello, world\n"


def test_multi_range(site_root: Path) -> None:
    fs = server(site_root)
    # overlapping / adjacent ranges merge into one part
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=0-2,3-4,2-3")])
    assert resp.status == 206 and body == b"hello"
    # disjoint ranges: the whole file (no multipart/byteranges)
    resp, body = get(fs, "/hello.txt", headers=[("Range", "bytes=0-1,5-6")])
    assert resp.status == 200 and body == b"hello, world\n"
    assert "Content-Range" not in resp.headers


def test_if_range(site_root: Path) -> None:
    fs = server(site_root)
    first = get(fs, "/hello.txt")[0]
    etag, lm = first.headers["ETag"], first.headers["Last-Modified"]
    rng = ("Range", "bytes=0-4")
    assert get(fs, "/hello.txt", headers=[rng, ("If-Range", etag)])[0].status == 206
    assert get(fs, "/hello.txt", headers=[rng, ("If-Range", lm)])[0].status == 206
    assert get(fs, "/hello.txt", headers=[rng, ("If-Range", '"stale"')])[0].status == 200
    assert get(fs, "/hello.txt", headers=[rng, ("If-Range", f"W/{etag}")])[0].status == 200
    old = "Thu, 01 Jan 1970 00:00:01 GMT"
    assert get(fs, "/hello.txt", headers=[rng, ("If-Range", old)])[0].status == 200


def test_range_ignored_for_head(site_root: Path) -> None:
    resp, _ = get(server(site_root), "/hello.txt", method="HEAD", headers=[("Range", "bytes=0-1")])
    assert resp.status == 200


def test_parse_range_unit() -> None:
    assert parse_range("bytes=0-0", 10) == [(0, 0)]
    assert parse_range("bytes= 0-1 , 4-5", 10) == [(0, 1), (4, 5)]
    assert parse_range("bytes=8-,0-1", 10) == [(0, 1), (8, 9)]
    assert parse_range("bytes=20-30", 10) == []
    assert parse_range("bytes=" + ",".join(["0-1"] * 100), 10) is None
    assert parse_range("Bytes=1-2", 10) == [(1, 2)]


# --- content types -------------------------------------------------------------------------


def test_content_types(site_root: Path) -> None:
    fs = server(site_root)
    assert get(fs, "/style.css")[0].headers["Content-Type"] == "text/css; charset=utf-8"
    (site_root / "a.PNG").write_bytes(b"\x89PNG\r\n\x1a\nxxxx")
    assert get(fs, "/a.PNG")[0].headers["Content-Type"] == "image/png"
    (site_root / "README").write_text("plain words\n")
    assert get(fs, "/README")[0].headers["Content-Type"] == "text/plain; charset=utf-8"
    (site_root / "blob.xyz").write_bytes(b"\x00\x01\x02\x03")
    assert get(fs, "/blob.xyz")[0].headers["Content-Type"] == "application/octet-stream"
    (site_root / "page").write_text("<!DOCTYPE html><p>hi")
    assert get(fs, "/page")[0].headers["Content-Type"] == "text/html; charset=utf-8"


def test_mime_overrides(site_root: Path) -> None:
    (site_root / "data.foo").write_text("x")
    fs = server(site_root, mime={".foo": "text/x-foo", ".CSS": "text/x-css"})
    assert get(fs, "/data.foo")[0].headers["Content-Type"] == "text/x-foo; charset=utf-8"
    assert get(fs, "/style.css")[0].headers["Content-Type"] == "text/x-css; charset=utf-8"


def test_mimetypes_table_is_our_own() -> None:
    assert type_by_extension("/a/b.js") == "text/javascript; charset=utf-8"
    assert type_by_extension("x.wasm") == "application/wasm"
    assert type_by_extension(".bashrc") is None
    assert type_by_extension("dir.d/file") is None
    assert sniff(b"GIF89a....") == "image/gif"
    assert sniff("héllo".encode()) == "text/plain; charset=utf-8"
    assert sniff(b"\xff\xfe\x00") == "application/octet-stream"


# --- precompressed siblings ----------------------------------------------------------------


@pytest.fixture
def compressed(site_root: Path) -> Path:
    (site_root / "app.js").write_text("console.log(1)\n")
    (site_root / "app.js.gz").write_bytes(b"GZ-DATA")
    (site_root / "app.js.br").write_bytes(b"BR-DATA")
    (site_root / "only.css").write_text("x{}\n")
    (site_root / "only.css.gz").write_bytes(b"GZ-CSS")
    return site_root


def test_precompressed_br_then_gzip(compressed: Path) -> None:
    fs = server(compressed)
    resp, body = get(fs, "/app.js", headers=[("Accept-Encoding", "gzip, deflate, br")])
    assert body == b"BR-DATA"
    assert resp.headers["Content-Encoding"] == "br"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    resp, body = get(fs, "/app.js", headers=[("Accept-Encoding", "gzip")])
    assert body == b"GZ-DATA" and resp.headers["Content-Encoding"] == "gzip"
    resp, body = get(fs, "/only.css", headers=[("Accept-Encoding", "br, gzip")])
    assert body == b"GZ-CSS" and resp.headers["Content-Type"] == "text/css; charset=utf-8"


def test_precompressed_not_when_refused(compressed: Path) -> None:
    fs = server(compressed)
    for ae in (None, "identity", "br;q=0, gzip;q=0", "deflate"):
        headers = [("Accept-Encoding", ae)] if ae else []
        resp, body = get(fs, "/app.js", headers=headers)
        assert body == b"console.log(1)\n", ae
        assert "Content-Encoding" not in resp.headers
    resp, body = get(fs, "/app.js", headers=[("Accept-Encoding", "br;q=0, gzip")])
    assert body == b"GZ-DATA"


def test_precompressed_sibling_itself_and_ranges(compressed: Path) -> None:
    fs = server(compressed)
    resp, body = get(fs, "/app.js.gz", headers=[("Accept-Encoding", "gzip")])
    assert body == b"GZ-DATA" and "Content-Encoding" not in resp.headers
    assert resp.headers["Content-Type"] == "application/gzip"
    ae = ("Accept-Encoding", "br")
    resp, body = get(fs, "/app.js", headers=[ae, ("Range", "bytes=0-1")])
    assert resp.status == 206 and body == b"BR"
    etag = resp.headers["ETag"]
    assert get(fs, "/app.js", headers=[ae, ("If-None-Match", etag)])[0].status == 304
    # the identity file's ETag differs from its compressed sibling's
    assert get(fs, "/app.js")[0].headers["ETag"] != etag


# --- the cache -----------------------------------------------------------------------------


def test_cache_hit_returns_same_entry(site_root: Path) -> None:
    cache = FileCache(str(site_root))
    a = cache.lookup(str(site_root / "hello.txt"))
    b = cache.lookup(str(site_root / "hello.txt"))
    assert a is b and isinstance(a, filecache.Entry)
    assert cache.lookup(str(site_root / "missing")) is None


def test_cache_is_bounded_and_closes_fds(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"f{i}.txt").write_text(str(i))
    cache = FileCache(str(tmp_path), max_entries=5)
    entries = [cache.lookup(str(tmp_path / f"f{i}.txt")) for i in range(20)]
    assert len(cache) == 5
    for e in entries[:15]:
        assert isinstance(e, filecache.Entry) and e.dead and e.fd == -1
    for e in entries[15:]:
        assert isinstance(e, filecache.Entry) and not e.dead and e.fd >= 0
    cache.close()
    assert all(isinstance(e, filecache.Entry) and e.fd == -1 for e in entries)


def test_cache_byte_budget(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
    cache = FileCache(str(tmp_path), max_bytes=2500)
    for i in range(4):
        cache.lookup(str(tmp_path / f"f{i}"))
    assert len(cache) == 2


def test_fd_outlives_eviction_while_in_use(site_root: Path) -> None:
    fs = FileServer(make_site(site_root), cache=FileCache(str(site_root), max_entries=1))
    resp = call(fs, req("/big.bin"))
    assert isinstance(resp.body, FileBody)
    fd = resp.body.fd
    call(fs, req("/hello.txt"))  # evicts big.bin from the cache
    # the response still holds it: the fd is open and still the same file
    assert os.fstat(fd).st_size == 256 * 1024
    assert os.pread(fd, 4, 0) == bytes(range(4))
    assert resp.body.release is not None
    resp.body.release()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_changed_file_keeps_old_fd_for_running_response(site_root: Path) -> None:
    fs = server(site_root)
    resp = call(fs, req("/big.bin"))
    assert isinstance(resp.body, FileBody)
    tmp = site_root / "big.tmp"
    tmp.write_bytes(b"new")
    os.replace(tmp, site_root / "big.bin")
    assert get(fs, "/big.bin")[1] == b"new"  # the stale entry is dropped
    assert os.pread(resp.body.fd, 4, 0) == bytes(range(4))  # the old download goes on
    body_of(resp)


def test_directory_entries_have_no_fd(site_root: Path) -> None:
    cache = FileCache(str(site_root))
    e = cache.lookup(str(site_root / "sub"))
    assert isinstance(e, filecache.Entry) and e.is_dir and e.fd == -1
    assert stat.S_ISDIR(e.mode)


def test_precompressed_sibling_appearing_later_is_noticed(site_root: Path) -> None:
    (site_root / "late.js").write_text("plain\n")
    os.utime(site_root, (1_000_000_000, 1_000_000_000))  # an old folder: remembered at once
    fs = server(site_root)
    ae = [("Accept-Encoding", "br, gzip")]
    assert get(fs, "/late.js", headers=ae)[1] == b"plain\n"
    assert get(fs, "/late.js", headers=ae)[1] == b"plain\n"  # from what was remembered
    (site_root / "late.js.gz").write_bytes(b"GZ")  # the folder's mtime moves
    assert get(fs, "/late.js", headers=ae)[1] == b"GZ"
    (site_root / "late.js.br").symlink_to("late.js.gz")
    resp, body = get(fs, "/late.js", headers=ae)
    assert body == b"GZ" and resp.headers["Content-Encoding"] == "br"
    (site_root / "late.js.br").unlink()
    (site_root / "late.js.gz").unlink()
    resp, body = get(fs, "/late.js", headers=ae)
    assert body == b"plain\n" and "Content-Encoding" not in resp.headers


def test_precompressed_sibling_symlink_out_of_root_ignored(site_root: Path, tmp_path: Path) -> None:
    (tmp_path / "evil.gz").write_bytes(b"OUTSIDE")
    (site_root / "x.js").write_text("x\n")
    (site_root / "x.js.gz").symlink_to(tmp_path / "evil.gz")
    _resp, body = get(server(site_root), "/x.js", headers=[("Accept-Encoding", "gzip")])
    assert body == b"x\n"


def test_missing_root_warns_and_404s(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="meshkit.web"):
        fs = server(tmp_path / "nope")
    assert "does not exist" in caplog.text and str(tmp_path / "nope") in caplog.text
    assert get(fs, "/")[0].status == 404
    assert get(fs, "/x.txt")[0].status == 404
