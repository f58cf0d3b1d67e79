#!/usr/bin/env python3
"""The proxy's upstream half alone, in-process: what a request costs from the proxy handler
to the upstream and back, without the client side (connection, pipeline, output), which
the C client lane is replacing.

One nginx backend (bench/web_proxy.py's, pinned to the client core) answers `GET /` with a
small body. This process (pinned to the server core, uvloop) keeps `--inflight` requests
going through one `proxy / BACKEND` block and counts its own CPU time per request, three
ways, interleaved per round:

- `lane`: meshkit.web.proxy.lane.send() with a sink (the C client lane's entry: the
  compiled connection calls back, no Future, no coroutine per request);
- `handler`: ProxyHandler(request), the Future the Python pipeline awaits today;
- `twin`: the same handler over the pure-Python connection (MESHKIT_UPSTREAM_LANE=0 in a
  child process).

`--inproc` leaves the sockets out: the upstream's answer is handed to the kept connection's
data_received at once, so only the proxy's own work (routing, picking, the head, parsing
the answer, the sink or the Future) is counted.

For scale: nginx's whole proxy path (both sides) costs about 11-12 µs of CPU per request
on this machine (bench/web_proxy.py). `--quick` is one short round (a CI smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the installed meshkit (with its compiled extension); src/ only when none is installed
try:
    import meshkit  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent / "src"))


def _pin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


async def _measure(port: int, mode: str, seconds: float, inflight: int) -> tuple[float, float]:
    """(user, system) CPU microseconds per request."""
    from meshkit.web.message import Headers, Request, Response
    from meshkit.web.proxy import lane
    from meshkit.web.proxy.handler import ProxyRule, build_handler, make_route
    from meshkit.web.proxy.upstream import Upstream

    handler: Any = build_handler(
        [make_route(ProxyRule("/", [Upstream("http", "127.0.0.1", port)]))],
        lambda r: Response.error(404),
    )
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    state = {"count": 0, "stop": False, "running": 0}

    def request() -> Request:
        return Request("GET", "/", "/", headers=Headers([("Host", "bench"), ("User-Agent", "b")]))

    def finished() -> None:
        state["count"] += 1
        if state["stop"]:
            state["running"] -= 1
            if not state["running"] and not done.done():
                done.set_result(None)
            return
        start_one()

    class Sink:
        __slots__ = ()

        def on_head(self, status: int, headers: Any, length: Any) -> None:
            pass

        def on_body(self, data: bytes) -> None:
            pass

        def on_done(self) -> None:
            finished()

        def on_fallback(self, result: Any) -> None:
            lane.fallback_future(result).add_done_callback(lambda f: finished())

        def on_broken(self) -> None:
            finished()

    sink = Sink()

    def via_handler() -> None:
        result = handler(request())
        if isinstance(result, Response):
            finished()
        else:
            asyncio.ensure_future(result).add_done_callback(lambda f: finished())

    def start_one() -> None:
        if mode == "lane" and lane.send(handler, request(), sink):
            return
        via_handler()

    # warm up: open the kept connections through the usual path
    await asyncio.gather(*(asyncio.ensure_future(handler(request())) for _ in range(inflight)))
    state["running"] = inflight
    t0, count0 = os.times(), state["count"]
    for _ in range(inflight):
        start_one()
    await asyncio.sleep(seconds)
    state["stop"] = True
    t1, count1 = os.times(), state["count"]
    await asyncio.wait_for(done, 10)
    n = max(1, count1 - count0)
    return (t1.user - t0.user) / n * 1e6, (t1.system - t0.system) / n * 1e6


_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 20:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 80\r\nConnection: keep-alive\r\n\r\n" + b"x" * 80
)


async def _inproc(mode: str, count: int) -> float:
    """CPU microseconds per request without sockets: the upstream's answer handed to the
    kept connection's data_received at once (what is left: the proxy's own work)."""
    from meshkit.web.message import Headers, Request, Response
    from meshkit.web.proxy import lane
    from meshkit.web.proxy.client import CONN
    from meshkit.web.proxy.handler import ProxyRule, build_handler, make_route
    from meshkit.web.proxy.upstream import Upstream

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

    class Sink:
        __slots__ = ()

        def on_head(self, status: int, headers: Any, length: Any) -> None:
            pass

        def on_body(self, data: bytes) -> None:
            pass

        def on_done(self) -> None:
            pass

        def on_fallback(self, result: Any) -> None:
            raise RuntimeError("the lane fell back")

        def on_broken(self) -> None:
            raise RuntimeError("the lane broke")

    handler: Any = build_handler(
        [make_route(ProxyRule("/", [Upstream("http", "127.0.0.1", 9)]))],
        lambda r: Response.error(404),
    )
    pool = handler.routes[0].set.pools[0]
    conn = CONN(pool)
    conn.connection_made(Transport())
    pool.idle.append(conn)
    fields = [("Host", "bench"), ("User-Agent", "b")]
    sink = Sink()
    start = time.process_time()
    for _ in range(count):
        request = Request("GET", "/", "/", headers=Headers(fields))
        if mode == "lane":
            if not lane.send(handler, request, sink):
                raise RuntimeError("the lane did not take the request")
            conn.data_received(_RESPONSE)
        else:
            fut = handler(request)
            conn.data_received(_RESPONSE)
            fut.result()
    return (time.process_time() - start) / count * 1e6


def child(args: argparse.Namespace) -> None:
    import uvloop

    _pin(args.server_core)
    if args.inproc:
        us = uvloop.run(_inproc(args.mode, args.count))
        print(json.dumps({"user": us, "system": 0.0}))
        return
    user, system = uvloop.run(_measure(args.port, args.mode, args.duration, args.inflight))
    print(json.dumps({"user": user, "system": system}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one round of 2 s (smoke test)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    p.add_argument("--inflight", type=int, default=32, help="requests kept in flight")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1, help="CPU for the nginx backend")
    p.add_argument(
        "--inproc", action="store_true", help="without sockets: the proxy's own work only"
    )
    p.add_argument("--count", type=int, default=100_000, help="requests per --inproc run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="lane", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.rounds, args.duration, args.count = 1, 2.0, 5000
    from web_proxy import Procs, start_backend

    modes = ("lane", "handler", "twin")
    got: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            port = 0 if args.inproc else start_backend(procs, args.client_core)
            for r in range(args.rounds):
                for mode in modes:
                    env = dict(os.environ)
                    if mode == "twin":
                        env["MESHKIT_UPSTREAM_LANE"] = "0"
                    cmd = [sys.executable, __file__, "--child", "--mode", mode]
                    cmd += ["--port", str(port), "--duration", str(args.duration)]
                    cmd += ["--inflight", str(args.inflight), "--server-core"]
                    cmd += [str(args.server_core), "--count", str(args.count)]
                    cmd += ["--inproc"] if args.inproc else []
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        print(out.stderr, file=sys.stderr)
                        return 1
                    line = json.loads(out.stdout.strip().splitlines()[-1])
                    user, system = line["user"], line["system"]
                    got[mode].append((user, system))
                    print(
                        f"  round {r + 1} {mode:<8} {user + system:6.1f} us CPU/request"
                        f" (user {user:.1f}, system {system:.1f})"
                    )
        finally:
            procs.stop_all()
    print("\nupstream half alone, CPU per request (medians): total, user, system")
    for mode in modes:
        total = statistics.median(u + s for u, s in got[mode])
        user = statistics.median(u for u, _ in got[mode])
        system = statistics.median(s for _, s in got[mode])
        print(f"{mode:<8} {total:6.1f} us  {user:6.1f}  {system:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
