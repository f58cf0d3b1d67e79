#!/usr/bin/env python3
"""FastCGI: meshkit web `fastcgi` vs nginx `fastcgi_pass`, each to a php-fpm pool of its own.

nginx (one worker, ``fastcgi_keep_conn on`` with an upstream ``keepalive`` cache as large as
wrk's connection count) and ``meshkit web`` (``fastcgi / ENDPOINT php``, which keeps
connections too) are pinned to the server core; php-fpm 8.2 and wrk (``-t1``) run on the
other core. Each server and transport has its own php-fpm pool (``pm = static``, as many
children as wrk has connections): a php-fpm child serves one connection until it closes, so
the kept connections of one server, idle while the other one runs, would otherwise hold
children the other one waits for. Cases:

1. hello  ``GET /hello.php``  -> ``Hello World\\n``                     goal >= 1.0x nginx
2. page   ``GET /page.php``   -> 16 KiB of HTML from str_repeat          reported
3. unix   ``GET /hello.php`` over php-fpm's unix socket                 reported
4. post   ``POST /form.php`` with a 1 KiB urlencoded form (40 fields);
          the script parses $_POST and answers ``40 fields, 1024 bytes``   reported

Rounds interleave nginx and meshkit per case; the table shows medians and ratios, and each
server's CPU time per request (user + system, from /proc/PID/stat around each run): the number
to compare when other work on the machine makes the request rates noisy.
Everything started here lives in a temporary directory and is stopped by pid.

    python bench/web_fastcgi.py              # 5 rounds x 10 s per case and server
    python bench/web_fastcgi.py --quick      # smoke test: 1 round x 2 s, hello and post
    python bench/web_fastcgi.py --cases post --before /work/base/src   # A/B of a change
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ingress import (
    _WRK_ERRORS,
    _WRK_RATE,
    BUSY_WARN,
    HOST,
    BenchError,
    Procs,
    Results,
    Sample,
    background_busy,
    free_port,
    log,
    meshkit_env,
    nginx_argv,
    pin,
    report_errors_and_noise,
    run_guarded,
    run_wrk,
    settle_server_args,
    wait_port,
    write_nginx_conf,
)

PHP_FPM = "/usr/sbin/php-fpm8.2"
TARGETS = ("nginx", "meshkit")
PAGE_SIZE = 16 * 1024


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    path: str
    unix: bool
    goal: float | None  # minimum meshkit/nginx ratio; None: reported only
    form: bytes = b""  # a request body: POSTed as application/x-www-form-urlencoded


def _form() -> bytes:
    """A 1 KiB urlencoded form of 40 fields (a login or comment form with some state)."""
    fields = [f"field{i:02d}=" + "v" * 16 for i in range(40)]
    body = "&".join(fields)
    return (body + "&pad=" + "p" * (1024 - len(body) - 5)).encode()


FORM = _form()
CASES = (
    Case("hello", "Hello World (TCP 127.0.0.1)", "/hello.php", False, 1.0),
    Case("page", f"{PAGE_SIZE // 1024} KiB page (TCP)", "/page.php", False, None),
    Case("unix", "Hello World (unix socket)", "/hello.php", True, None),
    Case("post", "form POST, 1 KiB (TCP)", "/form.php", False, None, FORM),
)
FORM_ANSWER = b"41 fields, 1024 bytes\n"


def make_site(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "hello.php").write_text('<?php echo "Hello World\\n"; ?>')
    (root / "page.php").write_text(f"<?php echo str_repeat('x', {PAGE_SIZE});")
    (root / "form.php").write_text(
        "<?php echo count($_POST), ' fields, ', $_SERVER['CONTENT_LENGTH'], \" bytes\\n\";"
    )


def wrk_script(tmp: Path, case: Case) -> Path | None:
    """wrk's Lua script for a case with a body (None: a plain GET)."""
    if not case.form:
        return None
    script = tmp / f"{case.key}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
        f'wrk.body = "{case.form.decode()}"\n'
    )
    return script


def run_wrk_case(
    port: int, duration: float, core: int | None, case: Case, conns: int, script: Path | None
) -> Sample:
    """ingress.run_wrk, with wrk's -s script for a case with a body."""
    if script is None:
        return run_wrk(port, duration, False, core, path=case.path, conns=conns)
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    cmd += ["-s", str(script), f"http://{HOST}:{port}{case.path}"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=pin(core), timeout=duration + 60
    )
    match = _WRK_RATE.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    errors = "; ".join(m.group(0).strip() for m in _WRK_ERRORS.finditer(proc.stdout))
    return Sample(float(match.group(1)), errors)


