"""The two HTTP/2 engines side by side (meshkit.web.h2conn's `h2` and meshkit.web.h2ng's
libnghttp2): the same Caddyfile served by one `meshkit web` process per engine, the same
requests sent to both by the h2 library as a client; the answers (status, fields but Date,
body), the access log lines and the GOAWAY sent on abuse must agree. Where the engines differ
on purpose (a malformed request: nghttp2 resets the stream, h2 ends the connection) the test
says so."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from support.peers import Proc, free_port
from support.php_fpm import php_fpm
from support.tlscerts import CA, issue, make_ca
from web.h2engines import nghttp2_built
from web.test_h2_e2e import Client, serve, site

pytestmark = pytest.mark.skipif(not nghttp2_built(), reason="meshkit._h2ng not built or off")

ENGINES = ("nghttp2", "h2")
_LOG_LINE = re.compile(r'"([^"]*)" (\d+) (\d+)')


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Path, Path]:
    tmp = tmp_path_factory.mktemp("certs")
    ca = make_ca(tmp)
    crt, key = issue(ca, tmp, "a", ["a.test", "127.0.0.1"])
    return ca, crt, key


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site") / "www"
    (root / "secret").mkdir(parents=True)
    (root / "index.html").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)
    (root / "page.txt").write_bytes(b"some text that compresses " * 400)
    (root / "secret" / "s.txt").write_bytes(b"top secret\n")
    return root


def _start(
    tmp: Path,
    www: Path,
    certs: tuple[CA, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    more: str = "",
) -> dict[str, tuple[Proc, int, Path]]:
    out = {}
    for engine in ENGINES:
        monkeypatch.setenv("MESHKIT_H2_ENGINE", engine)
        port = free_port()
        logf = tmp / f"{engine}.log"
        extra = f"  gzip\n  basicauth /secret bob hunter2\n  log {logf}\n{more}"
        (tmp / engine).mkdir()
        out[engine] = (serve(tmp / engine, site(port, certs, www, extra), port=port), port, logf)
    return out


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, www: Path, certs: tuple[CA, Path, Path]
) -> Iterator[dict[str, tuple[Proc, int, Path]]]:
    """One server per engine with the same site, shared by the tests below (started once:
    the machine's start-up time is most of these tests' time)."""
    with pytest.MonkeyPatch.context() as mp:
        servers = _start(tmp_path_factory.mktemp("pair"), www, certs, mp)
    try:
        yield servers
    finally:
        for proc, _, _ in servers.values():
            proc.stop()


def _log_lines(logf: Path, skip: int, want: int) -> list[Any]:
    """The access log's lines after the first `skip`, once there are `want` of them."""
    deadline = time.monotonic() + 10
    while True:
        lines = _LOG_LINE.findall(logf.read_text())[skip:] if logf.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _answer(client: Client, sid: int) -> tuple[int, dict[bytes, bytes], bytes]:
    status, headers, body = client.response(sid)
    headers.pop(b"date", None)
    return status, headers, body


def _requests(client: Client) -> list[Any]:
    """One connection's worth of requests, each answer as (status, fields but Date, body)."""
    got: list[Any] = []
    status, headers, _ = _answer(client, client.request("/"))
    got.append((status, headers))
    modified = headers[b"last-modified"].decode()
    for path, extra in (
        ("/", []),  # again: the nghttp2 engine answers from the response cache
        ("/", []),
        ("/big.bin", [("range", "bytes=10-20")]),
        ("/page.txt", [("accept-encoding", "gzip")]),
        ("/missing", []),
        ("/secret/s.txt", []),
        ("/secret/s.txt", [("authorization", "Basic Ym9iOmh1bnRlcjI=")]),
        ("/", [("if-modified-since", modified)]),
        ("/", [("cookie", "a=1"), ("cookie", "b=2")]),
        ("/../etc/passwd", []),
        ("/", [("x-big", "a" * 20000)]),
    ):
        got.append(_answer(client, client.request(path, extra=extra)))
    got.append(_answer(client, client.request("/big.bin", method="HEAD")))
    sid = client.request("/index.html", method="POST", end=False)
    client.conn.send_data(sid, b"x" * 1000, end_stream=True)
    client.flush()
    got.append(_answer(client, sid))
    return got


def test_same_answers_and_log_lines(
    pair: dict[str, tuple[Proc, int, Path]], certs: tuple[CA, Path, Path]
) -> None:
    answers = {}
    before = {e: len(_log_lines(logf, 0, 0)) for e, (_, _, logf) in pair.items()}
    for engine, (_, port, _) in pair.items():
        client = Client(port, certs[0])
        try:
            answers[engine] = _requests(client)
        finally:
            client.close()
    nghttp2, hyper = answers["nghttp2"], answers["h2"]
    assert len(nghttp2) == len(hyper)
    for i, (a, b) in enumerate(zip(nghttp2, hyper, strict=True)):
        assert a == b, i
    statuses = [a[0] for a in nghttp2]
    assert statuses == [200, 200, 200, 206, 200, 404, 401, 200, 304, 200, 400, 431, 200, 405]
    # (the server's own 400 and 431, answered before any handler, are not logged)
    logs = {e: _log_lines(logf, before[e], len(statuses) - 2) for e, (_, _, logf) in pair.items()}
    assert logs["nghttp2"] == logs["h2"] and len(logs["h2"]) == len(statuses) - 2
    assert logs["h2"][1] == ("GET / HTTP/2.0", "200", "6")  # a cached answer is logged too


