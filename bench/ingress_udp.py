#!/usr/bin/env python3
"""meshkit ingress UDP relay vs nginx's stream module UDP proxy, side by side in one run.

Two measurements, each taken directly (no proxy), through nginx and through meshkit
ingress, interleaved (direct, nginx, meshkit, direct, ...) for several rounds; the median
per target and the ratio meshkit/nginx are printed:

1. request/reply datagrams/s: a client keeps FLOWS connected UDP sockets (one flow each),
   each with one 64-byte datagram outstanding, against a Python recvfrom/sendto echo
   server; a datagram unanswered for --timeout is counted lost and sent again.
2. one-way throughput: ``iperf3 -u -b 0 -l 1400 -t D --json`` (receiver's Mbit/s and
   loss %); iperf3's TCP control connection goes through the same proxy port.

nginx (one worker, ``master_process off``) loads ngx_stream_module.so (Debian package
libnginx-mod-stream). Its request/reply server uses ``proxy_responses 1`` (a session ends
with the reply, the usual setting for DNS-like traffic); the iperf3 server leaves
proxy_responses unset, since iperf3's datagrams must keep one session (one upstream
source port) for the whole test. meshkit runs
``meshkit ingress --publish 127.0.0.1:P:T/udp --backend 127.0.0.1:T --health-interval 0s``
(plus ``/tcp`` on the same port for iperf3).

CPU placement as in bench/ingress.py: both proxies and the backend (echo server, iperf3
server) on the proxy core, the clients alone on the client core.

    python bench/ingress_udp.py                 # 5 rounds x 10 s per measurement
    python bench/ingress_udp.py --quick         # smoke test: 1 round x 3 s
    python bench/ingress_udp.py --rounds 3 --duration 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ingress import (
    BUSY_WARN,
    HOST,
    BenchError,
    Procs,
    Results,
    Sample,
    background_busy,
    log,
    meshkit_env,
    pin,
    report_errors_and_noise,
    run_guarded,
    settle_args,
    tail,
    wait_port,
)

REQUIRED_TOOLS = ("nginx", "iperf3")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
DATAGRAM = 64
IPERF_LEN = 1400


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    ratio: bool = True  # whether meshkit/nginx is meaningful (not for a loss percentage)


@dataclass
class UdpSample(Sample):
    lost: int = 0  # request/reply: datagrams that timed out; iperf3: lost packets
    sent: int = 0
    late: int = 0  # replies that came after their datagram was given up and resent


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port of 127.0.0.1 that is free for both TCP and UDP."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise BenchError("found no port free for both TCP and UDP on 127.0.0.1")


def wait_udp_echo(
    port: int, proc: subprocess.Popen[bytes], name: str, logfile: Path, timeout: float = 30.0
) -> None:
    """Send probe datagrams until one comes back (through whatever listens on port)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((HOST, port))
        s.settimeout(0.2)
        while True:
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {proc.returncode} before answering on "
                    f"{HOST}:{port}/udp; its output:\n{tail(logfile)}"
                )
            with contextlib.suppress(OSError):
                s.send(b"probe")
                if s.recv(2048) == b"probe":
                    return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"no echo from {name} on {HOST}:{port}/udp within {timeout:.0f} s; "
                    f"its output:\n{tail(logfile)}"
                )


def wait_log(
    logfile: Path,
    needle: str,
    count: int,
    proc: subprocess.Popen[bytes],
    name: str,
    timeout: float = 30.0,
) -> None:
    """Wait until needle appears count times in a process's log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = logfile.read_text(errors="replace")
        except OSError:
            text = ""
        if text.count(needle) >= count:
            return
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} before saying {needle!r}; "
                f"its output:\n{tail(logfile)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{name} did not say {needle!r} within {timeout:.0f} s; "
                f"its output:\n{tail(logfile)}"
            )
        time.sleep(0.05)


# --------------------------------------------------------------------------- echo + client
# Both run as this script in a child process (``_echo`` / ``_client``), pinned to a core.


def echo_main(port: int) -> int:
    """A UDP echo server: a plain blocking recvfrom/sendto loop."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((HOST, port))
    recvfrom, sendto = s.recvfrom, s.sendto
    while True:
        try:
            data, addr = recvfrom(4096)
            sendto(data, addr)
        except OSError:
            pass


