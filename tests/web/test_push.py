"""push: HTTP/2 server push of configured resources and of Link: rel=preload from a proxied
upstream, seen by a real HTTP/2 client that accepts pushes (nghttp); off unless configured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives.push import PushConfig, PushResource, PushRule, preload_links
from support.peers import Proc, free_port, wait_tcp
from support.tlscerts import issue, make_ca
from web.h2engines import h2_engine  # noqa: F401  (the fixture)


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ("push /a /b {\n  header :path /x\n }", "':path' is not a header field name"),
        ("push /a /b {\n  header Content-Length 1\n }", "cannot carry Content-Length"),
        ("push /a {\n  /b /c\n }", "one resource per line"),
        ("push /a style.css", "must be a path starting with /"),
        ("push /a /b {\n  method POST\n }", "method 'POST'"),
        ("push /a /b {\n  header X\n }", "Caddyfile:3"),
        ("push /a /b {\n  weight 3\n }", "unknown push option 'weight'"),
        ("push {\n  method\n }", "Caddyfile:3"),
    ],
)
def test_bad_lines(block: str, needle: str) -> None:
    errors = [str(e) for e in load_text(f":8080 {{\n {block}\n}}\n").errors]
    assert errors and needle in errors[0], errors


def test_rules_merge_by_path() -> None:
    c = load_text(
        ":8080 {\n push /index.html /a.css {\n  header N v\n }\n"
        " push /index.html /b.css {\n  method HEAD\n }\n push\n}\n"
    )
    assert not c.errors, c.errors
    assert c.sites[0].directives["push"] == PushConfig(
        [
            PushRule(
                "/index.html",
                [PushResource("/a.css", "GET", [("N", "v")]), PushResource("/b.css", "HEAD")],
            ),
            PushRule("/"),  # a bare `push`, as Caddy v1
        ]
    )


def test_preload_links() -> None:
    assert preload_links(
        [
            '</a.js>; rel=preload; as=script, </b.css>; rel="preload"',
            "</c.css>; rel=preload; nopush",
            "<https://other.test/d.js>; rel=preload",
            "</e.js>; rel=prefetch",
        ]
    ) == ["/a.js", "/b.css"]


def _nghttp(url: str) -> str:
    out = subprocess.run(
        ["nghttp", "-nv", url], capture_output=True, text=True, timeout=60, check=False
    )
    return out.stdout + out.stderr


def _promised(trace: str) -> list[str]:
    """The :path of each PUSH_PROMISE in an nghttp -v trace."""
    lines = trace.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "recv PUSH_PROMISE frame" in line:
            for back in reversed(lines[max(0, i - 12) : i]):
                if ":path:" in back:
                    out.append(back.split(":path:")[1].strip())
                    break
    return out


@pytest.mark.usefixtures("h2_engine")  # once per HTTP/2 engine
def test_push_over_h2(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "leaf", ["127.0.0.1"])
    www = tmp_path / "www"
    www.mkdir()
    for name, text in (("index.html", "hi\n"), ("style.css", "b{}\n"), ("app.js", "1\n")):
        (www / name).write_text(text)
    port, upstream, plain = free_port(), free_port(), free_port()
    log = tmp_path / "access.log"
    conf = tmp_path / "Caddyfile"
    conf.write_text(
        f"https://127.0.0.1:{port} {{\n root {www}\n tls {cert} {key}\n"
        f" push /index.html /style.css {{\n  header X-Pushed yes\n }}\n"
        f" proxy /app 127.0.0.1:{upstream}\n"
        f' log / {log} "{{proto}} {{uri}} {{>X-Pushed}}"\n}}\n'
        # the upstream: its responses name a preload
        f"127.0.0.1:{upstream} {{\n root {www}\n"
        f' header / Link "</app.js>; rel=preload; as=script"\n}}\n'
        f"127.0.0.1:{plain} {{\n root {www}\n}}\n"
    )
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
    try:
        wait_tcp(port, proc)
        wait_tcp(upstream, proc)
        assert _promised(_nghttp(f"https://127.0.0.1:{port}/")) == ["/style.css"]
        assert _promised(_nghttp(f"https://127.0.0.1:{port}/app/")) == ["/app.js"]
        assert _promised(_nghttp(f"https://127.0.0.1:{port}/style.css")) == []
        # a site without push pushes nothing
        assert "PUSH_PROMISE" not in _nghttp(f"http://127.0.0.1:{plain}/")
        # HTTP/1.1 and clients that refuse pushes get the page alone
        out = subprocess.run(
            ["curl", "-sk", "--http2", f"https://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == "hi\n"
        proc.signal(15)
        proc.wait(20)
        lines = log.read_text().splitlines()
        assert "HTTP/2.0 /style.css yes" in lines
        assert lines.count("HTTP/2.0 /style.css yes") == 1  # curl refused push
    finally:
        proc.stop()
