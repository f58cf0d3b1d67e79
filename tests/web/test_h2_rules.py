"""HTTP/2 streams answered from the rule table of compiled sites (meshkit.web.h2rules).

The differential test serves one site (`ext`, `gzip`, `basicauth` with an htpasswd file,
`log`) from four `meshkit web` processes: each HTTP/2 engine with the table on and off
(MESHKIT_LANE_RULES=0); the same requests on each, before and after files change (a file
`ext` finds appears, an `ext` target changes, the htpasswd file changes), must get the same
status, fields but Date, body and access-log line. The unit tests drive h2rules.answer over
a site's real chain and show the table answering a kept answer without the chain.
"""

from __future__ import annotations

import base64
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from meshkit.web import h2rules, ruletable
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.respcache import CachedResponse
from support.peers import Proc, free_port
from support.tlscerts import CA
from web import test_h2_e2e
from web.h2engines import nghttp2_built
from web.test_h2_e2e import Client, serve, site
from web.test_h2_engines import _log_lines

pytestmark = pytest.mark.skipif(not ruletable.ENABLED, reason="MESHKIT_LANE_RULES=0")


def _htpasswd(path: Path, password: bytes) -> None:
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"bob:{hashed}\n")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


_T0 = 1_700_000_000 * 10**9  # fixed mtimes: the same ETag and Last-Modified on each server


def _write(path: Path, data: bytes, mtime_ns: int = _T0) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _www(root: Path) -> Path:
    (root / "secret").mkdir(parents=True)
    _write(root / "index.html", b"hello\n")
    _write(root / "page.html", b"page one\n")
    _write(root / "text.txt", b"some text that compresses " * 400)
    _write(root / "secret" / "s.html", b"top secret\n")
    _htpasswd(root.parent / "htpasswd", b"hunter2")
    return root


def _extra(root: Path, logf: Path) -> str:
    return (
        f"  ext .html\n  gzip\n  basicauth /secret bob htpasswd={root.parent / 'htpasswd'}\n"
        f"  log {logf}\n"
    )


# ------------------------------------------------------------------------ in-process


class _Conn:
    """The connection fields h2rules.answer reads, and what it answered (the engines'
    _answer_hit sends that; the e2e test below runs the real connections)."""

    def __init__(self, handler: Any) -> None:
        self._server = type(
            "S", (), {"_handler": handler, "_max_fields": 100, "_header_limit": 65536}
        )()
        self._goaway_at = None
        self._streams: dict[int, Any] = {}
        self._addrs = ("127.0.0.1", 40000, "127.0.0.1", 443)
        self._scheme = "https"
        self.hits: list[tuple[int, bytes, CachedResponse]] = []

    def _answer_hit(self, sid: int, key: bytes, hit: CachedResponse) -> None:
        self.hits.append((sid, key, hit))


def _parts(path: bytes, items: list[tuple[str, str]] | None = None, method: bytes = b"GET") -> Any:
    items = items or []
    return (method, path, b"a.test", items, 100, False, None, None)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    root = _www(tmp_path / "www")
    text = f"a.test:8443 {{\n  root {root}\n{_extra(root, tmp_path / 'log')}}}\n"
    yield plan(load_text(text, "Caddyfile"))[8443].router(), root


def test_kept_answer_served_without_the_chain_and_changes_seen(
    router: tuple[Any, Path],
) -> None:
    handler, root = router
    calls = []
    table = ruletable.rules_for(handler)
    assert table  # the site compiles
    for rules in table.values():
        chain = rules.handler

        def counting(request: Any, chain: Any = chain) -> Any:
            calls.append(request.path)
            return chain(request)

        rules.handler = counting
    time.sleep(1.05)  # the folder older than the racy second: its 404s may be kept
    conn = _Conn(handler)
    assert h2rules.answer(conn, 1, _parts(b"/page"))
    first = conn.hits[-1][2]
    assert (first.status, first.body, first.version) == (200, b"page one\n", "2.0")
    assert h2rules.answer(conn, 3, _parts(b"/page"))
    assert conn.hits[-1][2] is first and calls == ["/page"]  # the second: no chain run
    # a 404 pinned by its folder (and the extension `ext` tried)
    assert h2rules.answer(conn, 5, _parts(b"/new"))
    missing = conn.hits[-1][2]
    assert missing.status == 404 and h2rules.answer(conn, 7, _parts(b"/new"))
    assert conn.hits[-1][2] is missing and calls == ["/page", "/new"]
    (root / "page.html").write_bytes(b"page two, longer\n")  # an ext target changes
    assert h2rules.answer(conn, 9, _parts(b"/page"))
    assert conn.hits[-1][2].body == b"page two, longer\n" and len(calls) == 3
    (root / "new.html").write_bytes(b"new\n")  # the file ext finds appears
    n = len(conn.hits)
    if h2rules.answer(conn, 11, _parts(b"/new")):  # (kept or not: the racy second)
        assert (conn.hits[-1][2].status, conn.hits[-1][2].body) == (200, b"new\n")
    assert len(conn.hits) >= n and calls[-1] == "/new" and len(calls) == 4
    # a 401 is never kept: the stream's own path answers (and the key waits a second)
    n = len(conn.hits)
    assert not h2rules.answer(conn, 13, _parts(b"/secret/s"))
    assert not h2rules.answer(conn, 14, _parts(b"/secret/s"))
    assert calls.count("/secret/s") == 1  # the chain's: filled once this second
    assert len(conn.hits) == n
    # not the table's: a body-less method it does not take, a target the chain folds,
    # no Host, GOAWAY sent
    assert not h2rules.answer(conn, 15, _parts(b"/page", method=b"DELETE"))
    assert not h2rules.answer(conn, 17, _parts(b"/a/../page"))
    assert not h2rules.answer(conn, 19, (b"GET", b"/page", b"", [], 10, False, None, None))
    conn._goaway_at = 1
    assert not h2rules.answer(conn, 21, _parts(b"/page"))