def client_main(port: int, flows: int, duration: float, warmup: float, timeout: float) -> int:
    """Request/reply over `flows` connected sockets, one datagram outstanding on each.

    Prints one JSON line: replies, lost (timed out and resent), late (replies to a
    datagram already resent), sent, seconds, counted during `duration` after `warmup`.
    """
    ep = select.epoll()
    socks: list[socket.socket] = []
    index: dict[int, int] = {}
    for i in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((HOST, port))
        socks.append(s)
        index[s.fileno()] = i
        ep.register(s.fileno(), select.EPOLLIN)
    pad = bytes(DATAGRAM - 8)
    seq = [0] * flows
    sent_at = [0.0] * flows
    replies = lost = late = sent = refused = 0
    start = time.monotonic()
    begin = start + warmup
    end = begin + duration
    check_every = timeout / 4

    def send(i: int, now: float) -> None:
        seq[i] += 1
        sent_at[i] = now
        # A failed send is resent after the timeout, like a lost datagram.
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            socks[i].send(seq[i].to_bytes(8, "big") + pad)

    for i in range(flows):
        send(i, start)
    next_check = start + check_every
    now = start
    while now < end:
        events = ep.poll(check_every)
        now = time.monotonic()
        counting = begin <= now < end
        for fd, _ in events:
            i = index[fd]
            while True:
                try:
                    data = socks[i].recv(4096)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:  # ICMP port unreachable: nothing listens
                    refused += 1
                    break
                if int.from_bytes(data[:8], "big") != seq[i]:
                    late += counting
                    continue
                replies += counting
                sent += counting
                send(i, now)
        if now >= next_check:
            next_check = now + check_every
            for i in range(flows):
                if now - sent_at[i] > timeout:
                    lost += counting
                    sent += counting
                    send(i, now)
    seconds = min(now, end) - begin
    print(
        json.dumps(
            {
                "replies": replies,
                "lost": lost,
                "late": late,
                "sent": sent,
                "refused": refused,
                "seconds": seconds,
            }
        ),
        flush=True,
    )
    return 0


def run_client(port: int, args: argparse.Namespace) -> UdpSample:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "_client",
        str(port),
        str(args.flows),
        str(args.duration),
        "0.5",
        str(args.timeout),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        preexec_fn=pin(args.client_core),
        timeout=args.duration + 60,
        check=False,
    )
    try:
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise BenchError(
            f"UDP client failed (status {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        ) from exc
    errors = []
    if out["refused"]:
        errors.append(f"{out['refused']} ICMP port unreachable")
    if out["replies"] == 0:
        raise BenchError(f"no replies at all through 127.0.0.1:{port}/udp: {out}")
    return UdpSample(
        out["replies"] / out["seconds"],
        errors="; ".join(errors),
        lost=out["lost"],
        sent=out["sent"],
        late=out["late"],
    )


def run_iperf3_udp(port: int, args: argparse.Namespace) -> tuple[UdpSample, UdpSample]:
    """One iperf3 UDP test; (receiver Mbit/s, loss %) as two samples."""
    seconds = max(1, round(args.duration))
    cmd = ["iperf3", "-c", HOST, "-p", str(port), "-u", "-b", "0", "-l", str(IPERF_LEN)]
    cmd += ["-t", str(seconds), "--json"]
    last = ""
    for _attempt in range(10):
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            preexec_fn=pin(args.client_core),
            timeout=seconds + 60,
            check=False,
        )
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = {"error": (proc.stdout + proc.stderr).strip() or "no output"}
        if "error" not in report and proc.returncode == 0:
            end = report["end"]
            # The server's view: end.sum_received (iperf3 >= 3.12), else end.sum, which
            # older versions fill with the server's packet and loss counts.
            total = end.get("sum_received") or end["sum"]
            packets = int(total["packets"])
            lost = int(total["lost_packets"])
            if packets <= 0:
                raise BenchError(f"{shlex.join(cmd)}: the server received nothing")
            if "sum_received" in end:
                mbit = float(total["bits_per_second"]) / 1e6
            else:
                secs = float(total.get("seconds") or seconds)
                mbit = (packets - lost) * IPERF_LEN * 8 / secs / 1e6
            pct = 100.0 * lost / packets
            return (
                UdpSample(mbit, lost=lost, sent=packets),
                UdpSample(pct, lost=lost, sent=packets),
            )
        last = str(report.get("error"))
        # The server runs one test at a time and needs a moment between tests.
        if "busy" not in last and "Connection refused" not in last:
            break
        time.sleep(0.5)
    raise BenchError(f"{shlex.join(cmd)} failed: {last}")


