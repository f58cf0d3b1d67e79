"""What the lane differential tests (tests/web/test_lane.py, test_lane_rules.py) send and
compare: one connection's plan of requests, each answer's status, headers bar Date and body,
and whether the server closed after a `Connection: close` answer; a log file's lines; and
`TwinServers`, one site on a compiled server and a Python one (the body lanes' tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.httpserver_util import Reader, ServerThread, connect
from support.polling import wait_until

Seen = tuple[int, list[tuple[str, str]], bytes]
Req = tuple[str, str, str, str, int, bool]


def plan_of(
    reqs: list[Req], raw: Callable[[str, str, str, str, bool], bytes]
) -> list[tuple[bytes, str]]:
    """Generated requests as one connection's plan: each sent `times` times, the last one
    closing when it asks to."""
    plan_: list[tuple[bytes, str]] = []
    for i, (method, path, version, extra, times, close) in enumerate(reqs):
        last = i == len(reqs) - 1
        for t in range(times):
            closing = close and last and t == times - 1
            plan_.append((raw(method, path, version, extra, closing), method))
    return plan_


def run(st_: ServerThread, plan_: list[tuple[bytes, str]]) -> tuple[list[Seen], bool]:
    """Send each (request, method) on one connection; the answers seen, and whether the
    connection was closed after an answer that said so."""
    seen: list[Seen] = []
    with connect(st_.port) as sock:
        reader = Reader(sock)
        for data, method in plan_:
            sock.sendall(data)
            reply = reader.response(method)
            heads = [(k, v) for k, v in reply.headers if k.lower() != "date"]
            seen.append((reply.status, heads, reply.body))
            if reply.header("Connection") == "close":
                break
        closed = reader.closed(3.0) if seen and ("Connection", "close") in seen[-1][1] else False
    return seen, closed


def log_lines(path: Path, n: int) -> list[str]:
    assert wait_until(lambda: path.exists() and path.read_text().count("\n") >= n)
    return path.read_text().splitlines()


def _count(log: Path) -> int:
    return log.read_text().count("\n") if log.exists() else 0


class TwinServers:
    """The same site on a compiled server and a Python one, each writing its access log:
    `make(folder)` gives a site's router and its log file."""

    def __init__(self, base: Path, make: Callable[[Path], tuple[Any, Path]]) -> None:
        (base / "c").mkdir()
        (base / "py").mkdir()
        router_c, self.log_c = make(base / "c")
        router_py, self.log_py = make(base / "py")
        self.c = ServerThread(router_c, compiled=True)
        self.py = ServerThread(router_py, compiled=False)
        self.lines = 0

    def stop(self) -> None:
        self.c.stop()
        self.py.stop()

    @staticmethod
    def run(st_: ServerThread, reqs: list[bytes]) -> list[Seen]:
        """Send each raw read on one connection (pipelined requests in one read: an answer
        for each); the answers, until one closes the connection."""
        seen: list[Seen] = []
        with connect(st_.port) as sock:
            reader = Reader(sock)
            for data in reqs:
                sock.sendall(data)
                for _ in range(data.count(b" HTTP/1.")):
                    reply = reader.response()
                    heads = [(k, v) for k, v in reply.headers if k.lower() != "date"]
                    seen.append((reply.status, heads, reply.body))
                    if reply.header("Connection") == "close" or reader.eof:
                        return seen
        return seen

    def both(self, reqs: list[bytes], refusals: bool = False) -> list[Seen]:
        """Send reqs to both servers: the same answers, and the same log lines (one per
        answer; with `refusals`, statuses from 400 on are the connection's own refusals,
        which never reach the site's log)."""
        got_c = self.run(self.c, reqs)
        got_py = self.run(self.py, reqs)
        assert got_c == got_py
        self.lines += sum(1 for g in got_c if g[0] < 400) if refusals else len(got_c)
        lines = self.lines
        assert wait_until(lambda: _count(self.log_c) >= lines and _count(self.log_py) >= lines)
        assert self.log_c.read_text().splitlines() == self.log_py.read_text().splitlines()
        return got_c
