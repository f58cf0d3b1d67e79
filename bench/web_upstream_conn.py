#!/usr/bin/env python3
"""The proxy's upstream connection alone: the compiled UpstreamConn (csrc/upstream_resp.c)
against its pure-Python twin (client._Conn over httptools), in-process, on the same
upstream responses over and over as a kept connection reads them: a small Content-Length
answer (nginx's), a chunked one (an application server's), and the answer to HEAD.

Per response: begin(), data_received() of the whole response in one read, finish() (the
Reply, the connection back in the pool). Prints the median of `--rounds` timings in
microseconds per response and the ratio. `--quick` is one short round (a CI smoke run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

# the installed meshkit (with its compiled extension); src/ only when none is installed
try:
    import meshkit  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from meshkit.web.proxy.client import CONN, Pool, _Conn, finish
from meshkit.web.proxy.upstream import Upstream

BODY = b"hello from the backend, a small body of about one hundred bytes................"
RESPONSES = {
    "content-length": (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 20:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
        % (len(BODY), BODY),
        False,
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nServer: app\r\nContent-Type: text/html\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
        False,
    ),
    "head": (
        b"HTTP/1.1 200 OK\r\nServer: app\r\nContent-Length: 1234\r\n\r\n",
        True,
    ),
}


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _done(ok: bool) -> None:
    pass


def per_response(cls: Any, data: bytes, head_only: bool, count: int) -> float:
    pool = Pool(Upstream("http", "127.0.0.1", 9), 4, 1.0)
    conn = cls(pool)
    conn.connection_made(_Transport())
    start = time.perf_counter()
    for _ in range(count):
        conn.begin(head_only)
        conn.data_received(data)
        finish(conn, None, _done)
        pool.idle.pop()
    return (time.perf_counter() - start) / count * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=100_000, help="responses per timing")
    args = p.parse_args()
    rounds, count = (1, 5000) if args.quick else (args.rounds, args.count)
    if CONN is _Conn:
        print("the compiled connection is not in use (not built, or MESHKIT_NO_EXTENSIONS=1)")
        return 1
    print(f"{'response':<16}{'twin us':>10}{'C us':>10}{'ratio':>8}")
    for name, (data, head_only) in RESPONSES.items():
        twin, comp = [], []
        for _ in range(rounds):
            twin.append(per_response(_Conn, data, head_only, count))
            comp.append(per_response(CONN, data, head_only, count))
        t, c = statistics.median(twin), statistics.median(comp)
        print(f"{name:<16}{t:>10.2f}{c:>10.2f}{c / t:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
