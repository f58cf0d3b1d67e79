#!/usr/bin/env python3
"""Static files: meshkit web vs nginx and Caddy 2, side by side in one run.

nginx (one worker, ``sendfile on``, ``access_log off``), Caddy 2 (``GOMAXPROCS=1``,
``file_server browse`` and ``encode gzip``) and meshkit serve the same directory, each pinned
to the server core; wrk (``-t1 -c64``) runs alone on the client core. Cases:

1. small   ``GET /`` (index.html), a 120-byte file           requests/s   goal >= 1.0x nginx
2. large   ``GET /1mib.bin``, a 1 MiB file                   GB/s         goal >= 0.9x nginx
3. gzip    ``GET /page.html`` (64 KiB of HTML) with ``Accept-Encoding: gzip``   requests/s
4. browse  ``GET /dir/``, a listing of 200 files             requests/s
5. markdown ``GET /md/doc.md``, a 20 KB Markdown page (front matter, tables, code) that
   meshkit renders (``markdown /md``) against nginx serving the same page pre-rendered to
   HTML                                                       requests/s   goal >= 0.8x nginx
   (Caddy 2 has no markdown directive: not run for this case)
6. rules   ``GET /page`` with Basic credentials on a second site whose rules do nginx's work:
   meshkit ``header`` x2 + ``redir`` + ``rewrite /page -> /index.html`` + ``basicauth`` +
   ``log`` (common format) against nginx ``add_header`` x2 + ``return 301`` + ``rewrite`` +
   ``auth_basic`` ({PLAIN} user file) + ``access_log ... buffer=64k`` (meshkit's log is
   flushed once per loop turn)                                requests/s   goal >= 1.0x nginx
   (Caddy 2 not run for this case)
7. redirect ``GET /canon/index.html``: meshkit's canonical 301 to ``/canon/`` (a file server
   redirect with no body, remembered with the index file as its validator) against nginx
   ``location = /canon/index.html { return 301 /canon/; }``   requests/s   goal >= 1.0x nginx
   (Caddy 2 not run for this case)
8. extsite ``GET /about`` on a third site: meshkit ``ext .html`` + ``errors { 404 404.html }``
   against nginx ``try_files $uri $uri.html =404`` + ``error_page 404 /404.html``
   (the 120-byte about.html)                                  requests/s   goal >= 1.0x nginx
9. errpage ``GET /nope`` on that site: the 404 page (a 404 with 404.html's bytes)
                                                              requests/s   (Caddy 2 not run)
10. authfile ``GET /priv/page`` with Basic credentials on that site: meshkit ``basicauth /priv
   bench htpasswd=.htpasswd`` (a {SHA} entry) + ``ext`` against nginx ``auth_basic_user_file``
   (the same file) + ``try_files``                          requests/s   (Caddy 2 not run)

``--no-respcache`` starts meshkit with MESHKIT_NO_RESPCACHE=1: every request runs the
handlers (what a client that never repeats its exact request head gets), so the handler
path alone is measured. ``--no-lane`` starts it with MESHKIT_LANE=0: plain connections read
in Python (Connection._on_readable) instead of the compiled lane (meshkit.web.lane), to
compare the two. ``--no-lane-rules`` starts it with MESHKIT_LANE_RULES=0: the lane answers
from the response cache only, not from its rule table (meshkit.web.ruletable: the sites
whose directives it can express, answered in C on a cache miss). ``--no-file-watch``
starts it with MESHKIT_FILE_WATCH=0: the rule table's answers are checked with one stat(2)
per validator per request instead of inotify watches (meshkit.web.filewatch).
``--no-watch-ring`` starts it with MESHKIT_WATCH_RING=0: the watches are checked with one
epoll_wait(2) per request instead of a read of an io_uring's completion ring
(csrc/watch_ring.c).

Rounds interleave nginx, caddy, meshkit per case; the table shows medians and ratios.
GB/s is requests/s x body bytes / 1e9. Each run also counts the CPU time of the server's
processes (its session: nginx's master and worker) per request: on a machine busy with other
work, where requests/s mostly says how much CPU a server was given, "us of server CPU per
request" still compares the servers' own costs.

How meshkit runs (``--meshkit-mode``):

- ``web`` (the default when ``meshkit web`` exists): ``meshkit web -conf FILE`` with a
  Caddyfile (``root``, ``gzip``, ``browse``). Such a site is "static" (see
  meshkit.web.respcache): wrk's repeated request heads are answered from remembered
  responses after one stat(2) of the file per request, as any client repeating a request
  would be; a site with other directives (``log``, ``header``...) runs its handlers for
  every request;
- ``server``: this script started again as ``--serve PORT ROOT``, a bare HttpServer with a
  minimal cached-FileBody handler (no directives: gzip and browse are not measured). It
  measures the HTTP server and send path alone and is labelled "meshkit (server only)".

``meshkit_command()`` is the hook that builds meshkit's argv; ``--meshkit-cmd`` overrides
the prefix (e.g. an installed ``meshkit``).

    python bench/web_static.py                 # 5 rounds x 10 s per case and server
    python bench/web_static.py --quick         # smoke test: 1 round x 2 s
    python bench/web_static.py --meshkit-mode server --cases small,large
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ingress import (
    BUSY_WARN,
    HOST,
    SRC_DIR,
    BenchError,
    Procs,
    Results,
    Sample,
    background_busy,
    free_port,
    log,
    meshkit_env,
    nginx_argv,
    report_errors_and_noise,
    run_guarded,
    run_wrk,
    settle_server_args,
    start_caddy_site,
    wait_port,
    write_nginx_conf,
)

REQUIRED_TOOLS = ("nginx", "caddy", "wrk")
TARGETS = ("nginx", "caddy", "meshkit")
SMALL_SIZE = 120
LARGE_SIZE = 1 << 20
BROWSE_FILES = 200

# Measured by the issue author on the reference machine.
ISSUE = {"small": {"nginx": 33_000.0, "caddy": 8_900.0}, "large": {"nginx": 2.63, "caddy": 1.58}}


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    path: str
    unit: str  # "req/s" or "GB/s"
    goal: float | None  # minimum meshkit/nginx ratio, None: reported only
    headers: tuple[str, ...] = ()
    needs_directives: bool = False
    only: tuple[str, ...] = ()  # when set, the targets this case runs against


_NM = ("nginx", "meshkit")  # cases run against these two only
CASES = (
    Case("small", f"{SMALL_SIZE}-byte index.html (GET /)", "/", "req/s", 1.0),
    Case("large", "1 MiB file", "/1mib.bin", "GB/s", 0.9),
    Case(
        "gzip",
        "gzip, 64 KiB HTML",
        "/page.html",
        "req/s",
        None,
        ("Accept-Encoding: gzip",),
        True,
    ),
    Case("browse", f"browse, {BROWSE_FILES} files", "/dir/", "req/s", None, (), True),
    Case(
        "markdown",
        "markdown, 20 KB .md (nginx: pre-rendered)",
        "/md/doc.md",
        "req/s",
        0.8,
        (),
        True,
        ("nginx", "meshkit"),
    ),
    Case(
        "rules",
        "rules: header+redir+rewrite+basicauth+log",
        "/page",
        "req/s",
        1.0,
        ("Authorization: Basic YmVuY2g6czNjcmV0",),  # bench:s3cret
        True,
        ("nginx", "meshkit"),
    ),
    Case(
        "redirect",
        "canonical 301 /canon/index.html -> /canon/",
        "/canon/index.html",
        "req/s",
        1.0,
        (),
        True,  # the file server's redirect: not in --meshkit-mode server
        ("nginx", "meshkit"),
    ),
    # a third site per target (EXT_PORTS): ext + errors + basicauth with an htpasswd file
    Case("extsite", "ext .html + errors: /about", "/about", "req/s", 1.0, (), True, _NM),
    Case(
        "authfile",
        "basicauth htpasswd= + ext: /priv/page",
        "/priv/page",
        "req/s",
        None,
        ("Authorization: Basic YmVuY2g6czNjcmV0",),  # bench:s3cret
        True,
        _NM,
    ),
    Case("errpage", "ext .html + errors: 404 page", "/nope", "req/s", None, (), True, _NM),
)
MARKDOWN_SIZE = 20 * 1024
# the rule site of the "rules" case: a second server block / site, on its own port per target
RULE_PORTS: dict[str, int] = {}
# the ext/errors site of the "extsite" and "errpage" cases: a third one, on its own port
EXT_PORTS: dict[str, int] = {}
EXT_CASES = ("extsite", "errpage", "authfile")
ERROR_PAGE = b"<!doctype html><title>not here</title><p>no such page</p>\n"


# --------------------------------------------------------------------------- content


def make_site(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    small = b"<!doctype html><title>meshkit</title><p>" + b"x" * SMALL_SIZE
    (root / "index.html").write_bytes(small[: SMALL_SIZE - 5] + b"</p>\n")
    (root / "1mib.bin").write_bytes(os.urandom(LARGE_SIZE))
    rows = "".join(
        f"<tr><td>{i}</td><td>row {i} of a table that compresses well</td></tr>\n"
        for i in range(1200)
    )
    page = f"<!doctype html><html><body><table>{rows}</table></body></html>\n".encode()
    (root / "page.html").write_bytes(page[: 64 * 1024])
    d = root / "dir"
    d.mkdir(exist_ok=True)
    for i in range(BROWSE_FILES):
        (d / f"file-{i:04d}.txt").write_bytes(b"x" * (i * 37 % 5000))
    make_markdown(root)
    (root / "canon").mkdir(exist_ok=True)  # the "redirect" case's folder and its index file
    (root / "canon" / "index.html").write_bytes(small[: SMALL_SIZE - 5] + b"</p>\n")
    ext = root / "extsite"  # the "extsite" and "errpage" cases' root
    ext.mkdir(exist_ok=True)
    (ext / "about.html").write_bytes(small[: SMALL_SIZE - 5] + b"</p>\n")
    (ext / "404.html").write_bytes(ERROR_PAGE)
    (ext / "priv").mkdir(exist_ok=True)
    (ext / "priv" / "page.html").write_bytes(small[: SMALL_SIZE - 5] + b"</p>\n")
    sha = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    (ext / ".htpasswd").write_text(f"bench:{{SHA}}{sha}\n")


def make_markdown(root: Path) -> None:
    """md/doc.md (20 KB of Markdown with YAML front matter) for meshkit, and the same page
    rendered by meshkit's own pipeline into md-rendered/doc.html for nginx."""
    parts = ["---\ntitle: The markdown bench page\nauthor: meshkit\n---\n"]
    i = 0
    while sum(map(len, parts)) < MARKDOWN_SIZE - 600:
        i += 1
        parts.append(
            f"## Section {i}\n\nSome *emphasis*, some **strong text**, `inline code` and a "
            f"[link](https://example.com/{i}). " * 3 + "\n\n"
            "| name | value | note |\n|---|---:|---|\n"
            + "".join(f"| row {j} | {j * i} | ~~old~~ new |\n" for j in range(4))
            + "\n```python\ndef f(x):\n    return x * 2\n```\n\n- one\n- two\n  - nested\n\n"
        )
    text = "".join(parts)
    (root / "md").mkdir(exist_ok=True)
    (root / "md" / "doc.md").write_text(text)
    if str(SRC_DIR) not in sys.path:
        sys.path.insert(0, str(SRC_DIR))
    from meshkit.web.directives.markdown import DEFAULT_TEMPLATE
    from meshkit.web.frontmatter import parse_page
    from meshkit.web.gotemplate import Template
    from meshkit.web.mdrender import render_markdown

    page = parse_page(text)
    doc = {**page.meta, "body": render_markdown(page.body), "raw": page.body}
    html = Template("").parse(DEFAULT_TEMPLATE).execute({"Doc": doc, "Styles": [], "Scripts": []})
    (root / "md-rendered").mkdir(exist_ok=True)
    (root / "md-rendered" / "doc.html").write_text(html)


