#!/usr/bin/env python3
"""meshkit ingress vs HAProxy (``mode tcp``, ``nbthread 1``), side by side in one run.

Three measurements, each taken for HAProxy and for meshkit ingress, interleaved
(haproxy, meshkit, haproxy, meshkit, ...) for several rounds; the median per proxy
and the ratio meshkit/haproxy are printed:

1. keep-alive requests/s   ``wrk -t1 -c50 -dD http://127.0.0.1:PROXY/``  (nginx backend)
2. new connections/s       the same with ``-H "Connection: close"``
3. bulk Gbit/s             ``iperf3 -c 127.0.0.1 -p PROXY -t D --json``  (iperf3 server backend)

The direct baselines (wrk straight to nginx, iperf3 straight to its server) are measured
in the same rounds for context.

CPU placement (the same as ``taskset -c``, done with ``os.sched_setaffinity``):
both proxies, and the backend (nginx with one worker, or the iperf3 server), on the
proxy core (default: the first CPU we may use); the clients (wrk -t1, iperf3 -c) alone on
the client core (default: the second CPU). Then only the proxy core saturates, and the
client never limits the proxied numbers; with the backend on the client core both cores
saturate and the client caps what a proxy can reach. ``--backend-core`` changes this.

HAProxy runs without health checks and meshkit with ``--health-interval 0s`` (a probe
every 2 s would also disturb the single-test iperf3 server).

Everything started here listens on 127.0.0.1 free ports, lives in a temporary directory
and is stopped by pid when the run ends.

    python bench/ingress.py                 # 5 rounds x 10 s per measurement
    python bench/ingress.py --quick         # smoke test: 1 round x 3 s
    python bench/ingress.py --json out.json --no-extensions
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"
HOST = "127.0.0.1"
REQUIRED_TOOLS = ("haproxy", "nginx", "wrk", "iperf3")
BODY_SIZE = 100
BUSY_WARN = 20.0  # % busy on a used CPU before a run that makes us warn about foreign load

# Numbers measured on the reference machine by the issue author (HAProxy 2.6).
ISSUE_HAPROXY = {"keepalive": 27_000.0, "newconn": 5_400.0, "bulk": 10.2}
# The bulk test also runs HAProxy with `option splice-auto` (target name below); issue 21
# asks meshkit for >= 1.0x of it (and >= 1.5x of HAProxy without splice).
SPLICE_TARGET = "haproxy-splice"
SPLICE_GOAL = 1.0


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    goal: float  # minimum meshkit/haproxy ratio


METRICS = (
    Metric("keepalive", "keep-alive requests/s", "req/s", 0.9),
    Metric("newconn", "new connections/s (Connection: close)", "conn/s", 1.0),
    Metric("bulk", "bulk throughput (iperf3)", "Gbit/s", 1.5),
)


@dataclass
class Sample:
    value: float
    errors: str = ""
    retransmits: int = 0  # iperf3's sender retransmits (not errors; shown in a summary line)
    background: float = 0.0  # busiest used CPU's % busy just before the run (foreign load)
    amount: float = 0.0  # what the run moved: requests (wrk) or GB (iperf3); 0: not known
    cpu: float = 0.0  # CPU seconds the proxy process used during the run (0: not measured)


@dataclass
class Results:
    # samples[metric][target] -> list of samples, target in direct/haproxy/meshkit
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)

    def add(self, metric: str, target: str, sample: Sample) -> None:
        self.samples.setdefault(metric, {}).setdefault(target, []).append(sample)

    def median(self, metric: str, target: str) -> float | None:
        values = [s.value for s in self.samples.get(metric, {}).get(target, [])]
        return statistics.median(values) if values else None

    def cpu_per_unit(self, metric: str, target: str) -> float | None:
        """Median CPU seconds of the proxy per request or per GB (None: not measured)."""
        values = [
            s.cpu / s.amount
            for s in self.samples.get(metric, {}).get(target, [])
            if s.cpu > 0 and s.amount > 0
        ]
        return statistics.median(values) if values else None


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pin(core: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child to one CPU (what `taskset -c CORE` does)."""
    if core is None:
        return None

    def _pin() -> None:
        os.sched_setaffinity(0, {core})

    return _pin


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (total jiffies, idle + iowait jiffies) from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields]
                out[int(name[3:])] = (sum(values), values[3] + values[4])
    return out


