#!/usr/bin/env python3
"""Reverse proxy: meshkit web `proxy` vs nginx `proxy_pass` and Caddy 2 `reverse_proxy`.

One nginx backend answers `GET /` with a small fixed body (pinned to the client core, beside
wrk, so that the proxy core runs nothing but the proxy). nginx (one worker, an upstream
keep-alive pool of 64), Caddy 2 (GOMAXPROCS=1) and meshkit (`meshkit web -conf FILE` with
`proxy / BACKEND`) each run pinned to the server core in turn; wrk (-t1) measures requests/s
through each. Rounds interleave the three; the table prints medians and ratios, and each
proxy's CPU time per request (user + system, from /proc/PID/stat around each run): the number
to compare when other work on the machine makes the request rates noisy.

Goal: meshkit >= 1.0x nginx (measured here before: nginx 22.9k requests/s, Caddy 4.3k).
`--quick` is one short round (a CI smoke run). `--case post` sends `POST /` with a 1 KiB
body (Content-Length, through a wrk Lua script) instead of the small GET: the proxy lane's
small-body path.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ingress import (
    _WRK_ERRORS,
    _WRK_RATE,
    HOST,
    SRC_DIR,
    BenchError,
    Procs,
    Results,
    Sample,
    free_port,
    log,
    nginx_argv,
    pin,
    run_guarded,
    run_wrk,
    settle_server_args,
    start_caddy_site,
    wait_port,
    write_nginx_conf,
)

TARGETS = ("nginx", "caddy", "meshkit", "base")  # base: --baseline's tree (an A/B)
BODY = "hello from the backend, a small body of about one hundred bytes................"
ISSUE = {"nginx": 22_900.0, "caddy": 4_300.0}
POST_BODY = b"p" * 1024  # --case post: the request body (1 KiB, one Content-Length)


def _nginx_conf(prefix: Path, server: str) -> Path:
    return write_nginx_conf(prefix, server + "\n")


def start_backend(procs: Procs, core: int | None) -> int:
    port = free_port()
    server = f"""    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{BODY}"; }}
    }}"""
    prefix = procs.tmp / "backend"
    conf = _nginx_conf(prefix, server)
    cmd = nginx_argv(prefix, conf)
    proc, logfile = procs.start("backend", cmd, core)
    wait_port(port, proc, "nginx backend", logfile)
    return port


def start_nginx_proxy(procs: Procs, core: int | None, backend: int, log: bool = False) -> int:
    port = free_port()
    # --log: the access log in both (nginx buffers its lines as meshkit's log sink does)
    access = f"access_log {procs.tmp / 'nginx-access.log'} common buffer=64k;" if log else ""
    # Caddy v1's default line (common log format), which meshkit's `log` writes
    fmt = """log_format common '$remote_addr - $remote_user [$time_local] "$request" """
    fmt += """$status $body_bytes_sent';"""
    server = f"""    {fmt if log else ""}
    upstream backend {{ server {HOST}:{backend}; keepalive 64; }}
    server {{
        listen {HOST}:{port} backlog=4096;
        {access}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    prefix = procs.tmp / "nginx"
    conf = _nginx_conf(prefix, server)
    cmd = nginx_argv(prefix, conf)
    proc, logfile = procs.start("nginx", cmd, core)
    wait_port(port, proc, "nginx proxy", logfile)
    PIDS[port] = proc.pid
    return port


def start_caddy(procs: Procs, core: int | None, backend: int) -> int:
    port, proc = start_caddy_site(procs, core, f"    reverse_proxy {HOST}:{backend}\n")
    PIDS[port] = proc.pid
    return port


def start_meshkit(
    procs: Procs, core: int | None, backend: int, args: argparse.Namespace, name: str = "meshkit"
) -> int:
    port = free_port()
    conf = procs.tmp / f"Caddyfile-{name}"
    log = f"    log / {procs.tmp / (name + '-access.log')}\n" if args.log else ""
    conf.write_text(f"{HOST}:{port} {{\n    proxy / {HOST}:{backend}\n{log}}}\n")
    env = dict(os.environ)
    # this tree's meshkit (or --baseline's for the target base), also when one is installed
    src = str(Path(args.baseline) / "src") if name == "base" else str(SRC_DIR)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{src}{os.pathsep}{old}" if old else src
    if args.no_extensions:
        env["MESHKIT_NO_EXTENSIONS"] = "1"
    if args.no_proxy_lane:
        env["MESHKIT_PROXY_LANE"] = "0"  # the handler chain (the lane's twin) with the C parts
    cmd = [sys.executable, "-m", "meshkit", "web", "-conf", str(conf), "-quiet"]
    proc, logfile = procs.start(name, cmd, core, env=env)
    wait_port(port, proc, f"meshkit web ({name})", logfile, timeout=30)
    PIDS[port] = proc.pid
    return port


PIDS: dict[int, int] = {}  # proxy port -> the pid serving it (one process each)
CPU = "cpu"  # the metric of CPU microseconds per request
USER = "user"  # of which in user space (the proxy's own code; the kernel's share is alike)
RATIO = "ratio"  # meshkit / nginx requests/s in one round
CPU_RATIO = "cpu-ratio"  # nginx / meshkit CPU per request in one round (>= 1: meshkit cheaper)
BASE_RATIO = "base-ratio"  # base / meshkit CPU per request in one round (>= 1: this tree cheaper)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def check(port: int, name: str, case: str = "get") -> None:
    data = POST_BODY if case == "post" else None
    with urllib.request.urlopen(f"http://{HOST}:{port}/", data, timeout=5) as reply:
        body = reply.read().decode()
    if body != BODY:
        raise BenchError(f"{name} answered {body[:80]!r} instead of the backend's body")


def run(args: argparse.Namespace, tmp: Path) -> Results:
    procs = Procs(tmp)
    results = Results()
    try:
        backend = start_backend(procs, args.client_core)
        ports: dict[str, int] = {}
        if "nginx" in args.targets:
            ports["nginx"] = start_nginx_proxy(procs, args.server_core, backend, args.log)
        if "caddy" in args.targets:
            ports["caddy"] = start_caddy(procs, args.server_core, backend)
        if "meshkit" in args.targets:
            ports["meshkit"] = start_meshkit(procs, args.server_core, backend, args)
        if "base" in args.targets:
            ports["base"] = start_meshkit(procs, args.server_core, backend, args, "base")
        log(
            f"proxies: {ports}, backend {backend} (proxy CPU {args.server_core}, "
            f"wrk+backend CPU {args.client_core})"
        )
        wrk = partial(_wrk, args, tmp)
        for name, port in ports.items():
            check(port, name, args.case)
            wrk(port, 1)  # warm-up
        for r in range(1, args.rounds + 1):
            got: dict[str, tuple[float, float]] = {}
            for name, port in ports.items():
                user0, sys0 = cpu_split(PIDS[port])
                sample = wrk(port, args.duration)
                user1, sys1 = cpu_split(PIDS[port])
                results.add("small", name, sample)
                count = sample.value * args.duration
                per = (user1 - user0 + sys1 - sys0) / count * 1e6 if count else 0.0
                user = (user1 - user0) / count * 1e6 if count else 0.0
                results.add(CPU, name, Sample(per))
                results.add(USER, name, Sample(user))
                got[name] = (sample.value, per)
                extra = f"  ({sample.errors})" if sample.errors else ""
                log(
                    f"  round {r} {args.case:<5}  {name:<8} {sample.value:>10.0f} req/s"
                    f" {per:>6.1f} us CPU/request ({user:.1f} user){extra}"
                )
            if "base" in got and "meshkit" in got:
                m_cpu, b_cpu = got["meshkit"][1], got["base"][1]
                if m_cpu:
                    results.add(BASE_RATIO, "meshkit", Sample(b_cpu / m_cpu))
                    log(f"  round {r} base/meshkit CPU per request {b_cpu / m_cpu:.3f}x")
            if "nginx" in got and "meshkit" in got:
                (m_rps, m_cpu), (n_rps, n_cpu) = got["meshkit"], got["nginx"]
                if n_rps and m_cpu:
                    results.add(RATIO, "meshkit", Sample(m_rps / n_rps))
                    results.add(CPU_RATIO, "meshkit", Sample(n_cpu / m_cpu))
                    log(
                        f"  round {r} meshkit/nginx {m_rps / n_rps:.2f}x req/s,"
                        f" nginx/meshkit CPU per request {n_cpu / m_cpu:.2f}x"
                    )
    finally:
        procs.stop_all()
    return results


def _wrk(args: argparse.Namespace, tmp: Path, port: int, duration: float) -> Sample:
    """One wrk run of the bench's case: ingress.run_wrk for the GET; for the POST, wrk
    with a Lua script that sets the method and the 1 KiB body."""
    if args.case == "get":
        return run_wrk(port, duration, False, args.client_core, conns=args.connections)
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("p", {len(POST_BODY)})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{max(1, round(duration))}s"]
    cmd += ["--timeout", "5s", "-s", str(script), f"http://{HOST}:{port}/"]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        preexec_fn=pin(args.client_core),
        timeout=duration + 60,
        check=False,
    )
    match = _WRK_RATE.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise BenchError(f"{cmd} failed (status {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    errors = "; ".join(m.group(0).strip() for m in _WRK_ERRORS.finditer(proc.stdout))
    return Sample(float(match.group(1)), errors)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{math.floor(a / b * 100) / 100:.2f}x"


def report(results: Results, args: argparse.Namespace) -> bool:
    med = {t: results.median("small", t) for t in TARGETS}
    cpu = {t: results.median(CPU, t) for t in TARGETS}
    user = {t: results.median(USER, t) for t in TARGETS}
    what = "small GET" if args.case == "get" else f"POST of {len(POST_BODY)} bytes"
    print(
        f"\nproxy, {what} through one upstream (requests/s, medians of "
        f"{args.rounds} x {args.duration:g}s)"
    )
    print(f"{'target':<10}{'req/s':>12}{'vs nginx':>10}{'vs caddy':>10}{'CPU/req':>10}{'user':>9}")
    for t in TARGETS:
        if med[t] is None:
            continue
        us, uu = cpu[t], user[t]
        print(
            f"{t:<10}{med[t]:>12.0f}{_ratio(med[t], med['nginx']):>10}"
            f"{_ratio(med[t], med['caddy']):>10}{'-' if us is None else f'{us:.1f} us':>10}"
            f"{'-' if uu is None else f'{uu:.1f} us':>9}"
        )
    per_round = results.median(RATIO, "meshkit")
    per_cpu = results.median(CPU_RATIO, "meshkit")
    if per_round is not None and per_cpu is not None:
        print(
            f"meshkit vs nginx, median of the per-round ratios: {per_round:.2f}x req/s,"
            f" {per_cpu:.2f}x by CPU per request (nginx's / meshkit's)"
        )
    per_base = results.median(BASE_RATIO, "meshkit")
    if per_base is not None:
        print(
            f"this tree vs --baseline, median of the per-round ratios: {per_base:.3f}x by CPU"
            " per request (base's / this tree's)"
        )
    print(
        f"(measured before: nginx {ISSUE['nginx']:.0f}, caddy {ISSUE['caddy']:.0f}; "
        "goal meshkit >= 1.0x nginx)"
    )
    m, n = med.get("meshkit"), med.get("nginx")
    return m is None or n is None or m >= n


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round of 2 s each (smoke test)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument(
        "--case",
        choices=("get", "post"),
        default="get",
        help="get: the small GET (default); post: POST / with a 1 KiB body",
    )
    p.add_argument(
        "--targets", default="nginx,caddy,meshkit", help="subset of nginx,caddy,meshkit,base"
    )
    p.add_argument("--no-extensions", action="store_true", help="MESHKIT_NO_EXTENSIONS=1")
    p.add_argument("--log", action="store_true", help="an access log in nginx and meshkit")
    p.add_argument(
        "--no-proxy-lane",
        action="store_true",
        help="MESHKIT_PROXY_LANE=0: the handler chain instead of the proxy lane",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="another meshkit tree (built) run as the target base, interleaved: an A/B",
    )
    p.add_argument("--check-goals", action="store_true", help="exit 3 when the goal is missed")
    p.add_argument("--server-core", type=int, default=None, help="CPU for the proxies")
    p.add_argument("--client-core", type=int, default=None, help="CPU for wrk and the backend")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.duration < 1 or args.rounds < 1:
        p.error("--duration must be >= 1 and --rounds >= 1")
    settle_server_args(p, args, TARGETS)
    if ("base" in args.targets) != (args.baseline is not None):
        p.error("--baseline DIR and the target base go together")
    if args.baseline is not None and not (Path(args.baseline) / "src" / "meshkit").is_dir():
        p.error(f"--baseline {args.baseline}: no src/meshkit there")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ["wrk", "nginx", *(["caddy"] if "caddy" in args.targets else [])]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        log(f"error: required tool(s) not found on PATH: {', '.join(missing)}")
        return 2
    results = run_guarded(partial(run), args, "meshkit-bench-proxy-")
    if isinstance(results, int):
        return results
    met = report(results, args)
    if args.check_goals and not met:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