def start_php_fpm(
    procs: Procs, core: int | None, children: int, pools: Sequence[tuple[str, bool]]
) -> dict[tuple[str, bool], str]:
    """One php-fpm master with a pool per (server, over a unix socket?): the endpoint of each
    (`HOST:PORT` or `unix:PATH`)."""
    prefix = procs.tmp / "php-fpm"
    prefix.mkdir()
    settings = f"pm = static\npm.max_children = {children}\npm.max_requests = 0\n"
    text = f"[global]\npid = {prefix}/php-fpm.pid\nerror_log = {prefix}/error.log\ndaemonize = no\n"
    endpoints: dict[tuple[str, bool], str] = {}
    ports: list[int] = []
    socks: list[Path] = []
    for target, is_unix in pools:
        name = f"{target}-{'unix' if is_unix else 'tcp'}"
        if is_unix:
            sock = prefix / f"{name}.sock"
            socks.append(sock)
            endpoints[target, is_unix] = f"unix:{sock}"
            listen = str(sock)
        else:
            port = free_port()
            ports.append(port)
            endpoints[target, is_unix] = f"{HOST}:{port}"
            listen = f"{HOST}:{port}"
        text += f"[{name}]\nlisten = {listen}\nlisten.backlog = 4096\n{settings}"
    conf = prefix / "php-fpm.conf"
    conf.write_text(text)
    proc, logfile = procs.start("php-fpm", [PHP_FPM, "-F", "-R", "-y", str(conf)], core)
    for port in ports:
        wait_port(port, proc, "php-fpm", logfile)
    deadline = time.monotonic() + 10
    for sock in socks:
        while not sock.exists():
            if time.monotonic() > deadline:
                raise BenchError(f"php-fpm never made {sock}")
            time.sleep(0.05)
    return endpoints


def start_nginx(
    procs: Procs, core: int | None, root: Path, endpoint: str, name: str, keepalive: int
) -> int:
    prefix = procs.tmp / name
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    conf = write_nginx_conf(
        prefix,
        f"""    client_body_temp_path {prefix}/body;
    fastcgi_temp_path {prefix}/fastcgi;
    proxy_temp_path {prefix}/proxy;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream php {{ server {endpoint}; keepalive {keepalive}; }}
    server {{
        listen {HOST}:{port} backlog=4096;
        root {root};
        location ~ \\.php$ {{
            fastcgi_pass php;
            fastcgi_keep_conn on;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_param SCRIPT_NAME $fastcgi_script_name;
            fastcgi_param DOCUMENT_ROOT $document_root;
            fastcgi_param DOCUMENT_URI $document_uri;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param SERVER_SOFTWARE nginx;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param REMOTE_PORT $remote_port;
            fastcgi_param SERVER_ADDR $server_addr;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param SERVER_NAME $server_name;
        }}
    }}
""",
    )
    cmd = nginx_argv(prefix, conf)
    proc, logfile = procs.start(name, cmd, core)
    wait_port(port, proc, name, logfile)
    PIDS[port] = proc.pid
    return port