def background_busy(cores: set[int], interval: float = 0.3) -> float:
    """How busy (%) the busiest of cores is while nothing of ours runs: other people's load."""
    try:
        before = cpu_times()
        time.sleep(interval)
        after = cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    busiest = 0.0
    for core in cores:
        if core in before and core in after:
            total = after[core][0] - before[core][0]
            idle = after[core][1] - before[core][1]
            if total > 0:
                busiest = max(busiest, 100.0 * (total - idle) / total)
    return busiest


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process pid has used so far; 0.0 when it cannot be read.
    Softirq time (the kernel's TCP receive work) is not in it where the kernel accounts IRQ
    time apart, so this is the proxy's own share, comparable between proxies."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Procs:
    """Processes started by this run; all stopped by pid in stop_all()."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.pids: dict[str, int] = {}  # measured target -> its proxy's pid (for CPU time)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        core: int | None,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        logfile = self.tmp / f"{name}.log"
        with logfile.open("ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=pin(core),
                start_new_session=True,  # a Ctrl-C reaches us, and we stop it by pid
                env=env,
            )
        self.running.append((name, proc, logfile))
        return proc, logfile

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        self.running = [r for r in self.running if r[1] is not proc]

    def stop_all(self) -> None:
        for _, proc, _ in reversed(list(self.running)):
            self.stop(proc)


def wait_port(
    port: int, proc: subprocess.Popen[bytes], name: str, logfile: Path, timeout: float = 15.0
) -> None:
    """Poll with TCP connects until the port accepts; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} before listening on "
                f"{HOST}:{port}; its output:\n{tail(logfile)}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"{name} did not accept on {HOST}:{port} within {timeout:.0f} s; "
                f"its output:\n{tail(logfile)}"
            )
        time.sleep(0.05)


def http_check(port: int, name: str) -> None:
    """One GET / must return 200 with the test body (through whatever listens on port)."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET / via {name} on {HOST}:{port} failed: {exc!r}") from exc
    if resp.status != 200 or len(body) != BODY_SIZE:
        raise BenchError(
            f"GET / via {name} on {HOST}:{port}: status {resp.status}, "
            f"{len(body)} bytes (expected 200 and {BODY_SIZE} bytes)"
        )


# --------------------------------------------------------------------------- servers


def write_nginx_conf(prefix: Path, http: str) -> Path:
    """`prefix`/nginx.conf for the anchors: one worker in the foreground (stopped by pid), no
    access log, keep-alive without limits; `http` goes inside the http block (servers,
    upstreams, settings of that bench)."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{http}}}
"""
    )
    return conf


def start_caddy_site(procs: Procs, core: int | None, site: str) -> tuple[int, Any]:
    """Caddy 2 on one core (GOMAXPROCS=1), admin API and automatic HTTPS off, serving one
    http:// site on a free port with `site` (its directives) inside; its port and process."""
    home = procs.tmp / "caddy"
    home.mkdir()
    port = free_port()
    conf = home / "Caddyfile"
    conf.write_text(
        f"{{\n    admin off\n    auto_https off\n}}\n"
        f"http://{HOST}:{port} {{\n    bind {HOST}\n{site}}}\n"
    )
    env = {
        **os.environ,
        "GOMAXPROCS": "1",
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    cmd = ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]
    proc, logfile = procs.start("caddy", cmd, core, env=env)
    wait_port(port, proc, "caddy", logfile)
    return port, proc


def nginx_argv(prefix: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)]


def start_nginx(procs: Procs, core: int | None) -> int:
    prefix = procs.tmp / "nginx"
    (prefix / "www").mkdir(parents=True)
    (prefix / "logs").mkdir()
    (prefix / "www" / "index.html").write_bytes(b"x" * (BODY_SIZE - 1) + b"\n")
    port = free_port()
    conf = write_nginx_conf(
        prefix,
        f"""    default_type text/html;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {prefix}/www;
        location / {{ }}
    }}
""",
    )
    cmd = nginx_argv(prefix, conf)
    proc, logfile = procs.start("nginx", cmd, core)
    wait_port(port, proc, "nginx", logfile)
    http_check(port, "nginx")
    return port


