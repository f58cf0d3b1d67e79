#!/usr/bin/env python3
"""HTTPS and HTTP/2: meshkit web vs nginx and Caddy 2, side by side in one run.

All three servers use the same ECDSA P-256 certificate (made for the run with ``openssl
req``), TLS 1.3 only, and the same OpenSSL where they link it (nginx and meshkit's Python
``ssl`` both use the system's libssl; Caddy 2 has Go's crypto/tls and is the second anchor).
nginx runs one worker (``access_log off``, ``sendfile on``; sendfile is a no-op over TLS
without kTLS), Caddy 2 runs with ``GOMAXPROCS=1``; each is pinned to the server core and the
client (wrk or h2load) to the client core. Cases:

1. keepalive   ``wrk -t1 -c64 https://.../``, a 120-byte file        req/s   goal >= 1.0x nginx
2. handshake   the same with ``-H 'Connection: close'``: one TLS 1.3
               handshake per request (wrk keeps its session across
               reconnects, SSL_clear, so these are ticket resumptions
               with a fresh ECDHE, for every server alike)            req/s   goal >= 0.9x nginx
3. large       ``wrk -t1 -c64 https://.../1mib.bin``                   GB/s    goal >= 0.8x nginx
4. h2          ``h2load -c4 -m16`` (64 streams on 4 connections), the
               120-byte file over HTTP/2 (h2 by ALPN)                  req/s   goal >= 0.8x nginx
5. h2miss      the same, to the name ``localhost``: meshkit's site for it
               has ``ext .html`` and a ``header`` whose value uses
               {remote} too: no response is remembered
               (meshkit.web.respcache) and the rule table cannot keep
               one (web/ruletable.py), so every request runs the whole
               handler chain as a dynamic site's would (nginx serves
               every name alike; the field is meshkit's extra work)    req/s   goal >= 0.8x nginx
6. h2ext       the same, to the name ``ext.localhost``: a site with
               ``ext .html`` alone, which the response cache does not
               remember but the rule table keeps (web/h2rules.py)      req/s   goal >= 1.0x nginx

This kernel has no kTLS here, so every server encrypts in user space (nginx's sendfile
degrades to read + SSL_write); the 1 MiB case measures AES-GCM plus copies for everyone.

Rounds interleave nginx, caddy, meshkit per case; the table shows medians and ratios, and
each case's meshkit/nginx ratio per round, then each server's own CPU time per request
(user + system from /proc/PID/stat over the run, divided by the requests wrk or h2load
completed): on a shared machine that moves far less than req/s does.

    python bench/web_tls.py                  # 5 rounds x 10 s per case and server
    python bench/web_tls.py --quick          # smoke test: 1 round x 2 s
    python bench/web_tls.py --cases h2 --targets nginx,meshkit
    python bench/web_tls.py --cases handshake --targets nginx,meshkit \
        --baseline-src /tmp/old/src      # A/B: another build as "base", same rounds
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Sequence
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
    free_port,
    log,
    meshkit_env,
    nginx_argv,
    pin,
    report_errors_and_noise,
    run_guarded,
    settle_server_args,
    wait_port,
    write_nginx_conf,
)

REQUIRED_TOOLS = ("nginx", "caddy", "wrk", "h2load", "openssl")
TARGETS = ("nginx", "caddy", "meshkit")
SMALL_SIZE = 120
LARGE_SIZE = 1 << 20


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    path: str
    unit: str  # "req/s" or "GB/s"
    goal: float  # minimum meshkit/nginx ratio
    client: str  # "wrk" or "h2load"
    close: bool = False


CASES = (
    Case("keepalive", f"keep-alive, {SMALL_SIZE}-byte file", "/", "req/s", 1.0, "wrk"),
    Case("handshake", "new TLS 1.3 handshakes (Connection: close)", "/", "req/s", 0.9, "wrk", True),
    Case("large", "1 MiB file", "/1mib.bin", "GB/s", 0.8, "wrk"),
    Case("h2", f"HTTP/2, h2load -c4 -m16, {SMALL_SIZE}-byte file", "/", "req/s", 0.8, "h2load"),
    Case("h2miss", "HTTP/2 as h2, the whole handler chain", "/", "req/s", 0.8, "h2load"),
    Case("h2ext", "HTTP/2 as h2, `ext` site from the rule table", "/", "req/s", 1.0, "h2load"),
)


# --------------------------------------------------------------------------- content


def make_site(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    small = b"<!doctype html><title>meshkit</title><p>" + b"x" * SMALL_SIZE
    (root / "index.html").write_bytes(small[: SMALL_SIZE - 5] + b"</p>\n")
    (root / "1mib.bin").write_bytes(os.urandom(LARGE_SIZE))


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost (2 days)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cmd = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", "/CN=localhost", "-addext", f"subjectAltName=IP:{HOST},DNS:localhost",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()}")
    return cert, key


# --------------------------------------------------------------------------- servers


def start_nginx(
    procs: Procs, core: int | None, root: Path, cert: Path, key: Path
) -> tuple[int, int]:
    prefix = procs.tmp / "nginx"
    port = free_port()
    conf = write_nginx_conf(
        prefix,
        f"""    sendfile on;
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    server {{
        listen {HOST}:{port} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        http2_max_concurrent_streams 128;
        root {root};
    }}
