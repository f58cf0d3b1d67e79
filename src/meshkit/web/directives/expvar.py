"""expvar [PATH]: the server's figures as JSON (Caddy v1; PATH defaults to /debug/vars).

A request under PATH gets a JSON object, one member per line as Go's expvar wrote it:

    cmdline    the process's command line
    memstats   process figures: resident and virtual memory (now and peak), CPU seconds,
               page faults, open file descriptors, threads, Python's GC generations
    tasks      asyncio tasks running in the server's loop (v1 published Goroutines)
    meshkit    the server's counters: open client connections and listening servers of the
               whole process; websockets bridged now and in all; and for this site, the
               requests that reached expvar (those basicauth, redir, status... answered
               before it are not counted), the responses to them by status class and the
               body bytes those sent

Anyone who can reach PATH reads these: protect it (basicauth) or keep it on a private site.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass

from meshkit.web import counters
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site

DEFAULT_PATH = "/debug/vars"
_STARTED = time.time()


@dataclass
class ExpvarConfig:
    path: str = DEFAULT_PATH


def parse(d: Dispenser, site: Site) -> ExpvarConfig:
    config = ExpvarConfig()
    while d.next():
        args = d.remaining_args()
        if len(args) > 1:
            raise d.arg_err()
        config.path = args[0] if args else DEFAULT_PATH
        for _ in d.block():
            raise d.err("expvar takes no block")
    return config


def _proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, VmSize, VmPeak and Threads of /proc/self/status (bytes, count)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmSize", "VmPeak", "Threads"):
                    parts = value.split()
                    n = int(parts[0])
                    out[key] = n * 1024 if len(parts) > 1 and parts[1] == "kB" else n
    except (OSError, ValueError, IndexError):
        pass
    return out


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def memstats() -> dict[str, object]:
    status = _proc_status()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gen = gc.get_stats()
    return {
        "rss_bytes": status.get("VmRSS", 0),
        "rss_peak_bytes": status.get("VmHWM", usage.ru_maxrss * 1024),
        "virtual_bytes": status.get("VmSize", 0),
        "virtual_peak_bytes": status.get("VmPeak", 0),
        "cpu_user_seconds": round(usage.ru_utime, 3),
        "cpu_system_seconds": round(usage.ru_stime, 3),
        "minor_page_faults": usage.ru_minflt,
        "major_page_faults": usage.ru_majflt,
        "open_fds": _open_fds(),
        "threads": status.get("Threads", threading.active_count()),
        "gc_collections": [g.get("collections", 0) for g in gen],
        "gc_collected": [g.get("collected", 0) for g in gen],
        "gc_pending": list(gc.get_count()),
    }


class _SiteCounts:
    __slots__ = ("bytes_sent", "classes", "completed", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.completed = 0
        self.bytes_sent = 0
        self.classes = {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}

    def done(self, request: Request, response: Response, sent: int) -> None:
        self.completed += 1
        self.bytes_sent += sent
        key = f"{response.status // 100}xx"
        if key in self.classes:
            self.classes[key] += 1


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (a handler called from a test)
        return 0


def render(counts: _SiteCounts) -> bytes:
    ws = counters.WEBSOCKETS
    figures = {
        "cmdline": [sys.executable, *sys.argv],
        "memstats": memstats(),
        "tasks": _tasks(),
        "meshkit": {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - _STARTED, 3),
            "servers": counters.servers(),
            "open_connections": counters.open_connections(),
            "websockets_active": ws.active,
            "websockets_total": ws.total,
            "site_requests": counts.requests,
            "site_responses": counts.completed,
            "site_responses_by_class": dict(counts.classes),
            "site_bytes_sent": counts.bytes_sent,
        },
    }
    # Go's expvar layout: "{\n", one `"key": value` per line, "\n}\n"
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in figures.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def build(config: ExpvarConfig, next: Handler, site: Site) -> Handler:
    base = clamp_path(config.path)
    counts = _SiteCounts()

    def expvar_handler(request: Request) -> HandlerResult:
        counts.requests += 1
        request.on_complete.append(counts.done)
        if not request.path.startswith(base):
            return next(request)
        return Response(
            status=200,
            headers=Headers(
                [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store")]
            ),
            body=render(counts),
        )

    return expvar_handler


register("expvar", parse, build)
