#!/usr/bin/env python3
"""Request-head parsing cost: the head lane (compiled scanner, and its pure-Python twin)
against the httptools path it replaces for bodyless requests (HttpRequestParser with the
connection's per-field callbacks, then http1.scan_head and the size check).

Each implementation reads the same heads (wrk's, curl's, a browser's) over and over, as a
connection does; the table prints the median of `--rounds` timings in microseconds per head
and the ratio to the httptools path. The target check (http1.parse_target, memoised) is the
same on both paths and left out. `--quick` is one short round (a CI smoke run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

# the installed meshkit (with its compiled extension); src/ only when none is installed
try:
    import meshkit  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import httptools

from meshkit._ext import load_fastpath
from meshkit.web import headparse, http1

HEADS = {
    "wrk": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "curl": b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n\r\n",
    "browser": b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://www.example.com/\r\nConnection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef; theme=dark\r\nSec-Fetch-Dest: script\r\n"
    b"Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\n\r\n",
}
LIMITS = (1 << 20, 100, 8192)


class _Callbacks:
    """The connection's httptools callbacks, doing the same work per field."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.result: object = None

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= LIMITS[1] or len(name) + len(value) + 2 > LIMITS[2]:
            raise ValueError("431")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        method = self.parser.get_method()
        items, host, keep, _framing, size = http1.scan_head(self.headers, version)
        if size + len(self.url) > LIMITS[0]:
            raise ValueError("431")
        self.result = (method, self.url, version, items, host, keep)
        self.headers = []


def _httptools(raw: bytes) -> Callable[[], object]:
    cb = _Callbacks()
    feed = cb.parser.feed_data

    def run() -> object:
        feed(raw)
        return cb.result

    return run


def _lane(scan: Callable[..., object], raw: bytes) -> Callable[[], object]:
    def run() -> object:
        return scan(raw, 0, *LIMITS)

    return run


def _time(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=100_000, help="heads per timing")
    args = p.parse_args(argv)
    rounds, count = (1, 2000) if args.quick else (args.rounds, args.count)
    fastpath = load_fastpath()
    impls: dict[str, Callable[[bytes], Callable[[], object]]] = {"httptools": _httptools}
    if fastpath is not None and hasattr(fastpath, "scan_head"):
        impls["lane (C)"] = lambda raw: _lane(fastpath.scan_head, raw)
    impls["lane (Python)"] = lambda raw: _lane(headparse.scan_head, raw)
    print(f"{'head':10} {'implementation':16} {'µs/head':>9} {'ratio':>7}")
    for name, raw in HEADS.items():
        base = 0.0
        for impl, make in impls.items():
            fn = make(raw)
            fn()
            med = statistics.median(_time(fn, count) for _ in range(rounds))
            base = base or med
            print(f"{name:10} {impl:16} {med:9.2f} {med / base:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