""",
    )
    proc, logfile = procs.start("nginx", nginx_argv(prefix, conf), core)
    wait_port(port, proc, "nginx", logfile)
    return port, proc.pid


def start_caddy(
    procs: Procs, core: int | None, root: Path, cert: Path, key: Path
) -> tuple[int, int]:
    home = procs.tmp / "caddy"
    home.mkdir()
    port = free_port()
    conf = home / "Caddyfile"
    conf.write_text(
        f"{{\n    admin off\n    auto_https off\n}}\n"
        f"https://{HOST}:{port} {{\n    bind {HOST}\n"
        f"    tls {cert} {key} {{\n        protocols tls1.3\n    }}\n"
        f"    root * {root}\n    file_server\n}}\n"
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
    return port, proc.pid


def meshkit_command(args: argparse.Namespace, port: int, root: Path, cert: Path, key: Path,
                    tmp: Path) -> list[str]:  # fmt: skip
    """`meshkit web -conf FILE` with the same site, certificate and TLS version."""
    prefix = (
        shlex.split(args.meshkit_cmd) if args.meshkit_cmd else [sys.executable, "-m", "meshkit"]
    )
    conf = tmp / "Caddyfile"
    site = (
        f"    bind {HOST}\n    root {root}\n"
        f"    tls {cert} {key} {{\n        protocols tls1.3\n    }}\n"
    )
    # localhost (the h2miss case): `ext` is not a static directive, so no response of this
    # site is remembered by the response cache, and a field of the client's address is not
    # a function of the rule table's key, so the table keeps none either: the whole chain.
    # ext.localhost (h2ext): `ext` alone, answered from the rule table (web/h2rules.py).
    conf.write_text(
        f"https://{HOST}:{port} {{\n{site}}}\n"
        f"https://localhost:{port} {{\n{site}    ext .html\n"
        "    header / X-Client {remote}\n}\n"
        f"https://ext.localhost:{port} {{\n{site}    ext .html\n}}\n"
    )
    return [*prefix, "web", "-conf", str(conf), "-quiet"]


def start_meshkit(
    procs: Procs,
    core: int | None,
    root: Path,
    cert: Path,
    key: Path,
    args: argparse.Namespace,
    src: Path | None = None,
) -> tuple[int, int]:
    """meshkit web; with `src`, the meshkit package found there (--baseline-src: an older
    build measured in the same rounds, so that a change is judged against it)."""
    port = free_port()
    name = "meshkit" if src is None else "base"
    conf_dir = procs.tmp / name
    conf_dir.mkdir(exist_ok=True)
    cmd = meshkit_command(args, port, root, cert, key, conf_dir)
    env = meshkit_env(args.no_extensions)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc, logfile = procs.start(name, cmd, core, env=env)
    wait_port(port, proc, f"{name} ({shlex.join(cmd)})", logfile, timeout=30)
    return port, proc.pid


def check(port: int, name: str, case: Case, cert: Path) -> None:
    """One HTTPS request of the case must succeed with the expected body (TLS 1.3, and h2
    offered by ALPN for the h2 case)."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        conn = http.client.HTTPSConnection(HOST, port, timeout=5, context=ctx)
        conn.request("GET", case.path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET {case.path} via {name} on {HOST}:{port} failed: {exc!r}") from exc
    want = LARGE_SIZE if case.key == "large" else SMALL_SIZE
    if resp.status != 200 or len(body) != want:
        raise BenchError(
            f"GET {case.path} via {name} on https://{HOST}:{port}: status {resp.status}, "
            f"{len(body)} bytes (expected 200 and {want})"
        )


# --------------------------------------------------------------------------- clients

_WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_COUNT = re.compile(r"(\d+) requests in ")
_H2_DONE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat), 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


