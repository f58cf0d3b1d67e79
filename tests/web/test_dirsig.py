"""Folder signatures (meshkit.web.dirsig) over both implementations, and the browse listing
served from a body kept under one: it still follows every change a listing shows."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path

import pytest

from meshkit._ext import load_fastpath
from meshkit.web import dirsig
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives.browse import BrowseHandler
from meshkit.web.message import EmptyBody, Headers, Request, Response
from meshkit.web.router import Router

_fastpath = load_fastpath()
HAVE_C = _fastpath is not None and hasattr(_fastpath, "dir_signature")
IMPLS = [
    pytest.param(True, id="c", marks=pytest.mark.skipif(not HAVE_C, reason="not built")),
    pytest.param(False, id="py"),
]
OLD = 1_600_000_000


def make_dir(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_bytes(b"a")
    (d / "sub").mkdir()
    os.symlink("a.txt", d / "link")
    for p in (d / "a.txt", d / "sub", d):
        os.utime(p, (OLD, OLD))
    return d


@pytest.mark.parametrize("compiled", IMPLS)
def test_signature_follows_what_a_listing_shows(tmp_path: Path, compiled: bool) -> None:
    sig = dirsig.load_signature(compiled)
    d = make_dir(tmp_path)
    seen: list[Hashable] = [sig(str(d))]
    assert sig(str(d)) == seen[0]  # nothing changed

    def retarget() -> None:
        (d / "link").unlink()
        os.symlink("sub", d / "link")

    changes: list[Callable[[], object]] = [
        lambda: (d / "a.txt").write_bytes(b"longer"),  # the folder's mtime stays
        lambda: os.utime(d / "a.txt", (OLD + 5, OLD + 5)),
        lambda: os.chmod(d / "a.txt", 0o600),
        lambda: (d / "b.txt").write_bytes(b""),
        retarget,
        lambda: (d / "sub" / "x").write_bytes(b"x"),  # a subfolder's mtime
    ]
    for change in changes:
        change()
        now = sig(str(d))
        assert now not in seen
        seen.append(now)
    with pytest.raises(OSError):
        sig(str(tmp_path / "missing"))


def browse_handler(root: Path) -> BrowseHandler:
    router = plan(load_text(f":8000 {{\n root {root}\n browse\n}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    handler = router.routes[0].handler
    # the chain's browse handler (wrapped by nothing else on this site)
    assert isinstance(handler, BrowseHandler)
    return handler


def body_of(result: object) -> bytes:
    assert isinstance(result, Response) and isinstance(result.body, bytes)
    return result.body


def get(path: str, accept: str = "") -> Request:
    headers = Headers([("Host", "x")] + ([("Accept", accept)] if accept else []))
    return Request("GET", path, path, "", "1.1", headers, EmptyBody(), "http", "x")


@pytest.mark.parametrize("compiled", IMPLS)
def test_listing_from_the_signature_cache_follows_changes(tmp_path: Path, compiled: bool) -> None:
    root = tmp_path / "www"
    root.mkdir()
    d = make_dir(root)
    handler = browse_handler(root)
    handler.signature = dirsig.load_signature(compiled)
    first = body_of(handler(get("/d/")))
    scan = handler.items

    def no_scan(*args: object) -> object:
        raise AssertionError("the folder was scanned for a listing kept by its signature")

    handler.items = no_scan  # type: ignore[method-assign, assignment]
    again = body_of(handler(get("/d/")))
    assert first == again
    assert len(handler.by_signature.items) == 1
    handler.items = scan  # type: ignore[method-assign]
    (d / "a.txt").write_bytes(b"0123456789" * 300)  # 3000 bytes: the size column changes
    changed = body_of(handler(get("/d/")))
    assert changed != first
    assert b"2.9 KiB" in changed or b"3000" in changed
    as_json = handler(get("/d/", "application/json"))
    assert b'"Size": 3000' in body_of(as_json)
    assert isinstance(as_json, Response)
    assert as_json.headers.get("Content-Type") == "application/json; charset=utf-8"