# --------------------------------------------------------------------------- servers


def start_echo(procs: Procs, core: int | None) -> int:
    port = free_port()
    cmd = [sys.executable, os.path.abspath(__file__), "_echo", str(port)]
    proc, logfile = procs.start("echo", cmd, core)
    wait_udp_echo(port, proc, "UDP echo server", logfile)
    return port


def start_iperf3_server(procs: Procs, core: int | None) -> int:
    port = free_port()
    cmd = ["iperf3", "-s", "-B", HOST, "-p", str(port)]
    proc, logfile = procs.start("iperf3-server", cmd, core)
    wait_port(port, proc, "iperf3 server", logfile)
    return port


def start_nginx(
    procs: Procs, args: argparse.Namespace, backend_port: int, tag: str, with_tcp: bool
) -> int:
    prefix = procs.tmp / f"nginx-{tag}"
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    if with_tcp:
        servers = f"""    server {{
        listen {HOST}:{port} udp;
        proxy_pass {HOST}:{backend_port};
        proxy_timeout 10s;
    }}
    server {{
        listen {HOST}:{port};
        proxy_pass {HOST}:{backend_port};
    }}
"""
    else:
        servers = f"""    server {{
        listen {HOST}:{port} udp;
        proxy_pass {HOST}:{backend_port};
        proxy_responses 1;
        proxy_timeout 10s;
    }}
"""
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""load_module {args.stream_module};
{user}daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
stream {{
{servers}}}
"""
    )
    cmd = ["nginx", "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)]
    proc, logfile = procs.start(f"nginx-{tag}", cmd, args.proxy_core)
    if with_tcp:
        wait_port(port, proc, "nginx", logfile)
    else:
        wait_udp_echo(port, proc, "nginx", logfile)
    return port


def meshkit_command(template: str | None, port: int, backend_port: int, protos: str) -> list[str]:
    """--meshkit-cmd is a command prefix, or a template with {host} {port} {target} {backend}."""
    backend = f"{HOST}:{backend_port}"
    args = ["ingress"]
    for proto in protos.split(","):
        args += ["--publish", f"{HOST}:{port}:{backend_port}/{proto}"]
    args += ["--backend", backend, "--health-interval", "0s"]
    if template is None:
        return [sys.executable, "-m", "meshkit", *args]
    if "{" in template:
        text = template.format(host=HOST, port=port, target=backend_port, backend=backend)
        return shlex.split(text)
    return [*shlex.split(template), *args]


def start_meshkit(
    procs: Procs, args: argparse.Namespace, backend_port: int, tag: str, protos: str
) -> int:
    port = free_port()
    cmd = meshkit_command(args.meshkit_cmd, port, backend_port, protos)
    name = f"meshkit ingress ({shlex.join(cmd)})"
    proc, logfile = procs.start(
        f"meshkit-{tag}", cmd, args.proxy_core, env=meshkit_env(args.no_extensions)
    )
    wait_log(logfile, "listening", len(protos.split(",")), proc, name)
    if protos == "udp":
        wait_udp_echo(port, proc, name, logfile)
    else:
        wait_port(port, proc, name, logfile)
    return port


@contextlib.contextmanager
def proxies(
    procs: Procs, args: argparse.Namespace, backend_port: int, tag: str, with_tcp: bool
) -> Iterator[dict[str, int]]:
    """Start nginx (and meshkit) in front of backend_port; stop them afterwards."""
    before = len(procs.running)
    ports: dict[str, int] = {}
    try:
        ports["nginx"] = start_nginx(procs, args, backend_port, tag, with_tcp)
        if not args.no_meshkit:
            protos = "tcp,udp" if with_tcp else "udp"
            ports["meshkit"] = start_meshkit(procs, args, backend_port, tag, protos)
        yield ports
    finally:
        for _, proc, _ in list(procs.running[before:]):
            procs.stop(proc)


# --------------------------------------------------------------------------- run

METRICS = (
    Metric("pps", "request/reply datagrams/s", "dgram/s"),
    Metric("mbit", "one-way iperf3 -u -b 0, received", "Mbit/s"),
    Metric("loss", "one-way iperf3 loss", "%", ratio=False),
)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "Mbit/s":
        return f"{value:.0f} Mbit/s"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value / 1000:.1f}k {unit}"


def record(
    results: Results, metric: str, target: str, sample: UdpSample, round_no: int, unit: str
) -> None:
    results.add(metric, target, sample)
    notes = [sample.errors] if sample.errors else []
    if metric == "pps" and (sample.lost or sample.late):
        notes.append(f"{sample.lost} timed out, {sample.late} late")
    if sample.background > BUSY_WARN:
        notes.append(f"CPU already {sample.background:.0f}% busy before the run")
    extra = f"  ({'; '.join(notes)})" if notes else ""
    log(f"  round {round_no} {metric:<5} {target:<8} {fmt(sample.value, unit)}{extra}")


def run(args: argparse.Namespace, tmp: Path) -> Results:
    procs = Procs(tmp)
    results = Results()
    cores = {args.proxy_core, args.client_core, args.backend_core}
    try:
        echo_port = start_echo(procs, args.backend_core)
        log(f"UDP echo server on {HOST}:{echo_port}")
        with proxies(procs, args, echo_port, "echo", with_tcp=False) as ports:
            log(f"proxies in front of the echo server: {ports}")
            targets = {"direct": echo_port, **ports}
            for r in range(1, args.rounds + 1):
                for target, port in targets.items():
                    busy = background_busy(cores)
                    sample = run_client(port, args)
                    sample.background = busy
                    record(results, "pps", target, sample, r, "dgram/s")
        if args.no_iperf3:
            return results
        iperf_port = start_iperf3_server(procs, args.backend_core)
        log(f"iperf3 server listening on {HOST}:{iperf_port}")
        with proxies(procs, args, iperf_port, "iperf3", with_tcp=True) as ports:
            log(f"proxies in front of iperf3: {ports}")
            targets = {"direct": iperf_port, **ports}
            for r in range(1, args.rounds + 1):
                for target, port in targets.items():
                    busy = background_busy(cores)
                    mbit, loss = run_iperf3_udp(port, args)
                    mbit.background = loss.background = busy
                    record(results, "mbit", target, mbit, r, "Mbit/s")
                    results.add("loss", target, loss)
                    log(f"  round {r} loss  {target:<8} {fmt(loss.value, '%')}")
    finally:
        procs.stop_all()
    return results


def report(results: Results, args: argparse.Namespace) -> None:
    header = ("metric", "direct", "nginx median", "meshkit median", "meshkit/nginx")
    rows: list[tuple[str, ...]] = []
    for m in METRICS:
        if m.key not in results.samples:
            continue
        direct = results.median(m.key, "direct")
        ngx = results.median(m.key, "nginx")
        mk = results.median(m.key, "meshkit")
        ratio = mk / ngx if m.ratio and mk is not None and ngx else None
        rows.append(
            (
                m.title,
                fmt(direct, m.unit),
                fmt(ngx, m.unit),
                fmt(mk, m.unit),
                # Truncated, not rounded, as in bench/ingress.py.
                "-" if ratio is None else f"{math.floor(ratio * 100) / 100:.2f}x",
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    print()
    print(
        f"meshkit ingress UDP vs nginx stream: {args.rounds} round(s) x {args.duration:g} s, "
        f"medians; {args.flows} flows for request/reply; proxies on CPU {args.proxy_core}, "
        f"clients on CPU {args.client_core}, backends on CPU {args.backend_core}"
        + (", MESHKIT_NO_EXTENSIONS=1" if args.no_extensions else "")
    )
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for m in METRICS:
        per = results.samples.get(m.key, {})
        if not m.ratio:
            continue
        paired = [
            f"{mk.value / ngx.value:.2f}"
            for ngx, mk in zip(per.get("nginx", []), per.get("meshkit", []), strict=False)
            if ngx.value
        ]
        if len(paired) > 1:
            print(f"{m.key} meshkit/nginx per round: {' '.join(paired)}")
    pps = results.samples.get("pps", {})
    if pps:
        parts = []
        for target, samples in pps.items():
            lost = sum(s.lost for s in samples if isinstance(s, UdpSample))
            sent = sum(s.sent for s in samples if isinstance(s, UdpSample))
            late = sum(s.late for s in samples if isinstance(s, UdpSample))
            parts.append(f"{target} {lost}/{sent} ({late} late)")
        print(
            f"request/reply datagrams timed out after {args.timeout:g} s and resent "
            f"(sum over rounds): {', '.join(parts)}"
        )
    report_errors_and_noise(results, skip=("loss",))


def write_json(results: Results, args: argparse.Namespace, path: Path) -> None:
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "flows": args.flows,
        "timeout_s": args.timeout,
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
        if not per_target:
            continue
        entry: dict[str, Any] = {"unit": m.unit}
        for target, samples in per_target.items():
            entry[target] = {
                "median": results.median(m.key, target),
                "samples": [s.value for s in samples],
                "lost": [s.lost for s in samples if isinstance(s, UdpSample)],
                "sent": [s.sent for s in samples if isinstance(s, UdpSample)],
                "errors": [s.errors for s in samples if s.errors],
                "background_busy_pct": [round(s.background, 1) for s in samples],
            }
        ngx = results.median(m.key, "nginx")
        mk = results.median(m.key, "meshkit")
        entry["ratio"] = mk / ngx if m.ratio and mk is not None and ngx else None
        out["metrics"][m.key] = entry
    path.write_text(json.dumps(out, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="meshkit ingress UDP relay vs nginx stream UDP proxy: request/reply "
        "datagrams/s and iperf3 UDP throughput, interleaved rounds, medians and ratios."
    )
    p.add_argument("--quick", action="store_true", help="one round of 3 s each (smoke test)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write results to FILE")
    p.add_argument("--flows", type=int, default=32, help="client sockets (flows), default 32")
    p.add_argument("--timeout", type=float, default=0.2, help="seconds before a datagram is resent")
    p.add_argument(
        "--meshkit-cmd",
        default=None,
        help="command prefix to run meshkit (default: python -m meshkit), or a full "
        "template with {host} {port} {target} {backend}",
    )
    p.add_argument(
        "--no-extensions", action="store_true", help="run meshkit with MESHKIT_NO_EXTENSIONS=1"
    )
    p.add_argument("--no-meshkit", action="store_true", help="measure nginx and direct only")
    p.add_argument("--no-iperf3", action="store_true", help="skip the iperf3 measurement")
    p.add_argument(
        "--stream-module",
        default=STREAM_MODULE,
        help=f"nginx's ngx_stream_module.so (default {STREAM_MODULE})",
    )
    p.add_argument("--proxy-core", type=int, default=None, help="CPU for both proxies")
    p.add_argument("--client-core", type=int, default=None, help="CPU for the clients")
    p.add_argument(
        "--backend-core",
        type=int,
        default=None,
        help="CPU for the echo / iperf3 server (default: proxy's)",
    )
    args = p.parse_args(argv)
    settle_args(p, args)
    if args.duration < 1 or args.rounds < 1 or args.flows < 1 or args.timeout <= 0:
        p.error("--duration must be >= 1, --rounds and --flows >= 1, --timeout > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_echo":
        return echo_main(int(argv[1]))
    if argv and argv[0] == "_client":
        port, flows, duration, warmup, timeout = argv[1:6]
        return client_main(int(port), int(flows), float(duration), float(warmup), float(timeout))
    args = parse_args(argv)
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        log(
            f"error: required tool(s) not found on PATH: {', '.join(missing)} "
            "(Debian: apt-get install nginx-light libnginx-mod-stream iperf3)"
        )
        return 2
    if not os.path.exists(args.stream_module):
        log(
            f"error: nginx stream module {args.stream_module} not found "
            "(Debian: apt-get install libnginx-mod-stream)"
        )
        return 2

    results = run_guarded(run, args, "meshkit-bench-ingress-udp-")
    if isinstance(results, int):
        return results
    report(results, args)
    if args.json:
        write_json(results, args, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