# --------------------------------------------------------------------------- servers


def start_nginx(procs: Procs, core: int | None, root: Path) -> int:
    prefix = procs.tmp / "nginx"
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    rules = RULE_PORTS["nginx"] = free_port()
    ext = EXT_PORTS["nginx"] = free_port()
    conf = write_nginx_conf(
        prefix,
        f"""    sendfile on;
    tcp_nopush on;
    types {{ text/html html; text/plain txt; application/octet-stream bin; }}
    default_type application/octet-stream;
    gzip on;
    gzip_types text/plain;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {root};
        location / {{ autoindex on; }}
        location = /md/doc.md {{ default_type text/html; alias {root}/md-rendered/doc.html; }}
        location = /canon/index.html {{ return 301 /canon/; }}
    }}
    log_format common '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent';
    server {{
        listen {HOST}:{rules} backlog=4096;
        root {root};
        access_log {prefix}/logs/rules.log common buffer=64k flush=1s;
        add_header X-Frame-Options DENY always;
        add_header X-Content-Type-Options nosniff always;
        location = /old {{ return 301 /new; }}
        location / {{
            auth_basic "Restricted";
            auth_basic_user_file {prefix}/htpasswd;
            rewrite ^/page$ /index.html break;
        }}
    }}
    server {{
        listen {HOST}:{ext} backlog=4096;
        root {root}/extsite;
        error_page 404 /404.html;
        location / {{ try_files $uri $uri.html =404; }}
        location /priv/ {{
            auth_basic "Restricted";
            auth_basic_user_file {root}/extsite/.htpasswd;
            try_files $uri $uri.html =404;
        }}
    }}
""",
    )
    (prefix / "htpasswd").write_text("bench:{PLAIN}s3cret\n")
    cmd = nginx_argv(prefix, conf)
    proc, logfile = procs.start("nginx", cmd, core)
    wait_port(port, proc, "nginx", logfile)
    return port