def test_fastcgi_answers_agree(
    tmp_path: Path, www: Path, certs: tuple[CA, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """php-fpm behind `fastcgi` over HTTP/2: a GET and a POST body larger than a stream's
    window, the same answer from both engines."""
    (www / "i.php").write_text(
        '<?php header("X-Proto: " . $_SERVER["SERVER_PROTOCOL"]); $b = file_get_contents('
        '"php://input"); echo $_SERVER["REQUEST_METHOD"], " ", strlen($b), " ", md5($b), "\\n";'
    )
    upload = bytes(range(256)) * 1200  # 300 KiB: past the 64 KiB stream window
    with php_fpm(tmp_path / "fpm") as fpm:
        servers = _start(tmp_path, www, certs, monkeypatch, f"  fastcgi / {fpm.tcp} php\n")
        try:
            answers = {}
            for engine, (_, port, _) in servers.items():
                client = Client(port, certs[0])
                try:
                    got = [_answer(client, client.request("/i.php"))]
                    sid = client.request("/i.php", method="POST", end=False)

                    def credit(evs: list[Any], c: Client = client, s: int = sid) -> bool:
                        return bool(c.conn.local_flow_control_window(s) >= 16384)

                    for at in range(0, len(upload), 16384):
                        client.until(credit)  # the WINDOW_UPDATEs php-fpm's reading earns
                        client.conn.send_data(sid, upload[at : at + 16384])
                        client.flush()
                    client.conn.end_stream(sid)
                    client.flush()
                    got.append(_answer(client, sid))
                    answers[engine] = got
                finally:
                    client.close()
            assert answers["nghttp2"] == answers["h2"]
            (status, headers, body), (pstatus, _, pbody) = answers["h2"]
            assert (status, headers[b"x-proto"]) == (200, b"HTTP/2.0")
            assert body.split() == [b"GET", b"0", hashlib.md5(b"").hexdigest().encode()]
            digest = hashlib.md5(upload).hexdigest().encode()
            assert pstatus == 200 and pbody.split() == [b"POST", b"%d" % len(upload), digest]
        finally:
            for proc, _, _ in servers.values():
                proc.stop()


def _goaway_code(port: int, ca: CA, abuse: str) -> int | None:
    client = Client(port, ca)
    try:
        for _ in range(300):
            try:
                if abuse == "rapid reset":
                    sid = client.request("/big.bin")
                    client.conn.reset_stream(sid, ErrorCodes.CANCEL)
                elif abuse == "settings flood":
                    client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
                else:  # a header list past 256 KiB, in one HEADERS and its CONTINUATIONs
                    client.request("/", extra=[(f"x-f{n}", "v" * 9000) for n in range(32)])
                    break
                client.flush()
            except OSError:
                break
        ev = client.terminated()
        return None if ev is None else int(ev.error_code)
    finally:
        client.close()


def test_same_goaway_on_abuse(
    pair: dict[str, tuple[Proc, int, Path]], certs: tuple[CA, Path, Path]
) -> None:
    # (rapid reset and SETTINGS floods: test_h2_e2e checks each engine's GOAWAY)
    codes = {
        e: _goaway_code(port, certs[0], "big header block") for e, (_, port, _) in pair.items()
    }
    assert codes == {e: ErrorCodes.ENHANCE_YOUR_CALM for e in ENGINES}
    for _, port, _ in pair.values():  # and the server goes on
        client = Client(port, certs[0])
        assert _answer(client, client.request("/"))[0] == 200
        client.close()


def test_a_malformed_request_is_refused_by_both(
    pair: dict[str, tuple[Proc, int, Path]], certs: tuple[CA, Path, Path]
) -> None:
    """An upper-case field name (RFC 9113 8.2.1): nghttp2 resets the stream (PROTOCOL_ERROR)
    and the connection goes on; h2 ends the connection with GOAWAY PROTOCOL_ERROR."""
    for engine, (_, port, _) in pair.items():
        client = Client(port, certs[0])
        client.conn.config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )  # fmt: skip
        sid = client.request("/", extra=[("X-Upper", "1")])

        def refused(evs: list[Any], sid: int = sid) -> bool:
            return any(
                isinstance(e, h2.events.ConnectionTerminated)
                or (isinstance(e, h2.events.StreamReset) and e.stream_id == sid)
                for e in evs
            )

        evs = client.until(refused)
        if engine == "nghttp2":
            reset = [e for e in evs if isinstance(e, h2.events.StreamReset)]
            assert [e.error_code for e in reset] == [ErrorCodes.PROTOCOL_ERROR]
            status, _, body = client.response(client.request("/"))
            assert (status, body) == (200, b"hello\n")
        else:
            ended = [e for e in evs if isinstance(e, h2.events.ConnectionTerminated)]
            assert [e.error_code for e in ended] == [ErrorCodes.PROTOCOL_ERROR]
        client.close()