_WRK_ERRORS = re.compile(r"Socket errors:.*|Non-2xx or 3xx responses:.*")
_H2_RATE = re.compile(r"finished in [0-9.]+\w*, ([0-9.]+) req/s")
_H2_COUNTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) "
                        r"failed, (\d+) errored, (\d+) timeout")  # fmt: skip
_H2_PROTO = re.compile(r"Application protocol: (\S+)")


def run_client(cmd: list[str], core: int | None, duration: float) -> str:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=pin(core), timeout=duration + 60,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(
            f"{shlex.join(cmd)} failed (status {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def run_wrk(port: int, case: Case, duration: float, core: int | None, conns: int) -> Sample:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    if case.close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"https://{HOST}:{port}{case.path}")
    out = run_client(cmd, core, duration)
    match = _WRK_RATE.search(out)
    if not match:
        raise BenchError(f"{shlex.join(cmd)}: no Requests/sec in its output:\n{out}")
    errors = "; ".join(m.group(0).strip() for m in _WRK_ERRORS.finditer(out))
    value = float(match.group(1))
    if case.unit == "GB/s":
        value = value * LARGE_SIZE / 1e9
    count = _WRK_COUNT.search(out)
    sample = Sample(value, errors)
    sample.requests = int(count.group(1)) if count else 0  # type: ignore[attr-defined]
    return sample


_H2_NAMES = {"h2miss": "localhost", "h2ext": "ext.localhost"}  # meshkit's sites for them


def run_h2load(port: int, case: Case, duration: float, core: int | None) -> Sample:
    cmd = ["h2load", "-t1", "-c4", "-m16", "-D", str(max(1, round(duration)))]
    if case.key in _H2_NAMES:
        cmd += ["-H", f":authority: {_H2_NAMES[case.key]}:{port}"]
    cmd.append(f"https://{HOST}:{port}{case.path}")
    out = run_client(cmd, core, duration)
    rate, counts, proto = _H2_RATE.search(out), _H2_COUNTS.search(out), _H2_PROTO.search(out)
    if not rate or not counts:
        raise BenchError(f"{shlex.join(cmd)}: no request rate in its output:\n{out}")
    if not proto or proto.group(1) != "h2":
        raise BenchError(f"{shlex.join(cmd)}: the server did not negotiate h2:\n{out}")
    done, ok, failed, errored, timeout = (int(g) for g in counts.groups())
    errors = ""
    if failed or errored or timeout or ok != done:
        errors = f"h2load: {failed} failed, {errored} errored, {timeout} timeout of {done}"
    sample = Sample(float(rate.group(1)), errors)
    sample.requests = done  # type: ignore[attr-defined]
    return sample


def run_case(port: int, case: Case, duration: float, args: argparse.Namespace) -> Sample:
    if case.client == "h2load":
        return run_h2load(port, case, duration, args.client_core)
    return run_wrk(port, case, duration, args.client_core, args.connections)


# --------------------------------------------------------------------------- run


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "GB/s":
        return f"{value:.2f} GB/s"
    return f"{value / 1000:.1f}k req/s"


def run(args: argparse.Namespace, tmp: Path) -> Results:
    procs = Procs(tmp)
    results = Results()
    root = tmp / "www"
    make_site(root)
    cert, key = make_cert(tmp / "tls")
    cores = {args.server_core, args.client_core}
    cases = [c for c in CASES if c.key in args.cases]
    try:
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        if "nginx" in args.targets:
            ports["nginx"], pids["nginx"] = start_nginx(procs, args.server_core, root, cert, key)
        if "caddy" in args.targets:
            ports["caddy"], pids["caddy"] = start_caddy(procs, args.server_core, root, cert, key)
        if "meshkit" in args.targets:
            ports["meshkit"], pids["meshkit"] = start_meshkit(
                procs, args.server_core, root, cert, key, args
            )
        if args.baseline_src is not None:
            ports["base"], pids["base"] = start_meshkit(
                procs, args.server_core, root, cert, key, args, args.baseline_src
            )
        log(f"servers: {ports} (server CPU {args.server_core}, client CPU {args.client_core})")
        for case in cases:
            for name, port in ports.items():
                check(port, name, case, cert)
                run_case(port, case, 1, args)  # warm-up
            for r in range(1, args.rounds + 1):
                for name, port in ports.items():
                    busy = background_busy(cores)
                    cpu0 = cpu_seconds(pids[name])
                    sample = run_case(port, case, args.duration, args)
                    cpu = cpu_seconds(pids[name]) - cpu0
                    sample.background = busy
                    results.add(case.key, name, sample)
                    done = getattr(sample, "requests", 0)
                    if done and cpu > 0:
                        # the server's own CPU time per request: what a shared, busy machine
                        # disturbs least (throughput there depends on who else runs)
                        results.add(case.key + ":cpu", name, Sample(cpu / done * 1e6))
                    notes = [sample.errors] if sample.errors else []
                    if busy > BUSY_WARN:
                        notes.append(f"CPU already {busy:.0f}% busy before the run")
                    extra = f"  ({'; '.join(notes)})" if notes else ""
                    value = fmt(sample.value, case.unit)
                    per = results.samples.get(case.key + ":cpu", {}).get(name, [])
                    cpu_note = f", {per[-1].value:.0f} us CPU/req" if per and done else ""
                    log(f"  round {r} {case.key:<9} {name:<8} {value}{cpu_note}{extra}")
    finally:
        procs.stop_all()
    return results


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_ratio(value: float | None) -> str:
    # Truncated, not rounded, so that a shown 0.90x never reads as a miss.
    return "-" if value is None else f"{math.floor(value * 100) / 100:.2f}x"


def report(results: Results, args: argparse.Namespace) -> bool:
    """Print the table; return whether every goal was met."""
    header = ("case", "nginx", "caddy", "meshkit", "meshkit/nginx", "meshkit/caddy", "goal")
    rows: list[tuple[str, ...]] = []
    all_met = True
    cases = [c for c in CASES if c.key in args.cases]
    for case in cases:
        ng = results.median(case.key, "nginx")
        cd = results.median(case.key, "caddy")
        mk = results.median(case.key, "meshkit")
        r_ng = ratio(mk, ng)
        if r_ng is None:
            verdict = f">= {case.goal:.1f}x nginx"
        else:
            met = r_ng >= case.goal
            all_met = all_met and met
            verdict = f">= {case.goal:.1f}x nginx {'met' if met else 'MISSED'}"
        rows.append(
            (case.title, fmt(ng, case.unit), fmt(cd, case.unit), fmt(mk, case.unit),
             fmt_ratio(r_ng), fmt_ratio(ratio(mk, cd)), verdict)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    print()
    print(
        f"HTTPS (TLS 1.3, ECDSA P-256): {args.rounds} round(s) x {args.duration:g} s, medians; "
        f"wrk -t1 -c{args.connections}, h2load -t1 -c4 -m16; servers on CPU "
        f"{args.server_core}, clients on CPU {args.client_core}"
        + (", MESHKIT_NO_EXTENSIONS=1" if args.no_extensions else "")
    )
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for case in cases:
        per = results.samples.get(case.key, {})
        for anchor in ("nginx", "caddy"):
            paired = [
                f"{m.value / n.value:.2f}"
                for n, m in zip(per.get(anchor, []), per.get("meshkit", []), strict=False)
                if n.value
            ]
            if paired:
                print(f"{case.key} meshkit/{anchor} per round: {' '.join(paired)}")
    for case in cases:
        base = results.median(case.key, "base")
        if base is not None:
            mk = results.median(case.key, "meshkit")
            per = results.samples.get(case.key, {})
            paired = [
                f"{m.value / b.value:.2f}"
                for b, m in zip(per.get("base", []), per.get("meshkit", []), strict=False)
                if b.value
            ]
            print(
                f"{case.key} base (--baseline-src) {fmt(base, case.unit)}; meshkit/base "
                f"{fmt_ratio(ratio(mk, base))}; per round: {' '.join(paired)}"
            )
    for case in cases:
        cpu = {t: results.median(case.key + ":cpu", t) for t in (*TARGETS, "base")}
        if cpu.get("meshkit") is None:
            continue
        parts = [f"{t} {v:.0f} us" for t, v in cpu.items() if v is not None]
        line = f"{case.key} server CPU per request (median): {', '.join(parts)}"
        if cpu.get("nginx"):
            line += f"; nginx/meshkit {cpu['nginx'] / cpu['meshkit']:.2f}x"  # type: ignore[operator]
        print(line)
    report_errors_and_noise(results, skip=[c.key + ":cpu" for c in cases])
    return all_met


def write_json(results: Results, args: argparse.Namespace, path: Path) -> None:
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "connections": args.connections,
        "no_extensions": args.no_extensions,
        "cases": {},
    }
    for case in CASES:
        if case.key not in args.cases:
            continue
        entry: dict[str, Any] = {"unit": case.unit, "goal_ratio_nginx": case.goal}
        for target, samples in results.samples.get(case.key, {}).items():
            entry[target] = {
                "median": results.median(case.key, target),
                "samples": [s.value for s in samples],
                "errors": [s.errors for s in samples if s.errors],
            }
        cpu = results.samples.get(case.key + ":cpu", {})
        entry["cpu_us_per_request"] = {t: [x.value for x in v] for t, v in cpu.items()}
        mk = results.median(case.key, "meshkit")
        entry["ratio_nginx"] = ratio(mk, results.median(case.key, "nginx"))
        entry["ratio_caddy"] = ratio(mk, results.median(case.key, "caddy"))
        out["cases"][case.key] = entry
    path.write_text(json.dumps(out, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="HTTPS and HTTP/2: meshkit web vs nginx and Caddy 2 (one core each, the "
        "client on another): medians and ratios."
    )
    p.add_argument("--quick", action="store_true", help="one round of 2 s each (smoke test)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--json", type=Path, default=None, help="also write results to FILE")
    p.add_argument(
        "--cases",
        default=",".join(c.key for c in CASES),
        help="comma-separated subset of " + ", ".join(c.key for c in CASES),
    )
    p.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset of nginx,caddy,meshkit"
    )
    p.add_argument("--meshkit-cmd", default=None, help="command prefix (default python -m meshkit)")
    p.add_argument("--no-extensions", action="store_true", help="MESHKIT_NO_EXTENSIONS=1")
    p.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also run the meshkit package in DIR (a src folder of another build, its .so "
        "files built) as target 'base', interleaved in the same rounds (A/B)",
    )
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    p.add_argument("--server-core", type=int, default=None, help="CPU for the servers")
    p.add_argument("--client-core", type=int, default=None, help="CPU for wrk and h2load")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.duration < 1 or args.rounds < 1:
        p.error("--duration must be >= 1 and --rounds >= 1")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - {c.key for c in CASES}
    if unknown:
        p.error(f"--cases: unknown {', '.join(sorted(unknown))}")
    settle_server_args(p, args, TARGETS)
    if args.baseline_src is not None and not (args.baseline_src / "meshkit").is_dir():
        p.error(f"--baseline-src {args.baseline_src}: no meshkit package in that folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    needed = [t for t in REQUIRED_TOOLS if t not in TARGETS or t in args.targets]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        log(
            f"error: required tool(s) not found on PATH: {', '.join(missing)} "
            "(Debian: apt-get install nginx-light caddy wrk nghttp2-client openssl)"
        )
        return 2
    results = run_guarded(run, args, "meshkit-bench-tls-")
    if isinstance(results, int):
        return results
    all_met = report(results, args)
    if args.json:
        write_json(results, args, args.json)
    if args.check_goals and "meshkit" in args.targets and not all_met:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