def start_caddy(procs: Procs, core: int | None, root: Path) -> int:
    site = f"    root * {root}\n    encode gzip\n    file_server browse\n"
    return start_caddy_site(procs, core, site)[0]


def meshkit_web_available(env: dict[str, str]) -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "--help"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return probe.returncode == 0 and b"-conf" in probe.stdout


def meshkit_command(args: argparse.Namespace, port: int, root: Path, tmp: Path) -> list[str]:
    """The argv that starts meshkit serving root on HOST:port (the integration hook).

    mode "web": `meshkit web -conf FILE` with a Caddyfile equivalent to the nginx and Caddy
    configurations; mode "server": this script's --serve (HttpServer + a FileBody handler).
    """
    prefix = (
        shlex.split(args.meshkit_cmd) if args.meshkit_cmd else [sys.executable, "-m", "meshkit"]
    )
    if args.meshkit_mode == "server":
        return [sys.executable, os.path.abspath(__file__), "--serve", str(port), str(root)]
    conf = tmp / "Caddyfile"
    rules = RULE_PORTS["meshkit"] = free_port()
    ext = EXT_PORTS["meshkit"] = free_port()
    conf.write_text(
        f"{HOST}:{port} {{\n    root {root}\n    gzip\n    browse /dir\n    markdown /md\n}}\n"
        f"{HOST}:{rules} {{\n    root {root}\n"
        "    header / X-Frame-Options DENY\n    header / X-Content-Type-Options nosniff\n"
        "    redir /old /new 301\n    rewrite ^/page$ /index.html\n"
        f"    basicauth / bench s3cret\n    log / {tmp / 'rules.log'}\n}}\n"
        f"{HOST}:{ext} {{\n    root {root / 'extsite'}\n    ext .html\n"
        "    errors {\n        404 404.html\n    }\n"
        "    basicauth /priv bench htpasswd=.htpasswd\n}\n"
    )
    return [*prefix, "web", "-conf", str(conf), "-quiet"]