def start_iperf3_server(procs: Procs, core: int | None) -> int:
    port = free_port()
    cmd = ["iperf3", "-s", "-B", HOST, "-p", str(port)]
    proc, logfile = procs.start("iperf3-server", cmd, core)
    wait_port(port, proc, "iperf3 server", logfile)
    return port


def start_haproxy(
    procs: Procs, core: int | None, backend_port: int, tag: str, *, splice: bool = False
) -> int:
    """HAProxy in front of backend_port; with splice, ``option splice-auto`` (splice(2)
    where HAProxy's heuristic says it pays), the variant issue 21 compares bulk against."""
    port = free_port()
    conf = procs.tmp / f"haproxy-{tag}.cfg"
    option = "    option splice-auto\n" if splice else ""
    conf.write_text(
        f"""global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    maxconn 4096

listen ingress
    bind {HOST}:{port}
    balance roundrobin
    server backend1 {HOST}:{backend_port}
{option}"""
    )
    proc, logfile = procs.start(f"haproxy-{tag}", ["haproxy", "-db", "-f", str(conf)], core)
    wait_port(port, proc, "haproxy", logfile)
    return port


def meshkit_env(no_extensions: bool) -> dict[str, str]:
    env = dict(os.environ)
    # this tree's meshkit first, even when another one is installed (an installed snapshot
    # would be measured instead, silently); a PYTHONPATH given to the bench still comes after
    old = env.get("PYTHONPATH")
    if not old or old.split(os.pathsep)[0] != str(SRC_DIR):
        env["PYTHONPATH"] = f"{SRC_DIR}{os.pathsep}{old}" if old else str(SRC_DIR)
    if no_extensions:
        env["MESHKIT_NO_EXTENSIONS"] = "1"
    return env


def meshkit_command(template: str | None, port: int, backend_port: int) -> list[str]:
    """The meshkit ingress command line.

    --meshkit-cmd is either a command prefix ("meshkit", "/opt/venv/bin/python -m meshkit"),
    to which "ingress --publish ... --backend ..." is appended, or a full template using
    {host} {port} {target} {backend}.
    """
    publish = f"{HOST}:{port}:{backend_port}"
    backend = f"{HOST}:{backend_port}"
    args = [
        "ingress",
        "--publish",
        publish,
        "--backend",
        backend,
        "--policy",
        "round_robin",
        "--idle-timeout",
        "300s",
        "--health-interval",
        "0s",
    ]
    if template is None:
        return [sys.executable, "-m", "meshkit", *args]
    if "{" in template:
        text = template.format(host=HOST, port=port, target=backend_port, backend=backend)
        return shlex.split(text)
    return [*shlex.split(template), *args]


def start_meshkit(
    procs: Procs, core: int | None, backend_port: int, tag: str, args: argparse.Namespace
) -> int:
    port = free_port()
    cmd = meshkit_command(args.meshkit_cmd, port, backend_port)
    proc, logfile = procs.start(f"meshkit-{tag}", cmd, core, env=meshkit_env(args.no_extensions))
    wait_port(port, proc, "meshkit ingress (" + shlex.join(cmd) + ")", logfile, timeout=30)
    return port


# --------------------------------------------------------------------------- clients

_WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_ERRORS = re.compile(r"Socket errors:.*|Non-2xx or 3xx responses:.*")
_WRK_COUNT = re.compile(r"(\d+) requests in ")