def test_answers_go_with_their_handler(tmp_path: Path) -> None:
    """A reload's old handler, once collected, takes its HTTP/2 answers and watches along
    (the table holds no reference to it)."""
    root = _www(tmp_path / "www")
    text = f"a.test:8443 {{\n  root {root}\n{_extra(root, tmp_path / 'log')}}}\n"
    handler = plan(load_text(text, "Caddyfile"))[8443].router()
    conn = _Conn(handler)
    assert h2rules.answer(conn, 1, _parts(b"/page"))
    table = h2rules._TABLES[handler]
    assert table is not None
    (site,) = table.by_route.values()
    assert site.rules.answers.entries and site.rules.tickets
    del conn, handler, table
    gc.collect()
    assert not site.rules.answers.entries and not site.rules.tickets


def test_key_holds_the_fields_answers_read() -> None:
    a = h2rules.rule_key(b"GET", b"/p", b"a.test", None, [("user-agent", "x")])
    b = h2rules.rule_key(b"GET", b"/p", b"a.test", None, [("user-agent", "y")])
    c = h2rules.rule_key(b"GET", b"/p", b"a.test", None, [("accept-encoding", "gzip")])
    d = h2rules.rule_key(b"GET", b"/p", b"a.test", "b.test", [])
    assert a == b and len({a, c, d}) == 3 and a.startswith(h2rules.KEY_PREFIX)
    for bad in (b"", b"p", b"/a//b", b"/a/./b", b"/%41", b"/a b", b"/a#b", b"/a\\b"):
        assert h2rules.plain_path(bad) == -1, bad
    assert h2rules.plain_path(b"/a/b?x=/./") == 4


# ----------------------------------------------------------------------- end to end

certs = test_h2_e2e.certs  # the module-scoped fixture: a CA and a certificate for a.test

_VARIANTS = [(engine, rules) for engine in ("nghttp2", "h2") for rules in ("1", "0")]


def _round(client: Client, password: str) -> list[Any]:
    got = []
    for path, extra in (
        ("/page", []),
        ("/page", []),
        ("/page", [("accept-encoding", "gzip")]),
        ("/text.txt", [("accept-encoding", "gzip")]),
        ("/text.txt", [("range", "bytes=5-20")]),
        ("/new", []),
        ("/new", []),
        ("/secret/s", []),
        ("/secret/s", [("authorization", _basic("bob", password))]),
        ("/secret/s", [("authorization", _basic("bob", password))]),
        ("/secret/s", [("authorization", _basic("bob", "hunter2"))]),
        ("/", [("user-agent", "x")]),
    ):
        status, headers, body = client.response(client.request(path, extra=extra))
        headers.pop(b"date", None)
        got.append((path, status, sorted(headers.items()), body))
    got.append(client.response(client.request("/page", method="HEAD"))[0])
    return got


def test_table_on_and_off_agree_over_both_engines(
    tmp_path: Path, certs: tuple[CA, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    variants = _VARIANTS if nghttp2_built() else [v for v in _VARIANTS if v[0] == "h2"]
    servers: dict[tuple[str, str], tuple[Proc, int, Path, Path]] = {}
    try:
        for engine, rules in variants:
            base = tmp_path / f"{engine}-{rules}"
            root = _www(base / "www")
            logf = base / "access.log"
            monkeypatch.setenv("MESHKIT_H2_ENGINE", engine)
            monkeypatch.setenv("MESHKIT_LANE_RULES", rules)
            port = free_port()
            proc = serve(base, site(port, certs, root, _extra(root, logf)), port=port)
            servers[(engine, rules)] = (proc, port, root, logf)
        rounds: dict[tuple[str, str], list[Any]] = {v: [] for v in servers}
        for step in range(3):
            for v, (_, port, _, _) in servers.items():
                client = Client(port, certs[0])
                try:
                    rounds[v].append(_round(client, "hunter2" if step < 2 else "swordfish"))
                finally:
                    client.close()
            for _, _, root, _ in servers.values():
                if step == 0:  # a file `ext` finds appears, an `ext` target changes
                    _write(root / "new.html", b"new\n", _T0 + 10**9)
                    _write(root / "page.html", b"page two, longer\n", _T0 + 10**9)
                elif step == 1:  # the htpasswd file changes
                    _htpasswd(root.parent / "htpasswd", b"swordfish")
            if step == 1:
                time.sleep(1.1)  # basicauth checks its file at most once a second
        first = next(iter(rounds.values()))
        for v, got in rounds.items():
            for i, (a, b) in enumerate(zip(got, first, strict=True)):
                assert a == b, (v, i)
        statuses = [[g[1] for g in r[:-1]] for r in first]
        assert statuses[0] == [200, 200, 200, 200, 206, 404, 404, 401, 200, 200, 200, 200]
        assert statuses[1][5] == 200 and first[1][0][3] == b"page two, longer\n"
        assert statuses[2][8:11] == [200, 200, 401]  # the new password, the old refused
        want = 13 * 3
        logs = {v: _log_lines(s[3], 0, want) for v, s in servers.items()}
        first_log = next(iter(logs.values()))
        assert len(first_log) == want and first_log[0] == ("GET /page HTTP/2.0", "200", "9")
        for v, lines in logs.items():
            assert lines == first_log, v
    finally:
        for proc, _, _, _ in servers.values():
            proc.stop()
