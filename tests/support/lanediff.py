"""What the lane differential tests (tests/web/test_lane.py, test_lane_rules.py) send and
compare: one connection's plan of requests, each answer's status, headers bar Date and body,
and whether the server closed after a `Connection: close` answer; a log file's lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
