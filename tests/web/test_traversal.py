"""Nothing outside the root is ever served: one test per trick, in process (the same tricks
over a real socket are in test_static_e2e.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.web.fileserver import INTERNAL_VAR, clean_path
from support.webfiles import body_of, call, get, req, server

SECRET = b"TOP SECRET outside the root\n"


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """tmp/secret.txt and tmp/outside/ are outside; tmp/site is the root."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file.txt").write_bytes(SECRET)
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("home\n")
    (root / "sub").mkdir()
    (root / "sub" / "file.txt").write_text("inside\n")
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_text("contact\n")
    (root / "private").mkdir()
    (root / "private" / "data.txt").write_text("internal only\n")
    (root / "Caddyfile").write_text("localhost:2015\nroot .\n")
    return root


def assert_404(fs: object, path: str, uri: str | None = None) -> None:
    resp, body = get(fs, path, uri=uri)
    assert resp.status == 404, (path, uri, resp.status)
    assert SECRET not in body


def test_inside_works(layout: Path) -> None:
    assert get(server(layout), "/sub/file.txt")[1] == b"inside\n"


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/sub/../index.html",  # even when it would stay inside
        "/..",
        "/../",
        "/./index.html",
        "/sub/./file.txt",
        "/../site/index.html",
        "/" + "../" * 20 + "etc/passwd",
    ],
)
def test_dot_segments(layout: Path, path: str) -> None:
    assert_404(server(layout), path)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/%2e%2e/secret.txt", "/../secret.txt"),  # the server decodes %2e%2e to ..
        ("/%2E%2E/secret.txt", "/../secret.txt"),
        ("/sub/%2e%2e/%2e%2e/secret.txt", "/sub/../../secret.txt"),
        ("/.%2e/secret.txt", "/../secret.txt"),
        ("/%2e%2e/secret.txt", "/%2e%2e/secret.txt"),  # or leaves it alone: no such file
        ("/%252e%252e/secret.txt", "/%2e%2e/secret.txt"),  # double-encoded
    ],
)
def test_percent_encoded_dots(layout: Path, uri: str, path: str) -> None:
    assert_404(server(layout), path, uri)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/sub%2ffile.txt", "/sub/file.txt"),  # the file exists, yet the slash was hidden
        ("/sub%2Ffile.txt", "/sub/file.txt"),
        ("/..%2fsecret.txt", "/../secret.txt"),
        ("/%2e%2e%2fsecret.txt", "/../secret.txt"),
        ("/sub%5cfile.txt", "/sub\\file.txt"),
        ("/..%5csecret.txt", "/..\\secret.txt"),
    ],
)
def test_encoded_slashes(layout: Path, uri: str, path: str) -> None:
    assert_404(server(layout), path, uri)


@pytest.mark.parametrize("path", ["/..\\secret.txt", "/sub\\file.txt", "\\..\\secret.txt"])
def test_backslashes(layout: Path, path: str) -> None:
    assert_404(server(layout), path)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/index.html%00.txt", "/index.html\x00.txt"),
        ("/sub/file.txt%00", "/sub/file.txt\x00"),
        ("/index.html\x00", "/index.html\x00"),
    ],
)
def test_nul_bytes(layout: Path, uri: str, path: str) -> None:
    assert_404(server(layout), path, uri)


def test_relative_and_empty_paths(layout: Path) -> None:
    fs = server(layout)
    assert_404(fs, "index.html")
    assert_404(fs, "")
    assert_404(fs, "*")


def test_double_slash_stays_inside(layout: Path) -> None:
    # `//etc/passwd` must be the root's etc/passwd, never the system's
    (layout / "etc").mkdir()
    (layout / "etc" / "passwd").write_text("site's own\n")
    resp, body = get(server(layout), "//etc/passwd")
    assert resp.status == 200 and body == b"site's own\n"
    assert get(server(layout), "//sub//file.txt")[1] == b"inside\n"