def run_wrk(
    port: int,
    duration: float,
    close: bool,
    core: int | None,
    *,
    path: str = "/",
    headers: Sequence[str] = (),
    conns: int = 50,
) -> Sample:
    """One wrk run (one thread) pinned to `core`; requests/s and any errors it reported."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    for h in (*headers, *(["Connection: close"] if close else [])):
        cmd += ["-H", h]
    cmd.append(f"http://{HOST}:{port}{path}")
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        preexec_fn=pin(core),
        timeout=duration + 60,
        check=False,
    )
    match = _WRK_RATE.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise BenchError(
            f"{shlex.join(cmd)} failed (status {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    errors = "; ".join(m.group(0).strip() for m in _WRK_ERRORS.finditer(proc.stdout))
    done = _WRK_COUNT.search(proc.stdout)
    return Sample(float(match.group(1)), errors, amount=float(done.group(1)) if done else 0.0)


def run_iperf3(port: int, duration: float, core: int | None) -> Sample:
    cmd = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(max(1, round(duration))), "--json"]
    last = ""
    for _attempt in range(10):
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            preexec_fn=pin(core),
            timeout=duration + 60,
            check=False,
        )
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = {"error": (proc.stdout + proc.stderr).strip() or "no output"}
        if "error" not in report and proc.returncode == 0:
            bps = float(report["end"]["sum_received"]["bits_per_second"])
            gb = float(report["end"]["sum_received"].get("bytes", 0)) / 1e9
            retrans = int(report["end"].get("sum_sent", {}).get("retransmits", 0))
            return Sample(bps / 1e9, retransmits=retrans, amount=gb)
        last = str(report.get("error"))
        # The server serves one test at a time and needs a moment between tests.
        if "busy" not in last and "Connection refused" not in last:
            break
        time.sleep(0.5)
    raise BenchError(f"{shlex.join(cmd)} failed: {last}")


# --------------------------------------------------------------------------- run


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "Gbit/s":
        return f"{value:.2f} Gbit/s"
    return f"{value / 1000:.1f}k {unit}"


def measure(
    results: Results,
    metric: str,
    target: str,
    fn: Callable[[], Sample],
    round_no: int,
    unit: str,
    cores: set[int],
    pid: int | None = None,
) -> None:
    busy = background_busy(cores)
    cpu0 = process_cpu(pid) if pid else 0.0
    sample = fn()
    if pid:
        sample.cpu = process_cpu(pid) - cpu0
    sample.background = busy
    results.add(metric, target, sample)
    notes = [sample.errors] if sample.errors else []
    if busy > BUSY_WARN:
        notes.append(f"CPU already {busy:.0f}% busy before the run")
    extra = f"  ({'; '.join(notes)})" if notes else ""
    log(f"  round {round_no} {metric:<9} {target:<8} {fmt(sample.value, unit)}{extra}")


@contextlib.contextmanager
def proxies(
    procs: Procs, args: argparse.Namespace, backend_port: int, tag: str, *, splice: bool = False
) -> Iterator[dict[str, int]]:
    """Start haproxy (with splice, also haproxy with ``option splice-auto``) and meshkit in
    front of backend_port; stop them afterwards."""
    before = len(procs.running)
    ports: dict[str, int] = {}
    try:
        ports["haproxy"] = start_haproxy(procs, args.proxy_core, backend_port, tag)
        procs.pids["haproxy"] = procs.running[-1][1].pid
        if splice:
            ports[SPLICE_TARGET] = start_haproxy(
                procs, args.proxy_core, backend_port, f"{tag}-splice", splice=True
            )
            procs.pids[SPLICE_TARGET] = procs.running[-1][1].pid
        if not args.no_meshkit:
            ports["meshkit"] = start_meshkit(procs, args.proxy_core, backend_port, tag, args)
            procs.pids["meshkit"] = procs.running[-1][1].pid
        yield ports
    finally:
        for _, proc, _ in list(procs.running[before:]):
            procs.stop(proc)


def run(args: argparse.Namespace, tmp: Path) -> Results:
    procs = Procs(tmp)
    results = Results()
    d = args.duration
    cores = {args.proxy_core, args.client_core, args.backend_core}
    try:
        nginx_port = start_nginx(procs, args.backend_core)
        log(f"nginx listening on {HOST}:{nginx_port}")
        http_metrics = [m for m in ("keepalive", "newconn") if m in args.metrics]
        with (
            proxies(procs, args, nginx_port, "http")
            if http_metrics
            else contextlib.nullcontext({}) as ports
        ):
            for name, port in ports.items():
                http_check(port, name)
                # Warm up (connection pools, caches, the Python proxy's code paths).
                run_wrk(port, 1, close=False, core=args.client_core)
            log(f"proxies in front of nginx: {ports}")
            targets = {"direct": nginx_port, **ports}
            for close, metric in ((False, "keepalive"), (True, "newconn")):
                if metric not in http_metrics:
                    continue
                unit = "req/s" if metric == "keepalive" else "conn/s"
                for r in range(1, args.rounds + 1):
                    for target, port in targets.items():
                        measure(
                            results,
                            metric,
                            target,
                            partial(run_wrk, port, d, close, args.client_core),
                            r,
                            unit,
                            cores,
                            procs.pids.get(target),
                        )
        if "bulk" not in args.metrics:
            return results
        iperf_port = start_iperf3_server(procs, args.backend_core)
        log(f"iperf3 server listening on {HOST}:{iperf_port}")
        with proxies(procs, args, iperf_port, "bulk", splice=True) as ports:
            log(f"proxies in front of iperf3: {ports}")
            targets = {"direct": iperf_port, **ports}
            for r in range(1, args.rounds + 1):
                for target, port in targets.items():
                    measure(
                        results,
                        "bulk",
                        target,
                        partial(run_iperf3, port, d, args.client_core),
                        r,
                        "Gbit/s",
                        cores,
                        procs.pids.get(target),
                    )
    finally:
        procs.stop_all()
    return results


def report(results: Results, args: argparse.Namespace) -> bool:
    """Print the table; return whether every goal was met (True if meshkit was skipped)."""
    header = ("metric", "direct", "haproxy median", "meshkit median", "ratio", "goal")
    rows: list[tuple[str, ...]] = []
    all_met = True
    for m in METRICS:
        direct = results.median(m.key, "direct")
        hap = results.median(m.key, "haproxy")
        mk = results.median(m.key, "meshkit")
        ratio = mk / hap if mk is not None and hap else None
        if ratio is None:
            verdict = f">= {m.goal:.1f}x"
        else:
            met = ratio >= m.goal
            all_met = all_met and met
            verdict = f">= {m.goal:.1f}x {'met' if met else 'MISSED'}"
        rows.append(
            (
                m.title,
                fmt(direct, m.unit),
                fmt(hap, m.unit),
                fmt(mk, m.unit),
                # Truncated, not rounded, so that a shown 0.90x never reads as a miss.
                "-" if ratio is None else f"{math.floor(ratio * 100) / 100:.2f}x",
                verdict,
            )
        )
    hap_splice = results.median("bulk", SPLICE_TARGET)
    mk_bulk = results.median("bulk", "meshkit")
    if hap_splice is not None:
        ratio = mk_bulk / hap_splice if mk_bulk is not None and hap_splice else None
        verdict = f">= {SPLICE_GOAL:.1f}x"
        if ratio is not None:
            all_met = all_met and ratio >= SPLICE_GOAL
            verdict += " met" if ratio >= SPLICE_GOAL else " MISSED"
        rows.append(
            (
                "bulk vs HAProxy option splice-auto",
                fmt(results.median("bulk", "direct"), "Gbit/s"),
                fmt(hap_splice, "Gbit/s"),
                fmt(mk_bulk, "Gbit/s"),
                "-" if ratio is None else f"{math.floor(ratio * 100) / 100:.2f}x",
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print()
    print(
        f"meshkit ingress vs HAProxy: {args.rounds} round(s) x {args.duration:g} s, medians; "
        f"proxies on CPU {args.proxy_core}, clients on CPU {args.client_core}, "
        f"backends on CPU {args.backend_core}"
        + (", MESHKIT_NO_EXTENSIONS=1" if args.no_extensions else "")
    )
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for m in METRICS:
        per = results.samples.get(m.key, {})
        paired = [
            f"{mk.value / hap.value:.2f}"
            for hap, mk in zip(per.get("haproxy", []), per.get("meshkit", []), strict=False)
            if hap.value
        ]
        if len(paired) > 1:
            print(f"{m.key} meshkit/haproxy per round: {' '.join(paired)}")
    per = results.samples.get("bulk", {})
    paired = [
        f"{mk.value / hap.value:.2f}"
        for hap, mk in zip(per.get(SPLICE_TARGET, []), per.get("meshkit", []), strict=False)
        if hap.value
    ]
    if len(paired) > 1:
        print(f"bulk meshkit/{SPLICE_TARGET} per round: {' '.join(paired)}")
    retrans = ", ".join(
        f"{target} {sum(s.retransmits for s in samples)}"
        for target, samples in results.samples.get("bulk", {}).items()
    )
    if retrans:
        print(f"iperf3 retransmits (sum over rounds): {retrans}")
    for note in goal_context(results):
        print(note)
    for note in cpu_lines(results):
        print(note)
    issue = ", ".join(fmt(ISSUE_HAPROXY[m.key], m.unit) for m in METRICS)
    print(f"(issue author's HAProxy 2.6 numbers on the reference machine: {issue})")
    report_errors_and_noise(results)
    return all_met


def goal_context(results: Results) -> list[str]:
    """One line per measured metric: the goal in absolute terms beside the direct path's
    figure, so a reader sees when a goal (bulk's 1.5x HAProxy) is above what the backend
    reaches with no proxy at all, and how far meshkit is from the direct path."""
    lines = []
    for m in METRICS:
        direct = results.median(m.key, "direct")
        hap = results.median(m.key, "haproxy")
        if direct is None or not hap:
            continue
        need = m.goal * hap
        line = (
            f"{m.key} goal: {m.goal:.1f}x HAProxy = {fmt(need, m.unit)}; "
            f"direct (no proxy) {fmt(direct, m.unit)} = {direct / hap:.2f}x HAProxy"
        )
        if need > direct:
            line += " (the goal is above the direct path)"
        mk = results.median(m.key, "meshkit")
        if mk is not None and direct:
            line += f"; meshkit = {mk / direct:.2f}x direct"
        lines.append(line)
    return lines


def cpu_lines(results: Results) -> list[str]:
    """The proxies' own CPU per request / per GB (medians): on a shared machine throughput
    swings with other people's load, CPU per unit of work much less, so this is the figure
    to compare between builds (softirq time not included, see process_cpu)."""
    lines = []
    for m in METRICS:
        per = {t: results.cpu_per_unit(m.key, t) for t in ("haproxy", SPLICE_TARGET, "meshkit")}
        got = {t: v for t, v in per.items() if v is not None}
        if not got:
            continue
        if m.unit == "Gbit/s":
            text = ", ".join(f"{t} {v:.3f} s/GB" for t, v in got.items())
        else:
            text = ", ".join(f"{t} {v * 1e6:.1f} µs/req" for t, v in got.items())
        hap, mk = got.get("haproxy"), got.get("meshkit")
        ratio = f" (meshkit/haproxy {mk / hap:.2f}x)" if hap and mk else ""
        lines.append(f"{m.key} proxy CPU (own process, medians): {text}{ratio}")
    return lines


def report_errors_and_noise(results: Results, skip: Sequence[str] = ()) -> None:
    """Print what clients reported as errors, and warn when runs started on a busy machine
    (metrics in `skip` are left out of the warning)."""
    errors = [
        f"{metric}/{target}: {s.errors}"
        for metric, per_target in results.samples.items()
        for target, samples in per_target.items()
        for s in samples
        if s.errors
    ]
    if errors:
        print("client-reported errors:")
        for e in errors:
            print(f"  {e}")
    every = [
        s for k, per in results.samples.items() if k not in skip for ss in per.values() for s in ss
    ]
    noisy = [s for s in every if s.background > BUSY_WARN]
    if noisy:
        print(
            f"warning: {len(noisy)} of {len(every)} runs started while a CPU in use was more "
            f"than {BUSY_WARN:.0f}% busy with other work; compare ratios, not absolute numbers, "
            "and consider more --rounds"
        )


def write_json(results: Results, args: argparse.Namespace, path: Path) -> None:
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "cores": {
            "proxy": args.proxy_core,
            "client": args.client_core,
            "backend": args.backend_core,
        },
        "no_extensions": args.no_extensions,
        "metrics": {},
    }
    for m in METRICS:
        per_target = results.samples.get(m.key, {})
        entry: dict[str, Any] = {"unit": m.unit, "goal_ratio": m.goal}
        for target, samples in per_target.items():
            entry[target] = {
                "median": results.median(m.key, target),
                "samples": [s.value for s in samples],
                "errors": [s.errors for s in samples if s.errors],
                "retransmits": [s.retransmits for s in samples],
                "background_busy_pct": [round(s.background, 1) for s in samples],
                "proxy_cpu_s": [round(s.cpu, 3) for s in samples],
                "amount": [s.amount for s in samples],
            }
        hap = results.median(m.key, "haproxy")
        mk = results.median(m.key, "meshkit")
        entry["ratio"] = mk / hap if mk is not None and hap else None
        out["metrics"][m.key] = entry
    path.write_text(json.dumps(out, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="meshkit ingress vs HAProxy (mode tcp, nbthread 1): keep-alive req/s, "
        "new conn/s and iperf3 bulk, interleaved rounds, medians and ratios."
    )
    p.add_argument("--quick", action="store_true", help="one round of 3 s each (smoke test)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write results to FILE")
    p.add_argument(
        "--meshkit-cmd",
        default=None,
        help="command prefix to run meshkit (default: python -m meshkit), or a full "
        "template with {host} {port} {target} {backend}",
    )
    p.add_argument(
        "--no-extensions", action="store_true", help="run meshkit with MESHKIT_NO_EXTENSIONS=1"
    )
    p.add_argument(
        "--no-meshkit", action="store_true", help="measure HAProxy and the baselines only"
    )
    p.add_argument(
        "--check-goals", action="store_true", help="exit 3 when a meshkit goal is missed"
    )
    p.add_argument(
        "--metrics",
        default="keepalive,newconn,bulk",
        help="what to measure, comma-separated (default: keepalive,newconn,bulk)",
    )
    p.add_argument("--proxy-core", type=int, default=None, help="CPU for both proxies")
    p.add_argument("--client-core", type=int, default=None, help="CPU for wrk / iperf3 -c")
    p.add_argument(
        "--backend-core",
        type=int,
        default=None,
        help="CPU for nginx / iperf3 -s (default: proxy's)",
    )
    args = p.parse_args(argv)
    settle_args(p, args)
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in args.metrics if m not in ("keepalive", "newconn", "bulk")]
    if bad or not args.metrics:
        p.error(f"--metrics {','.join(bad) or '(none)'}: expected keepalive, newconn, bulk")
    if args.duration < 1 or args.rounds < 1:
        p.error("--duration must be >= 1 and --rounds >= 1")
    return args


def settle_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Defaults that depend on --quick, and the CPU placement, shared by the ingress benches."""
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    cpus = sorted(os.sched_getaffinity(0))
    if args.proxy_core is None:
        args.proxy_core = cpus[0]
    if args.client_core is None:
        args.client_core = cpus[1] if len(cpus) > 1 else cpus[0]
    if args.backend_core is None:
        args.backend_core = args.proxy_core
    for name in ("proxy_core", "client_core", "backend_core"):
        if getattr(args, name) not in cpus:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: usable CPUs are {cpus}")
    if len(cpus) < 2:
        log(f"warning: only CPU {cpus} usable; proxies and clients share a core")


def settle_server_args(
    p: argparse.ArgumentParser, args: argparse.Namespace, targets: Sequence[str]
) -> None:
    """--targets as a list (only known ones) and the server/client CPU placement, shared by
    the web benches: the servers on the first usable CPU, the clients on the second."""
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or set(args.targets) - set(targets):
        p.error(f"--targets: choose from {', '.join(targets)}")
    cpus = sorted(os.sched_getaffinity(0))
    if args.server_core is None:
        args.server_core = cpus[0]
    if args.client_core is None:
        args.client_core = cpus[1] if len(cpus) > 1 else cpus[0]
    for name in ("server_core", "client_core"):
        if getattr(args, name) not in cpus:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: usable CPUs are {cpus}")


def run_guarded(
    run_fn: Callable[[argparse.Namespace, Path], Results], args: argparse.Namespace, prefix: str
) -> Results | int:
    """Run a benchmark in a temp dir that is always removed; an exit code when it failed.

    SIGTERM unwinds like Ctrl-C, so every process the run started is stopped by its pid."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return run_fn(args, tmp)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        log(
            f"error: required tool(s) not found on PATH: {', '.join(missing)} "
            "(Debian: apt-get install haproxy nginx-light wrk iperf3)"
        )
        return 2

    results = run_guarded(run, args, "meshkit-bench-ingress-")
    if isinstance(results, int):
        return results
    all_met = report(results, args)
    if args.json:
        write_json(results, args, args.json)
    if args.check_goals and not args.no_meshkit and not all_met:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