def start_meshkit(
    procs: Procs,
    core: int | None,
    root: Path,
    endpoint: str,
    name: str,
    no_ext: bool,
    src: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> int:
    port = free_port()
    conf = procs.tmp / f"{name}.Caddyfile"
    conf.write_text(f"{HOST}:{port} {{\n    root {root}\n    fastcgi / {endpoint} php\n}}\n")
    cmd = [sys.executable, "-m", "meshkit", "web", "-conf", str(conf), "-quiet"]
    env = meshkit_env(no_ext)
    if src is not None:
        # --before: another tree's meshkit (its src/, with its own compiled extensions)
        env["PYTHONPATH"] = src
    env.update(extra_env or {})
    proc, logfile = procs.start(name, cmd, core, env=env)
    wait_port(port, proc, name, logfile, timeout=30)
    PIDS[port] = proc.pid
    return port


PIDS: dict[int, int] = {}  # server port -> the pid serving it (one process each)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def check(port: int, name: str, case: Case) -> None:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        if case.form:
            kind = {"Content-Type": "application/x-www-form-urlencoded"}
            conn.request("POST", case.path, case.form, kind)
        else:
            conn.request("GET", case.path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET {case.path} via {name} on {HOST}:{port} failed: {exc!r}") from exc
    want = b"x" * PAGE_SIZE if case.key == "page" else b"Hello World\n"
    if case.form:
        want = FORM_ANSWER
    if resp.status != 200 or body != want:
        raise BenchError(
            f"GET {case.path} via {name} on {HOST}:{port}: status {resp.status}, "
            f"{len(body)} bytes {body[:60]!r}"
        )


def run(args: argparse.Namespace, tmp: Path) -> Results:
    procs = Procs(tmp)
    results = Results()
    root = tmp / "www"
    make_site(root)
    cores = {args.server_core, args.client_core}
    cases = [c for c in CASES if c.key in args.cases]
    try:
        transports = sorted({c.unix for c in cases})
        endpoints = start_php_fpm(
            procs,
            args.client_core,
            args.connections,
            [(t, u) for u in transports for t in args.targets + extra_targets(args)],
        )
        ports: dict[tuple[str, bool], int] = {}
        for is_unix in transports:
            tag = "-unix" if is_unix else ""
            if "nginx" in args.targets:
                ports["nginx", is_unix] = start_nginx(
                    procs,
                    args.server_core,
                    root,
                    endpoints["nginx", is_unix],
                    "nginx" + tag,
                    args.connections,
                )
            if "meshkit" in args.targets:
                ports["meshkit", is_unix] = start_meshkit(
                    procs,
                    args.server_core,
                    root,
                    endpoints["meshkit", is_unix],
                    "meshkit" + tag,
                    args.no_extensions,
                )
            if args.before:
                ports["before", is_unix] = start_meshkit(
                    procs,
                    args.server_core,
                    root,
                    endpoints["before", is_unix],
                    "before" + tag,
                    args.no_extensions,
                    args.before,
                )
            if args.nolane:
                ports["nolane", is_unix] = start_meshkit(
                    procs,
                    args.server_core,
                    root,
                    endpoints["nolane", is_unix],
                    "nolane" + tag,
                    args.no_extensions,
                    extra_env={"MESHKIT_FCGI_LANE": "0"},
                )
        log(
            f"servers: {ports} (server CPU {args.server_core}, php-fpm + wrk CPU "
            f"{args.client_core})"
        )
        for case in cases:
            targets = [(t, ports[t, case.unix]) for t in args.targets]
            for extra in extra_targets(args):
                targets.append((extra, ports[extra, case.unix]))
            script = wrk_script(tmp, case)
            for name, port in targets:
                check(port, name, case)
                run_wrk_case(port, 1, args.client_core, case, args.connections, script)
            for r in range(1, args.rounds + 1):
                for name, port in targets:
                    busy = background_busy(cores)
                    user0, sys0 = cpu_split(PIDS[port])
                    sample: Sample = run_wrk_case(
                        port, args.duration, args.client_core, case, args.connections, script
                    )
                    user1, sys1 = cpu_split(PIDS[port])
                    cpu = user1 - user0 + sys1 - sys0
                    sample.background = busy
                    results.add(case.key, name, sample)
                    served = sample.value * args.duration
                    if served:
                        results.add(CPU + case.key, name, Sample(cpu / served * 1e6))
                        user = (user1 - user0) / served * 1e6
                        results.add(USER + case.key, name, Sample(user))
                    notes = [sample.errors] if sample.errors else []
                    if busy > BUSY_WARN:
                        notes.append(f"CPU already {busy:.0f}% busy before the run")
                    extra = f"  ({'; '.join(notes)})" if notes else ""
                    log(f"  round {r} {case.key:<6} {name:<8} {sample.value:,.0f} req/s{extra}")
    finally:
        procs.stop_all()
    return results


def fmt_ratio(value: float | None) -> str:
    # truncated, not rounded, so that a shown 1.00x never reads as a miss
    return "-" if value is None else f"{math.floor(value * 100) / 100:.2f}x"


CPU = "cpu:"  # metric prefix: CPU microseconds per request
USER = "user:"  # the user-space part of it


def report(results: Results, args: argparse.Namespace) -> bool:
    print()
    print(
        f"{'case':<32} {'nginx':>14} {'meshkit':>14} {'ratio':>8} {'goal':>7}"
        f" {'CPU/req nginx':>14} {'meshkit':>8}"
    )
    met = True
    for case in CASES:
        if case.key not in args.cases:
            continue
        n = results.median(case.key, "nginx")
        m = results.median(case.key, "meshkit")
        ratio = m / n if m is not None and n else None
        goal = f">={case.goal:.1f}x" if case.goal else "-"
        if case.goal and ratio is not None and ratio < case.goal:
            met = False
            goal += " MISS"
        cn = results.median(CPU + case.key, "nginx")
        cm = results.median(CPU + case.key, "meshkit")
        print(
            f"{case.title:<32} {_fmt(n):>14} {_fmt(m):>14} {fmt_ratio(ratio):>8} {goal:>7}"
            f" {_us(cn):>14} {_us(cm):>8}"
        )
        un = results.median(USER + case.key, "nginx")
        um = results.median(USER + case.key, "meshkit")
        print(f"{'':<32} {'of which user space':>38} {'':>7} {_us(un):>14} {_us(um):>8}")
        rounds = round_ratios(results, case.key, "meshkit")
        if rounds:
            print(f"{'':<32} per-round ratios {' '.join(fmt_ratio(r) for r in rounds)}")
        for extra in extra_targets(args):
            label = f"  before ({args.before})" if extra == "before" else "  MESHKIT_FCGI_LANE=0"
            b = results.median(case.key, extra)
            before = round_ratios(results, case.key, extra)
            print(
                f"{label:<32} {'':>14} {_fmt(b):>14}"
                f" {fmt_ratio(b / n if b is not None and n else None):>8} {'':>7}"
                f" {'':>14} {_us(results.median(CPU + case.key, extra)):>8}"
                f" (user {_us(results.median(USER + case.key, extra))})"
            )
            print(f"{'':<32} per-round ratios {' '.join(fmt_ratio(r) for r in before)}")
    samples = [
        s.value
        for metric, per in results.samples.items()
        if not metric.startswith((CPU, USER))
        for ss in per.values()
        for s in ss
    ]
    if len(samples) > 1:
        print(
            f"(medians of {args.rounds} round(s) x {args.duration:g} s, wrk -t1 "
            f"-c{args.connections}; spread of all runs: {statistics.pstdev(samples):,.0f})"
        )
    report_errors_and_noise(results, [m for m in results.samples if m.startswith((CPU, USER))])
    return met


def round_ratios(results: Results, metric: str, target: str) -> list[float]:
    """target / nginx in each round (runs of a round follow each other: less noise than a
    ratio of medians when the machine's load drifts)."""
    per = results.samples.get(metric, {})
    return [
        t.value / n.value
        for n, t in zip(per.get("nginx", []), per.get(target, []), strict=False)
        if n.value
    ]


def extra_targets(args: argparse.Namespace) -> list[str]:
    """The meshkit variants run beside nginx and meshkit: --before, --nolane."""
    return (["before"] if args.before else []) + (["nolane"] if args.nolane else [])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.1f}k req/s"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} us"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FastCGI: meshkit web vs nginx fastcgi_pass to one php-fpm (each server "
        "on the same core, php-fpm and wrk on another): medians and ratios."
    )
    p.add_argument("--quick", action="store_true", help="one round of 2 s, hello and post only")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--cases", default=None, help="comma-separated subset of hello,page,unix,post")
    p.add_argument("--targets", default=",".join(TARGETS), help="subset of nginx,meshkit")
    p.add_argument(
        "--before",
        default=None,
        metavar="SRC",
        help="also run the meshkit of another tree's src/ (e.g. a checkout of an older "
        "commit) in the same rounds, for before/after",
    )
    p.add_argument(
        "--nolane",
        action="store_true",
        help="also run meshkit with MESHKIT_FCGI_LANE=0 (the handler chain) in the same "
        "rounds, for the FastCGI lane's A/B",
    )
    p.add_argument("--no-extensions", action="store_true", help="MESHKIT_NO_EXTENSIONS=1")
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    p.add_argument("--server-core", type=int, default=None, help="CPU for nginx and meshkit")
    p.add_argument("--client-core", type=int, default=None, help="CPU for php-fpm and wrk")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.cases is None:
        args.cases = "hello,post" if args.quick else ",".join(c.key for c in CASES)
    if args.duration < 1 or args.rounds < 1 or args.connections < 2:
        p.error("--duration must be >= 1, --rounds >= 1 and --connections >= 2")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - {c.key for c in CASES}
    if unknown:
        p.error(f"--cases: unknown {', '.join(sorted(unknown))}")
    if args.before is not None:
        args.before = os.path.abspath(args.before)
        if not os.path.isfile(os.path.join(args.before, "meshkit", "__init__.py")):
            p.error(f"--before: {args.before} has no meshkit package (give a tree's src/)")
    settle_server_args(p, args, TARGETS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ["wrk", *(["nginx"] if "nginx" in args.targets else [])]
    missing = [t for t in needed if shutil.which(t) is None]
    if not os.access(PHP_FPM, os.X_OK):
        missing.append(PHP_FPM)
    if missing:
        log(
            f"error: required tool(s) not found: {', '.join(missing)} "
            "(Debian: apt-get install nginx-light wrk php8.2-fpm)"
        )
        return 2
    results = run_guarded(run, args, "meshkit-bench-fastcgi-")
    if isinstance(results, int):
        return results
    met = report(results, args)
    if args.check_goals and "meshkit" in args.targets and not met:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