def test_symlink_out_of_root(layout: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret.txt", layout / "link.txt")
    os.symlink(tmp_path / "outside", layout / "outdir")
    os.symlink("../secret.txt", layout / "rel.txt")
    os.symlink("/etc/passwd", layout / "passwd")
    fs = server(layout)
    assert_404(fs, "/link.txt")
    assert_404(fs, "/outdir/file.txt")
    assert_404(fs, "/outdir/")
    assert_404(fs, "/outdir")
    assert_404(fs, "/rel.txt")
    assert_404(fs, "/passwd")


def test_symlink_chain_out_of_root(layout: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", layout / "hop2")
    os.symlink("hop2", layout / "hop1")  # inside -> inside -> outside
    assert_404(server(layout), "/hop1/file.txt")


def test_symlink_inside_root(layout: Path) -> None:
    os.symlink("sub/file.txt", layout / "alias.txt")
    os.symlink("sub", layout / "alias")
    fs = server(layout)
    assert get(fs, "/alias.txt")[1] == b"inside\n"
    assert get(fs, "/alias/file.txt")[1] == b"inside\n"


def test_symlink_switched_to_outside_after_caching(layout: Path, tmp_path: Path) -> None:
    os.symlink("sub", layout / "moving")
    fs = server(layout)
    assert get(fs, "/moving/file.txt")[1] == b"inside\n"
    (layout / "moving").unlink()
    os.symlink(tmp_path / "outside", layout / "moving")
    assert_404(fs, "/moving/file.txt")


def test_root_itself_a_symlink(tmp_path: Path) -> None:
    # a deploy by `ln -sfn release2 current` keeps serving, from the new release
    for n in ("r1", "r2"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "v.txt").write_text(n)
        (tmp_path / n / f"only-{n}").write_text(n)
    os.symlink("r1", tmp_path / "current")
    fs = server(tmp_path / "current")
    assert get(fs, "/v.txt")[1] == b"r1"
    (tmp_path / "next").symlink_to("r2")
    os.replace(tmp_path / "next", tmp_path / "current")
    assert get(fs, "/v.txt")[1] == b"r2"
    assert get(fs, "/only-r2")[1] == b"r2"
    assert get(fs, "/only-r1")[0].status == 404


def test_caddyfile_is_hidden(layout: Path) -> None:
    fs = server(layout, config_path=str(layout / "Caddyfile"))
    assert_404(fs, "/Caddyfile")
    os.symlink("Caddyfile", layout / "conf.txt")
    assert_404(fs, "/conf.txt")  # not through a symlink either
    (layout / "sub" / "Caddyfile").write_text("another one, not the config\n")
    assert get(fs, "/sub/Caddyfile")[0].status == 200


def test_hidden_files(layout: Path) -> None:
    fs = server(layout, hidden=[str(layout / "sub" / "file.txt")])
    assert_404(fs, "/sub/file.txt")


def test_hidden_index_is_not_served(layout: Path) -> None:
    fs = server(layout, hidden=[str(layout / "index.html")])
    _resp, body = get(fs, "/")
    assert b"home" not in body  # the welcome page instead
    assert get(fs, "/index.html")[0].status == 404
    (layout / "index.htm").write_text("second\n")
    assert get(fs, "/")[1] == b"second\n"


def test_internal_paths(layout: Path) -> None:
    fs = server(layout, internal=["/private"])
    assert_404(fs, "/private/data.txt")
    assert_404(fs, "//private/data.txt")
    assert_404(fs, "/private/")
    r = req("/private/data.txt")
    r.vars[INTERNAL_VAR] = "1"
    resp = call(fs, r)
    assert resp.status == 200 and body_of(resp) == b"internal only\n"


def test_dotfiles_are_served(layout: Path) -> None:
    # a decision: like Caddy v1, dotfiles are not hidden (.well-known needs them)
    assert get(server(layout), "/.well-known/security.txt")[1] == b"contact\n"


def test_clean_path_unit() -> None:
    assert clean_path("/a//b/") == "/a/b/"
    assert clean_path("//") == "/"
    assert clean_path("/a/..b/c") == "/a/..b/c"  # a name, not a segment
    assert clean_path("/a/.../c") == "/a/.../c"
    assert clean_path("/a/../c") is None
    assert clean_path("/a/./c") is None
    assert clean_path("a") is None
    assert clean_path("/a\\b") is None
    assert clean_path("/a\x00") is None


_SEGMENTS = st.sampled_from(
    [
        *("..", ".", "", "%2e%2e", "\\", "..\\..", "\x00"),
        *("sub", "file.txt", "secret.txt", "outside", "out", "site", "etc", "passwd"),
        *("index.html", "Caddyfile", "private", "link"),
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(segments=st.lists(_SEGMENTS, max_size=8), trailing=st.booleans())
def test_no_path_reaches_outside(layout: Path, segments: list[str], trailing: bool) -> None:
    if not (layout / "out").exists():
        os.symlink(layout.parent / "outside", layout / "out")
        os.symlink(layout.parent / "secret.txt", layout / "link")
    path = "/" + "/".join(segments) + ("/" if trailing else "")
    fs = server(layout, config_path=str(layout / "Caddyfile"), internal=["/private"])
    _resp, body = get(fs, path)
    assert SECRET not in body
    assert b"root ." not in body  # the Caddyfile
    assert b"internal only" not in body