def start_meshkit(procs: Procs, core: int | None, root: Path, args: argparse.Namespace) -> int:
    port = free_port()
    cmd = meshkit_command(args, port, root, procs.tmp)
    env = meshkit_env(args.no_extensions)
    if args.no_respcache:
        env["MESHKIT_NO_RESPCACHE"] = "1"
    if args.no_lane:
        env["MESHKIT_LANE"] = "0"
    if args.no_lane_rules:
        env["MESHKIT_LANE_RULES"] = "0"
    if args.no_file_watch:
        env["MESHKIT_FILE_WATCH"] = "0"
    if args.no_watch_ring:
        env["MESHKIT_WATCH_RING"] = "0"
    proc, logfile = procs.start("meshkit", cmd, core, env=env)
    wait_port(port, proc, "meshkit (" + shlex.join(cmd) + ")", logfile, timeout=30)
    return port


def check(port: int, name: str, case: Case) -> None:
    """One request of the case must succeed with the expected body."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        headers = dict(h.split(": ", 1) for h in case.headers)
        conn.request("GET", case.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        encoding = resp.getheader("Content-Encoding")
        frame = resp.getheader("X-Frame-Options")
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET {case.path} via {name} on {HOST}:{port} failed: {exc!r}") from exc
    problem = ""
    if case.key == "errpage":
        if resp.status != 404 or body != ERROR_PAGE:
            problem = f"status {resp.status}, {len(body)} bytes: expected 404.html's 404"
    elif case.key == "redirect":
        location = resp.getheader("Location") or ""
        if resp.status != 301 or not location.endswith("/canon/"):
            problem = f"status {resp.status}, Location {location!r}: expected a 301 to /canon/"
    elif resp.status != 200:
        problem = f"status {resp.status}"
    elif case.key == "small" and len(body) != SMALL_SIZE:
        problem = f"{len(body)} bytes, expected {SMALL_SIZE}"
    elif case.key == "large" and len(body) != LARGE_SIZE:
        problem = f"{len(body)} bytes, expected {LARGE_SIZE}"
    elif case.key == "gzip" and encoding != "gzip":
        problem = f"Content-Encoding {encoding!r}, expected gzip"
    elif case.key == "browse" and b"file-0199.txt" not in body:
        problem = "the listing lacks file-0199.txt"
    elif case.key == "markdown" and b"<title>The markdown bench page</title>" not in body:
        problem = "the page is not the rendered Markdown"
    elif case.key in ("extsite", "authfile") and len(body) != SMALL_SIZE:
        problem = f"{len(body)} bytes, expected about.html's {SMALL_SIZE}"
    elif case.key == "rules" and (len(body) != SMALL_SIZE or frame != "DENY"):
        problem = f"{len(body)} bytes and X-Frame-Options {frame!r}: the rules did not run"
    if problem:
        raise BenchError(f"GET {case.path} via {name} on {HOST}:{port}: {problem}")


# --------------------------------------------------------------------------- client


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid`."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_key(case: Case) -> str:
    return f"{case.key}/cpu"  # Results metric: us of server CPU per request


def run_case(port: int, case: Case, duration: float, core: int | None, conns: int) -> Sample:
    sample = run_wrk(port, duration, False, core, path=case.path, headers=case.headers, conns=conns)
    if case.unit == "GB/s":
        sample.value = sample.value * LARGE_SIZE / 1e9
    return sample


# --------------------------------------------------------------------------- run


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "GB/s":
        return f"{value:.2f} GB/s"
    return f"{value / 1000:.1f}k req/s"


def selected_cases(args: argparse.Namespace) -> list[Case]:
    cases = [c for c in CASES if c.key in args.cases]
    if args.meshkit_mode == "server":
        skipped = [c.key for c in cases if c.needs_directives]
        if skipped:
            log(f"meshkit runs as a bare HttpServer: skipping {', '.join(skipped)}")
        cases = [c for c in cases if not c.needs_directives]
    return cases


def run(args: argparse.Namespace, tmp: Path) -> Results:
    procs = Procs(tmp)
    results = Results()
    root = tmp / "www"
    make_site(root)
    cores = {args.server_core, args.client_core}
    cases = selected_cases(args)
    try:
        ports: dict[str, int] = {}
        if "nginx" in args.targets:
            ports["nginx"] = start_nginx(procs, args.server_core, root)
        if "caddy" in args.targets:
            ports["caddy"] = start_caddy(procs, args.server_core, root)
        if "meshkit" in args.targets:
            ports["meshkit"] = start_meshkit(procs, args.server_core, root, args)
        sids = {name: proc.pid for name, proc, _ in procs.running}  # each leads a session
        log(f"servers: {ports} (server CPU {args.server_core}, wrk CPU {args.client_core})")
        for case in cases:
            case_ports = {n: p for n, p in ports.items() if not case.only or n in case.only}
            if case.key == "rules":
                case_ports = {n: RULE_PORTS[n] for n in case_ports}
            elif case.key in EXT_CASES:
                case_ports = {n: EXT_PORTS[n] for n in case_ports}
            for name, port in case_ports.items():
                check(port, name, case)
                run_case(port, case, 1, args.client_core, args.connections)  # warm-up
            for r in range(1, args.rounds + 1):
                for name, port in case_ports.items():
                    busy = background_busy(cores)
                    cpu = session_cpu(sids[name]) if name in sids else 0.0
                    sample = run_case(port, case, args.duration, args.client_core, args.connections)
                    cpu = session_cpu(sids[name]) - cpu if name in sids else 0.0
                    sample.background = busy
                    results.add(case.key, name, sample)
                    rate = sample.value * 1e9 / LARGE_SIZE if case.unit == "GB/s" else sample.value
                    requests = rate * max(1, round(args.duration))
                    if requests and name in sids:
                        results.add(cpu_key(case), name, Sample(cpu / requests * 1e6))
                    notes = [sample.errors] if sample.errors else []
                    if busy > BUSY_WARN:
                        notes.append(f"CPU already {busy:.0f}% busy before the run")
                    extra = f"  ({'; '.join(notes)})" if notes else ""
                    log(
                        f"  round {r} {case.key:<7} {name:<8} {fmt(sample.value, case.unit)}{extra}"
                    )
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
    label = "meshkit" if args.meshkit_mode == "web" else "meshkit (server only)"
    header = ("case", "nginx", "caddy", label, f"{label}/nginx", f"{label}/caddy", "goal")
    rows: list[tuple[str, ...]] = []
    all_met = True
    for case in selected_cases(args):
        ng = results.median(case.key, "nginx")
        cd = results.median(case.key, "caddy")
        mk = results.median(case.key, "meshkit")
        r_ng = ratio(mk, ng)
        if case.goal is None:
            verdict = "reported"
        elif r_ng is None:
            verdict = f">= {case.goal:.1f}x nginx"
        else:
            met = r_ng >= case.goal
            all_met = all_met and met
            verdict = f">= {case.goal:.1f}x nginx {'met' if met else 'MISSED'}"
        rows.append(
            (
                case.title,
                fmt(ng, case.unit),
                fmt(cd, case.unit),
                fmt(mk, case.unit),
                fmt_ratio(r_ng),
                fmt_ratio(ratio(mk, cd)),
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    print()
    print(
        f"static files: {args.rounds} round(s) x {args.duration:g} s, wrk -t1 -c{args.connections},"
        f" medians; servers on CPU {args.server_core}, wrk on CPU {args.client_core}"
        + (", MESHKIT_NO_EXTENSIONS=1" if args.no_extensions else "")
        + (", MESHKIT_NO_RESPCACHE=1" if args.no_respcache else "")
        + (", MESHKIT_LANE=0" if args.no_lane else "")
        + (", MESHKIT_LANE_RULES=0" if args.no_lane_rules else "")
        + (", MESHKIT_FILE_WATCH=0" if args.no_file_watch else "")
        + (", MESHKIT_WATCH_RING=0" if args.no_watch_ring else "")
    )
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for case in selected_cases(args):
        per = results.samples.get(case.key, {})
        paired = [
            f"{m.value / n.value:.2f}"
            for n, m in zip(per.get("nginx", []), per.get("meshkit", []), strict=False)
            if n.value
        ]
        if len(paired) > 1:
            print(f"{case.key} meshkit/nginx per round: {' '.join(paired)}")
    print("server CPU per request (median us; nginx/meshkit = meshkit's CPU efficiency):")
    for case in selected_cases(args):
        us = {t: results.median(cpu_key(case), t) for t in TARGETS}
        shown = ", ".join(f"{t} {v:.1f}" for t, v in us.items() if v is not None)
        eff = ratio(us["nginx"], us["meshkit"])
        print(f"  {case.key:<8} {shown}  nginx/meshkit {fmt_ratio(eff)}")
    print(
        "(issue author's reference machine: small nginx 33.0k, Caddy 8.9k req/s; "
        "1 MiB nginx 2.63, Caddy 1.58 GB/s)"
    )
    report_errors_and_noise(results, skip=[cpu_key(c) for c in CASES])
    return all_met


def write_json(results: Results, args: argparse.Namespace, path: Path) -> None:
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "connections": args.connections,
        "meshkit_mode": args.meshkit_mode,
        "no_extensions": args.no_extensions,
        "cases": {},
    }
    for case in selected_cases(args):
        entry: dict[str, Any] = {"unit": case.unit, "goal_ratio_nginx": case.goal}
        for target, samples in results.samples.get(case.key, {}).items():
            entry[target] = {
                "median": results.median(case.key, target),
                "samples": [s.value for s in samples],
                "errors": [s.errors for s in samples if s.errors],
            }
        entry["cpu_us_per_request"] = {
            t: results.median(cpu_key(case), t) for t in TARGETS if cpu_key(case) in results.samples
        }
        entry["ratio_nginx"] = ratio(
            results.median(case.key, "meshkit"), results.median(case.key, "nginx")
        )
        entry["ratio_caddy"] = ratio(
            results.median(case.key, "meshkit"), results.median(case.key, "caddy")
        )
        out["cases"][case.key] = entry
    path.write_text(json.dumps(out, indent=2) + "\n")


# --------------------------------------------------------------------------- --serve


def serve(port: int, root: Path) -> None:
    """The "server" mode: HttpServer with a minimal handler that keeps files open and small
    files in memory (FileBody with data), as a static file server would."""
    if str(SRC_DIR) not in sys.path:
        sys.path.insert(0, str(SRC_DIR))
    import uvloop

    from meshkit.web.message import FileBody, Headers, Request, Response
    from meshkit.web.server import HttpServer

    cache: dict[str, tuple[int, int, bytes | None, Headers]] = {}

    def handler(request: Request) -> Response:
        entry = cache.get(request.path)
        if entry is None:
            name = root / (request.path.lstrip("/") or "index.html")
            if ".." in request.path.split("/") or not name.is_file():
                return Response.error(404)
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size <= 16384 else None
            ctype = "text/html" if name.suffix == ".html" else "application/octet-stream"
            entry = (fd, size, data, Headers([("Content-Type", ctype)]))
            cache[request.path] = entry
        fd, size, data, headers = entry
        return Response(200, headers.copy(), FileBody(fd, 0, size, size, data=data))

    async def main() -> None:
        server = HttpServer(handler)
        await server.listen(HOST, port)
        log(
            f"meshkit HttpServer (server-only bench mode) on {HOST}:{port}, "
            f"{'compiled' if server.compiled else 'pure-Python'} send path"
        )
        await asyncio.Event().wait()

    uvloop.run(main())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Static files: meshkit web vs nginx and Caddy 2 (one core each, wrk on "
        "another): medians and ratios."
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
    p.add_argument(
        "--meshkit-mode",
        choices=("auto", "web", "server"),
        default="auto",
        help="web: `meshkit web -conf FILE`; server: a bare HttpServer; auto: web if available",
    )
    p.add_argument("--meshkit-cmd", default=None, help="command prefix (default python -m meshkit)")
    p.add_argument("--no-extensions", action="store_true", help="MESHKIT_NO_EXTENSIONS=1")
    p.add_argument(
        "--no-respcache",
        action="store_true",
        help="MESHKIT_NO_RESPCACHE=1: every request runs meshkit's handlers",
    )
    p.add_argument(
        "--no-lane",
        action="store_true",
        help="MESHKIT_LANE=0: plain connections read in Python, not in the compiled lane",
    )
    p.add_argument(
        "--no-lane-rules",
        action="store_true",
        help="MESHKIT_LANE_RULES=0: the lane answers only from the response cache, not from "
        "its rule table (meshkit.web.ruletable)",
    )
    p.add_argument(
        "--no-file-watch",
        action="store_true",
        help="MESHKIT_FILE_WATCH=0: the rule table stats each validator per request instead "
        "of watching the files with inotify (meshkit.web.filewatch)",
    )
    p.add_argument(
        "--no-watch-ring",
        action="store_true",
        help="MESHKIT_WATCH_RING=0: the file watches are checked with an epoll_wait per "
        "request instead of a read of an io_uring completion ring (csrc/watch_ring.c)",
    )
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    p.add_argument("--server-core", type=int, default=None, help="CPU for the servers")
    p.add_argument("--client-core", type=int, default=None, help="CPU for wrk")
    p.add_argument("--serve", nargs=2, metavar=("PORT", "ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return args
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
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return 0
    needed = [t for t in REQUIRED_TOOLS if t == "wrk" or t in args.targets]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        log(
            f"error: required tool(s) not found on PATH: {', '.join(missing)} "
            "(Debian: apt-get install nginx-light caddy wrk)"
        )
        return 2
    if args.meshkit_mode == "auto":
        web = "meshkit" in args.targets and meshkit_web_available(meshkit_env(args.no_extensions))
        args.meshkit_mode = "web" if web else "server"
        log(f"meshkit mode: {args.meshkit_mode}")
    results = run_guarded(partial(run), args, "meshkit-bench-web-")
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
