#!/usr/bin/env python3
"""Service VIP vs the same tasks reached directly, and the routing mesh vs HAProxy, on a real
two-node meshkit cluster built from network namespaces.

The lab (tests/netns.py, underlay 198.18.0.0/24): hosts ``m1`` (manager) and ``w1`` (worker)
run agents (``meshkit node init/join`` under ``ip netns exec``, as tests/support/labutil.py
does); a third host ``cl`` runs no agent and stands for a client outside the cluster. Then:

    meshkit network create -d overlay --dataplane kernel|userspace meshbench
    meshkit service create --name web --replicas N --network meshbench --port 8080 \\
        --publish 8091:8080 --workdir DIR -- nginx ... | meshkit web -port 8080 -root DIR
    meshkit service create --name client --network meshbench \\
        --constraint node.hostname==m1 -- sleep 3600

Two comparisons, interleaved per round (A, B, A, B, ...), each for a small file (100 bytes,
keep-alive requests/s) and a 1 MiB file (Gbit/s of bodies); medians and ratios are printed:

1. VIP vs direct, from the client task's network namespace (``nsenter --net`` into the task's
   process): ``wrk -t2 -c32 http://VIP:8080/F`` (the VIP is what ``dig @127.0.0.11 web`` answers
   there) against the same tasks without the VIP: one wrk per task IP on the service network,
   run at once, splitting the threads and connections, their rates summed (``--direct one``:
   one wrk on the first task alone). Goal VIP/direct >= 0.8.
2. Routing mesh vs HAProxy, from host ``cl``: ``wrk -t2 -c32 http://M1:8091/F`` (meshkit's
   published port on m1) against ``http://M1:8092/F``, an HAProxy 2.6 (``mode tcp``,
   ``balance roundrobin``, ``nbthread 1``, no health checks) whose listener is in m1's host
   namespace and whose server sockets are made in m1's namespace of the ``ingress`` overlay
   (HAProxy's ``namespace`` server keyword), connecting to the tasks' ``ingress`` addresses:
   the same hop meshkit's mesh makes. Goal mesh/HAProxy >= 1.0.

3. The gateway (outbound access, issue 19): ``iperf3 -c 203.0.113.10 -t D --json`` (TCP,
   receiver rate) from the client task, whose default route is ``gw0`` on m1's gateway bridge
   ``meshkit_gwbr`` (nftables masquerade), against the same from m1's own namespace; host
   ``cl`` holds 203.0.113.10 (TEST-NET-3) on its loopback and the nodes route 203.0.113.0/24
   through cl's underlay address, as tests/cluster/test_gateway_netns.py does. Goal task/node
   >= 0.9; the reverse direction (``-R``, the outside sending) is shown for context.
   ``--gateway off`` skips it, ``--gateway only`` measures nothing else.

The VIP and the mesh are checked before measuring (the VIP resolves and answers, 8091 answers);
when one does not, the baselines are still measured and the run ends with status 1 naming what
did not answer. Every namespace, service and process the run made is removed at the end, also
on Ctrl-C, SIGTERM or a failure.

    python bench/mesh.py                        # 3 rounds x 5 s per measurement
    python bench/mesh.py --quick                # 1 round x 2 s, the CI smoke test (~1 min)
    python bench/mesh.py --dataplane userspace --backend web --replicas 3 --json /tmp/mesh.json
    python bench/mesh.py --gateway only         # the gateway's iperf3 case alone (~40 s)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for extra in (REPO / "tests", REPO):  # tests/support (netns, labutil)
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
try:
    import meshkit  # noqa: F401  (the installed one)
except ImportError:  # a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

NETWORK = "meshbench"
SERVICE = "web"
CLIENT = "client"
TARGET_PORT = 8080
UNDECLARED_PORT = 8081  # the backends listen here too; the service does not declare it
MESH_PORT = 8091
HAPROXY_PORT = 8092
SMALL_SIZE = 100
LARGE_SIZE = 1024 * 1024
FILES = {"small": ("file", SMALL_SIZE), "large": ("1mb", LARGE_SIZE)}
REQUIRED = ("ip", "nsenter", "wrk", "haproxy", "dig", "curl")
MANAGER, WORKER, CLIENT_HOST = "m1", "w1", "cl"
OUTSIDE_IP = "203.0.113.10"  # on cl's loopback: the outside world for the gateway case
IPERF_PORT = 5201
GW = "gw"  # the Results "file" of the gateway case (Gbit/s like the large file)
AGENT_ENV = {"MESHKIT_RAFT_TICK": "0.02"}


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Comparison:
    """One row of the table: `subject` measured against `anchor` on one file."""

    key: str
    title: str
    anchor: str
    subject: str
    file: str  # a FILES key
    goal: float | None  # the least ratio subject/anchor wanted; None: shown for context


COMPARISONS = (
    Comparison(
        "vip_small", "VIP vs direct, keep-alive req/s (100 B)", "direct", "vip", "small", 0.8
    ),
    Comparison("vip_large", "VIP vs direct, Gbit/s (1 MiB)", "direct", "vip", "large", 0.8),
    Comparison(
        "vipany_small",
        "context: VIP on an undeclared port (nft DNAT) vs direct, req/s (100 B)",
        "direct",
        "vip-any",
        "small",
        None,
    ),
    Comparison(
        "vipany_large",
        "context: VIP on an undeclared port (nft DNAT) vs direct, Gbit/s (1 MiB)",
        "direct",
        "vip-any",
        "large",
        None,
    ),
    Comparison(
        "hapvip_small",
        "context: HAProxy as the VIP vs direct, req/s (100 B)",
        "direct",
        "haproxy-vip",
        "small",
        None,
    ),
    Comparison(
        "hapvip_large",
        "context: HAProxy as the VIP vs direct, Gbit/s (1 MiB)",
        "direct",
        "haproxy-vip",
        "large",
        None,
    ),
    Comparison(
        "mesh_small", "mesh vs HAProxy, keep-alive req/s (100 B)", "haproxy", "mesh", "small", 1.0
    ),
    Comparison("mesh_large", "mesh vs HAProxy, Gbit/s (1 MiB)", "haproxy", "mesh", "large", 1.0),
    Comparison(
        "gw_out", "gateway: task vs node to the outside, iperf3 Gbit/s", "node", "task", GW, 0.9
    ),
    Comparison(
        "gw_in",
        "context: gateway reverse (-R, outside to task vs to node), Gbit/s",
        "node-R",
        "task-R",
        GW,
        None,
    ),
)


# the order of the measurements within a round, for each file
TARGETS = ("direct", "vip", "vip-any", "haproxy-vip", "haproxy", "mesh")
GW_TARGETS = ("node", "task", "node-R", "task-R")


@dataclass
class Sample:
    value: float  # req/s (small) or Gbit/s (large)
    errors: str = ""


@dataclass
class Results:
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)  # file, target
    missing: dict[str, str] = field(default_factory=dict)  # "vip"/"mesh" -> why not measured

    def add(self, file: str, target: str, sample: Sample) -> None:
        self.samples.setdefault(file, {}).setdefault(target, []).append(sample)

    def median(self, file: str, target: str) -> float | None:
        values = [s.value for s in self.samples.get(file, {}).get(target, [])]
        return statistics.median(values) if values else None

    def ratio(self, comp: Comparison) -> float | None:
        a, s = self.median(comp.file, comp.anchor), self.median(comp.file, comp.subject)
        return s / a if a and s is not None else None


_WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_ERRORS = re.compile(r"Socket errors:.*|Non-2xx or 3xx responses:.*")


def parse_wrk(out: str) -> tuple[float, str]:
    """(requests/s, errors wrk reported or "") from wrk's text output; ValueError when wrk
    printed no rate."""
    match = _WRK_RATE.search(out)
    if not match:
        raise ValueError("no Requests/sec line in wrk's output")
    errors = "; ".join(m.group(0).strip() for m in _WRK_ERRORS.finditer(out))
    return float(match.group(1)), errors


def split_load(threads: int, conns: int, parts: int) -> list[tuple[int, int]]:
    """(threads, connections) of each of `parts` wrk runs that share one client's load; every
    run gets at least one thread and as many connections as threads."""
    out = []
    for i in range(parts):
        t = max(1, threads // parts + (1 if i < threads % parts else 0))
        c = max(t, conns // parts + (1 if i < conns % parts else 0))
        out.append((t, c))
    return out


def parse_iperf(out: str) -> float:
    """Gbit/s the receiver counted, from `iperf3 --json`; ValueError naming iperf3's own error
    (or the missing field) otherwise."""
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise ValueError(f"iperf3 printed no JSON: {out.strip()[:200]!r}") from None
    if doc.get("error"):
        raise ValueError(f"iperf3: {doc['error']}")
    try:
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (KeyError, TypeError, ValueError):
        raise ValueError("iperf3's JSON has no end.sum_received.bits_per_second") from None


def value_of(rate: float, file: str) -> float:
    """What the table shows for a wrk rate on a FILES entry: req/s, or Gbit/s of bodies."""
    size = FILES[file][1]
    return rate if file == "small" else rate * size * 8 / 1e9


def haproxy_config(
    listen: str,
    servers: Sequence[str],
    netns: str | None,
    *,
    listen_netns: str | None = None,
    splice: bool = False,
) -> str:
    """HAProxy in `mode tcp`, one thread, round robin over `servers` (IP:PORT), without health
    checks; with `netns` its server sockets are made in that named network namespace, with
    `listen_netns` its listener; `splice` lets it move bodies with splice(2)."""
    if not servers:
        raise ValueError("HAProxy needs at least one server")
    where = f" namespace {netns}" if netns else ""
    bind_where = f" namespace {listen_netns}" if listen_netns else ""
    lines = [
        "global",
        "    nbthread 1",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 300s",
        "    timeout server 300s",
        "    maxconn 4096",
        *(["    option splice-auto"] if splice else []),
        "",
        "listen relay",
        f"    bind {listen}{bind_where}",
        "    balance roundrobin",
        *(f"    server t{i} {srv}{where}" for i, srv in enumerate(servers)),
    ]
    return "\n".join(lines) + "\n"


def nginx_config(root: Path, port: int, also: int = UNDECLARED_PORT) -> str:
    """nginx for a task: one process in the foreground, keep-alive without limits, `root`
    served on `port` of every address of the task's namespace."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process off;
worker_processes 1;
pid {root.parent}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {root.parent}/tmp;
    proxy_temp_path {root.parent}/tmp;
    fastcgi_temp_path {root.parent}/tmp;
    uwsgi_temp_path {root.parent}/tmp;
    scgi_temp_path {root.parent}/tmp;
    server {{
        listen {port} backlog=4096;
        listen {also} backlog=4096;
        root {root};
    }}
}}
"""


def task_addr(task: dict[str, Any], network: str) -> str | None:
    """A `service ps --format json` task's address on `network` (by name), without prefix."""
    for net in task.get("Networks") or []:
        if net.get("Name") == network and net.get("Addr"):
            return str(net["Addr"]).split("/")[0]
    return None


def running(tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tasks if t.get("State") == "running" and t.get("DesiredState") == "running"]


def fmt(value: float | None, file: str) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}k req/s" if file == "small" else f"{value:.2f} Gbit/s"


def shown(args: argparse.Namespace) -> list[Comparison]:
    """The comparisons this run measures (`--gateway off|only` leaves out one part)."""
    return [
        c
        for c in COMPARISONS
        if (c.file == GW and args.gateway != "off") or (c.file != GW and args.gateway != "only")
    ]


def table(results: Results, args: argparse.Namespace) -> tuple[str, bool]:
    """The medians table and whether every measured goal was met."""
    header = ("comparison", "anchor median", "meshkit median", "ratio", "goal")
    rows = []
    met_all = True
    for comp in shown(args):
        ratio = results.ratio(comp)
        if comp.goal is None:
            verdict = "context"
        elif ratio is None:
            verdict = f">= {comp.goal:.1f}x (not measured)"
        else:
            met = ratio >= comp.goal
            met_all = met_all and met
            verdict = f">= {comp.goal:.1f}x {'met' if met else 'MISSED'}"
        rows.append(
            (
                comp.title,
                fmt(results.median(comp.file, comp.anchor), comp.file),
                fmt(results.median(comp.file, comp.subject), comp.file),
                # truncated, not rounded: a shown 0.80x never hides a miss
                "-" if ratio is None else f"{math.floor(ratio * 100) / 100:.2f}x",
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        f"meshkit VIP, routing mesh and gateway: {args.rounds} round(s) x {args.duration:g} s, "
        "medians; "
        f"{args.replicas} x {args.backend} backend, {args.dataplane} data plane, "
        f"direct = {args.direct}, declared VIP ports: "
        f"{args.vip_declared or os.environ.get('MESHKIT_VIP_DECLARED') or 'auto'}, "
        f"HAProxy {'with' if args.haproxy_splice else 'without'} "
        "splice",
        " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
        *(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows),
    ]
    for comp in shown(args):
        per = results.samples.get(comp.file, {})
        paired = [
            s.value / a.value
            for a, s in zip(per.get(comp.anchor, []), per.get(comp.subject, []), strict=False)
            if a.value
        ]
        if len(paired) > 1:
            # a round's two runs are neighbours in time, so their ratio shrugs off load that
            # other work put on the machine in between rounds
            lines.append(
                f"{comp.key} {comp.subject}/{comp.anchor} per round: "
                + " ".join(f"{r:.2f}" for r in paired)
                + f" (median {statistics.median(paired):.2f})"
            )
    errors = [
        f"  {file}/{target}: {s.errors}"
        for file, per in results.samples.items()
        for target, ss in per.items()
        for s in ss
        if s.errors
    ]
    if errors:
        lines += ["client-reported errors:", *errors]
    for part, why in results.missing.items():
        lines.append(f"NOT MEASURED: {part}: {why}")
    return "\n".join(lines), met_all


# --------------------------------------------------------------------------- the lab


def sh(argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(what: Callable[[], Any], timeout: float, msg: str, every: float = 0.25) -> Any:
    """Poll until `what()` is truthy; BenchError naming `msg` with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = what()
        if last:
            return last
        time.sleep(every)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {msg} (last: {last!r})")


class MeshLab:
    """The cluster of the benchmark: lab hosts, agents, services and HAProxy; `close()` removes
    all of it, in the order that leaves nothing behind."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from support import netns  # type: ignore[import-not-found]
        from support.labutil import Lab

        self.args = args
        self.tmp = tmp
        reason = netns.available()
        if reason is not None:
            raise BenchError(f"cannot build the lab: {reason}")
        self.nl = netns.NetnsLab()
        self.lab = Lab(self.nl)
        self.task_pids: set[int] = set()
        self.task_ids: set[str] = set()
        self.daemons: list[subprocess.Popen[bytes]] = []  # HAProxy, iperf3 -s

    # -- cluster -----------------------------------------------------------------------

    def cli(self, *args: str, host: str = MANAGER) -> str:
        r = self.lab.cli(*args, host=host)
        if r.returncode != 0:
            raise BenchError(f"meshkit {shlex.join(args)}: {(r.stderr or r.stdout).strip()}")
        return str(r.stdout)

    def start(self) -> None:
        for h in (MANAGER, WORKER, CLIENT_HOST):
            self.nl.add_host(h)
        try:
            self.lab.start_cluster(MANAGER, (WORKER,))
        except AssertionError as exc:  # labutil's checks speak in asserts
            raise BenchError(f"the cluster did not come up: {exc}") from exc

    def agent_pid(self, host: str) -> int:
        return int(self.lab.procs[host].popen.pid)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        out = json.loads(self.cli("service", "ps", service, "--format", "json"))
        for t in out:
            self.task_ids.add(str(t["ID"]))
            if t.get("Pid"):
                self.task_pids.add(int(t["Pid"]))
        return list(out)

    def wait_running(self, service: str, count: int) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            tasks = self.tasks(service)
            for t in tasks:
                if t.get("State") in ("failed", "rejected") and t.get("Error"):
                    raise BenchError(
                        f"service {service}: task {t['Name']} {t['State']}: {t['Error']}"
                    )
            up = running(tasks)
            return up if len(up) == count and all(t.get("Pid") for t in up) else None

        return list(wait_for(ready, 60, f"{count} running task(s) of {service}"))

    def backend_command(self, www: Path) -> list[str]:
        if self.args.backend == "nginx":
            conf = www.parent / "nginx.conf"
            conf.write_text(nginx_config(www, TARGET_PORT))
            return ["nginx", "-p", str(www.parent), "-e", "stderr", "-c", str(conf)]
        web = f"{shlex.quote(sys.executable)} -m meshkit web -root {shlex.quote(str(www))} -quiet"
        # the same server on the undeclared port too (VIP on every port: the nft DNAT path)
        return ["/bin/sh", "-c", f"{web} -port {UNDECLARED_PORT} & exec {web} -port {TARGET_PORT}"]

    def deploy(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The network, the backend service and the client task; (backend tasks, client)."""
        a = self.args
        self.cli("network", "create", "-d", "overlay", "--dataplane", a.dataplane, NETWORK)
        served = self.tmp / "served"
        www = served / "www"
        (served / "tmp").mkdir(parents=True)
        www.mkdir()
        for name, size in FILES.values():
            (www / name).write_bytes(b"x" * (size - 1) + b"\n")
        for d in (self.tmp, served, www, served / "tmp"):
            os.chmod(d, 0o755)
        self.cli(
            "service",
            "create",
            "--name",
            SERVICE,
            "--replicas",
            str(a.replicas),
            "--network",
            NETWORK,
            "--port",
            str(TARGET_PORT),
            "--publish",
            f"{MESH_PORT}:{TARGET_PORT}",
            "--workdir",
            str(served),
            "--detach",
            "--",
            *self.backend_command(www),
        )
        self.cli(
            "service",
            "create",
            "--name",
            CLIENT,
            "--network",
            NETWORK,
            "--constraint",
            f"node.hostname=={MANAGER}",
            "--detach",
            "--",
            "sleep",
            "3600",
        )
        backends = self.wait_running(SERVICE, a.replicas)
        client = self.wait_running(CLIENT, 1)[0]
        planes = wait_for(lambda: self.planes(NETWORK), 20, f"the data planes of {NETWORK}")
        if set(planes.values()) != {a.dataplane}:
            raise BenchError(
                f"network {NETWORK} asked for the {a.dataplane} data plane but the "
                f"nodes run {planes}"
            )
        return backends, client

    # -- running things in namespaces ---------------------------------------------------

    def in_task(self, task: dict[str, Any], argv: Sequence[str]) -> list[str]:
        """argv run in a task's network namespace (through its process, so the agent's
        private mount of /run/netns does not matter)."""
        return ["nsenter", f"--net=/proc/{int(task['Pid'])}/ns/net", *argv]

    def on_host(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.nl.hosts[host].netns, *argv]

    def http_ok(self, where: list[str], url: str, size: int) -> str | None:
        """None when GET url (curl, run through `where`) gives 200 and `size` bytes, else
        what went wrong."""
        r = sh(
            [
                *where,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "3",
                "-w",
                "%{http_code} %{size_download}",
                url,
            ],
            timeout=20,
        )
        if r.returncode == 0 and r.stdout.strip() == f"200 {size}":
            return None
        return (
            f"GET {url}: curl status {r.returncode}, got {r.stdout.strip() or '-'} "
            f"(want 200 {size}) {r.stderr.strip()}"
        )

    def resolve_vip(self, client: dict[str, Any]) -> tuple[str | None, str]:
        """(the VIP `dig @127.0.0.11 web` gives in the client task, or None, and what dig
        said)."""
        r = sh(
            self.in_task(client, ["dig", "+short", "+time=1", "+tries=1", "@127.0.0.11", SERVICE]),
            timeout=15,
        )
        addrs = [ln for ln in r.stdout.split() if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ln)]
        said = (r.stdout.strip() or r.stderr.strip() or f"exit {r.returncode}").replace("\n", " ")
        return (addrs[0] if len(addrs) == 1 else None), said

    def planes(self, network: str) -> dict[str, str]:
        """Each node's data plane of `network` (as `network inspect` reports it)."""
        view = json.loads(self.cli("network", "inspect", network))[0]
        return dict(view.get("DataPlanes") or {})

    def gateway(self, network: str) -> str:
        view = json.loads(self.cli("network", "inspect", network))[0]
        return str(view["IPAM"]["Config"][0]["Gateway"])

    def network_ns(self, network: str, host: str) -> str:
        nets = json.loads(self.cli("network", "ls", "--format", "json"))
        net = next((n for n in nets if n.get("Name") == network), None)
        if net is None:
            raise BenchError(f"no network {network} in `meshkit network ls`")
        node = self.lab.node_ids()[host]
        return f"mkn-{str(net['ID'])[:8]}-{node[:8]}"

    def start_outside(self) -> None:
        """cl plays the outside world: OUTSIDE_IP on its loopback, an iperf3 server bound to
        it; m1 and w1 route 203.0.113.0/24 through cl's underlay address. cl has no route to
        the gateway subnets, so only masqueraded traffic comes back."""
        self.nl.run(CLIENT_HOST, ["ip", "addr", "add", f"{OUTSIDE_IP}/32", "dev", "lo"])
        for h in (MANAGER, WORKER):
            self.nl.run(
                h, ["ip", "route", "add", "203.0.113.0/24", "via", self.nl.addr(CLIENT_HOST)]
            )
        self.daemons.append(
            subprocess.Popen(
                self.on_host(
                    CLIENT_HOST, ["iperf3", "-s", "-B", OUTSIDE_IP, "-p", str(IPERF_PORT)]
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def start_haproxy(self, name: str, config: str) -> Path:
        """HAProxy with `config`, run from the agent of m1's mount namespace (where its
        /run/netns mounts are, for the `namespace` keywords) and in m1's host network
        namespace; its log file."""
        conf = self.tmp / f"{name}.cfg"
        conf.write_text(config)
        logfile = self.tmp / f"{name}.log"
        argv = [
            "nsenter",
            "-t",
            str(self.agent_pid(MANAGER)),
            "-m",
            "-n",
            "haproxy",
            "-db",
            "-f",
            str(conf),
        ]
        with logfile.open("wb") as out:
            self.daemons.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return logfile

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        for proc in self.daemons:
            stop_popen(proc)
        with contextlib.suppress(Exception):
            self.tasks(SERVICE)  # the newest pids, should a task have restarted
        with contextlib.suppress(Exception):
            self.tasks(CLIENT)
        for svc in (CLIENT, SERVICE):
            with contextlib.suppress(Exception):
                self.lab.cli("service", "rm", svc, timeout=30)
        with contextlib.suppress(BenchError):
            wait_for(lambda: not [p for p in self.task_pids if alive(p)], 20, "tasks to end")
        with contextlib.suppress(Exception):
            self.lab.cli("network", "rm", NETWORK, timeout=30)
        try:
            self.lab.close()  # agents, the data dirs, the overlay namespaces
        except Exception as exc:
            errors.append(f"stopping the agents: {exc}")
        # agents keep tasks running over a restart: whatever the rm above missed goes by pid
        for pid in self.task_pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        from meshkit.base.netns import netns_name

        for tid in self.task_ids:
            sh(["ip", "netns", "del", netns_name(tid)])
        try:
            self.nl.close()
        except Exception as exc:
            errors.append(str(exc))
        if errors:
            log("warning: teardown incomplete: " + "; ".join(errors))


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_popen(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------- measuring


def wrk_argv(threads: int, conns: int, duration: float, url: str) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        url,
    ]


def run_wrks(cmds: Sequence[list[str]], duration: float) -> tuple[float, str]:
    """Run wrk command lines at once; (their summed requests/s, their errors)."""
    procs = [
        subprocess.Popen(
            c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        for c in cmds
    ]
    outs: list[tuple[str, str]] = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=duration + 60))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    total, errors = 0.0, []
    for cmd, p, (out, err) in zip(cmds, procs, outs, strict=True):
        try:
            rate, errs = parse_wrk(out)
        except ValueError:
            raise BenchError(
                f"{shlex.join(cmd)} failed (status {p.returncode}):\n{out}{err}"
            ) from None
        total += rate
        if errs:
            errors.append(errs)
    return total, "; ".join(errors)


@dataclass
class Targets:
    """Per target name, the wrk command lines it runs for a file path (run at once)."""

    cmds: dict[str, Callable[[str], list[list[str]]]] = field(default_factory=dict)


def http_targets(
    ml: MeshLab,
    args: argparse.Namespace,
    backends: list[dict[str, Any]],
    client: dict[str, Any],
    results: Results,
) -> Targets:
    """The wrk command lines of the VIP, direct, HAProxy and mesh targets, each checked to
    answer first (what does not goes to results.missing)."""
    targets = Targets()
    d, th, cs = args.duration, args.threads, args.connections

    # direct: the tasks' addresses on the service network, from the client task
    ips = [task_addr(t, NETWORK) for t in backends]
    if None in ips:
        raise BenchError(f"a task of {SERVICE} has no address on {NETWORK}: {backends}")
    direct_ips = [str(ip) for ip in ips][: 1 if args.direct == "one" else None]
    for ip in direct_ips:
        for name, size in FILES.values():
            why = ml.http_ok(ml.in_task(client, []), f"http://{ip}:{TARGET_PORT}/{name}", size)
            if why:
                raise BenchError(f"a task does not answer directly: {why}")
    loads = split_load(th, cs, len(direct_ips))
    targets.cmds["direct"] = lambda path: [
        ml.in_task(client, wrk_argv(t, c, d, f"http://{ip}:{TARGET_PORT}/{path}"))
        for ip, (t, c) in zip(direct_ips, loads, strict=True)
    ]

    # the VIP: resolved in the client task, then it must serve both files
    vip, said = None, ""
    deadline = time.monotonic() + args.wait
    while vip is None and time.monotonic() < deadline:
        vip, said = ml.resolve_vip(client)
        if vip is None:
            time.sleep(0.5)
    if vip is None:
        results.missing["vip"] = (
            f"`dig @127.0.0.11 {SERVICE}` in the client task gave no "
            f"single address within {args.wait:g} s: {said}"
        )
    else:
        why = wait_answer(ml, ml.in_task(client, []), vip, TARGET_PORT, args.wait)
        if why:
            results.missing["vip"] = f"the VIP {vip} resolves but does not serve: {why}"
        else:
            log(f"VIP {vip} answers")
            targets.cmds["vip"] = lambda path: [
                ml.in_task(client, wrk_argv(th, cs, d, f"http://{vip}:{TARGET_PORT}/{path}"))
            ]
            why = wait_answer(ml, ml.in_task(client, []), vip, UNDECLARED_PORT, args.wait)
            if why:
                results.missing["vip-any"] = f"the VIP {vip} on port {UNDECLARED_PORT}: {why}"
            else:
                targets.cmds["vip-any"] = lambda path: [
                    ml.in_task(
                        client, wrk_argv(th, cs, d, f"http://{vip}:{UNDECLARED_PORT}/{path}")
                    )
                ]

    # context: HAProxy doing the VIP's hop, in m1's namespace of the service network
    # (listening on the network's gateway address, which the client task reaches there)
    net_ns = ml.network_ns(NETWORK, MANAGER)
    gateway = ml.gateway(NETWORK)
    config = haproxy_config(
        f"{gateway}:{HAPROXY_PORT}",
        [f"{ip}:{TARGET_PORT}" for ip in ips],
        net_ns,
        listen_netns=net_ns,
        splice=args.haproxy_splice,
    )
    logfile = ml.start_haproxy("haproxy-vip", config)
    why = wait_answer(ml, ml.in_task(client, []), gateway, HAPROXY_PORT, 15)
    if why:
        raise BenchError(f"HAProxy as the VIP ({net_ns}) does not serve: {why}\n{tail(logfile)}")
    targets.cmds["haproxy-vip"] = lambda path: [
        ml.in_task(client, wrk_argv(th, cs, d, f"http://{gateway}:{HAPROXY_PORT}/{path}"))
    ]

    # HAProxy on m1 doing the mesh's hop: host namespace in, the ingress overlay out
    m1 = ml.nl.addr(MANAGER)
    from_cl = ml.on_host(CLIENT_HOST, [])
    ingress_ips = [task_addr(t, "ingress") for t in backends]
    if None not in ingress_ips:
        hop_net, hop_ips = "ingress", [str(ip) for ip in ingress_ips]
    else:  # no ingress addresses (yet): the service network is the same kind of hop
        hop_net, hop_ips = NETWORK, [str(ip) for ip in ips]
        log(f"note: the tasks have no ingress address; HAProxy relays over {NETWORK}")
    hop_ns = ml.network_ns(hop_net, MANAGER)
    config = haproxy_config(
        f"{m1}:{HAPROXY_PORT}",
        [f"{ip}:{TARGET_PORT}" for ip in hop_ips],
        hop_ns,
        splice=args.haproxy_splice,
    )
    logfile = ml.start_haproxy("haproxy-mesh", config)
    why = wait_answer(ml, from_cl, m1, HAPROXY_PORT, 15)
    if why:
        raise BenchError(f"HAProxy (servers in {hop_ns}) does not serve: {why}\n{tail(logfile)}")
    log(f"HAProxy on {m1}:{HAPROXY_PORT} answers (servers in {hop_ns}: {hop_ips})")
    targets.cmds["haproxy"] = lambda path: [
        ml.on_host(CLIENT_HOST, wrk_argv(th, cs, d, f"http://{m1}:{HAPROXY_PORT}/{path}"))
    ]
    why = wait_answer(ml, from_cl, m1, MESH_PORT, args.wait)
    if why:
        results.missing["mesh"] = f"the published port {m1}:{MESH_PORT} does not serve: {why}"
    else:
        log(f"routing mesh on {m1}:{MESH_PORT} answers")
        targets.cmds["mesh"] = lambda path: [
            ml.on_host(CLIENT_HOST, wrk_argv(th, cs, d, f"http://{m1}:{MESH_PORT}/{path}"))
        ]

    return targets


def iperf_argv(seconds: float, reverse: bool) -> list[str]:
    argv = ["iperf3", "-c", OUTSIDE_IP, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "--json"]
    return [*argv, "-R"] if reverse else argv


def run_iperf(where: list[str], seconds: float, reverse: bool = False) -> float:
    """Gbit/s of one iperf3 run to the outside from `where` (a namespace prefix); BenchError
    when it fails."""
    argv = [*where, *iperf_argv(seconds, reverse)]
    r = sh(argv, timeout=seconds + 30)
    try:
        return parse_iperf(r.stdout)
    except ValueError as exc:
        raise BenchError(
            f"{shlex.join(argv)} (status {r.returncode}): {exc} {r.stderr.strip()}"
        ) from None


def gateway_targets(
    ml: MeshLab, args: argparse.Namespace, client: dict[str, Any], results: Results
) -> dict[str, tuple[list[str], bool]]:
    """The outside host and its iperf3 server, checked from both ends with a one-second run;
    per target, where iperf3 runs and whether in reverse (-R)."""
    ml.start_outside()
    task = ml.in_task(client, [])
    node = ml.on_host(MANAGER, [])
    route = " ".join(sh([*task, "ip", "route", "get", OUTSIDE_IP]).stdout.split())
    log(f"gateway: the client task reaches {OUTSIDE_IP} by: {route or '(no route)'}")
    why = ""
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            run_iperf(node, 1)
            run_iperf(task, 1)
            run_iperf(task, 1, reverse=True)
            why = ""
            break
        except BenchError as exc:
            why = str(exc)
            time.sleep(0.5)
    if why:
        results.missing["gateway"] = why
        return {}
    return {"node": (node, False), "task": (task, False), "node-R": (node, True),
            "task-R": (task, True)}  # fmt: skip


def bench(args: argparse.Namespace, tmp: Path) -> Results:
    results = Results()
    ml = MeshLab(args, tmp)
    try:
        t0 = time.monotonic()
        ml.start()
        log(
            f"cluster up ({time.monotonic() - t0:.0f} s); deploying {args.replicas} x "
            f"{args.backend} on network {NETWORK} ({args.dataplane})"
        )
        backends, client = ml.deploy()
        log(
            f"tasks running ({time.monotonic() - t0:.0f} s): "
            + ", ".join(f"{t['Name']} on {t['Node']} (pid {t['Pid']})" for t in [*backends, client])
        )
        targets = Targets()
        if args.gateway != "only":
            targets = http_targets(ml, args, backends, client, results)
        gw_cmds: dict[str, tuple[list[str], bool]] = {}
        if args.gateway != "off":
            gw_cmds = gateway_targets(ml, args, client, results)

        # warm-up: a second of each (connection tables, caches, Python code paths)
        for make in targets.cmds.values() if args.warmup else ():
            run_wrks([warm(c) for c in make(FILES["small"][0])], 1)
        log(f"measuring ({time.monotonic() - t0:.0f} s)")
        for rnd in range(1, args.rounds + 1):
            for file, (path, _) in FILES.items():
                for target in TARGETS:
                    if target not in targets.cmds:
                        continue
                    rate, errors = run_wrks(targets.cmds[target](path), args.duration)
                    sample = Sample(value_of(rate, file), errors)
                    results.add(file, target, sample)
                    extra = f"  ({errors})" if errors else ""
                    log(f"  round {rnd} {file:<5} {target:<11} {fmt(sample.value, file)}{extra}")
            for target in GW_TARGETS:
                if target in gw_cmds:
                    where, reverse = gw_cmds[target]
                    sample = Sample(run_iperf(where, args.duration, reverse))
                    results.add(GW, target, sample)
                    log(f"  round {rnd} {GW:<5} {target:<11} {fmt(sample.value, GW)}")
        log(f"done ({time.monotonic() - t0:.0f} s)")
    finally:
        ml.close()
    return results


def warm(cmd: list[str]) -> list[str]:
    """The same wrk command line, for one second."""
    return [("-d1s" if a.startswith("-d") and a[2:-1].isdigit() else a) for a in cmd]


def wait_answer(ml: MeshLab, where: list[str], ip: str, port: int, timeout: float) -> str | None:
    """None once both files come back through ip:port within `timeout`, else why not."""
    deadline = time.monotonic() + timeout
    why: str | None = "not tried"
    while time.monotonic() < deadline:
        why = None
        for name, size in FILES.values():
            why = why or ml.http_ok(where, f"http://{ip}:{port}/{name}", size)
        if why is None:
            return None
        time.sleep(0.5)
    return why


# --------------------------------------------------------------------------- main


def write_json(results: Results, args: argparse.Namespace, path: Path) -> None:
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "dataplane": args.dataplane,
        "backend": args.backend,
        "replicas": args.replicas,
        "direct": args.direct,
        "threads": args.threads,
        "haproxy_splice": args.haproxy_splice,
        "vip_declared": args.vip_declared or os.environ.get("MESHKIT_VIP_DECLARED") or "auto",
        "gateway": args.gateway,
        "connections": args.connections,
        "not_measured": results.missing,
        "comparisons": {},
    }
    for comp in shown(args):
        per = results.samples.get(comp.file, {})
        entry: dict[str, Any] = {
            "unit": "req/s" if comp.file == "small" else "Gbit/s",
            "goal_ratio": comp.goal,
            "ratio": results.ratio(comp),
        }
        for target in (comp.anchor, comp.subject):
            ss = per.get(target, [])
            entry[target] = {
                "median": results.median(comp.file, target),
                "samples": [s.value for s in ss],
                "errors": [s.errors for s in ss if s.errors],
            }
        out["comparisons"][comp.key] = entry
    path.write_text(json.dumps(out, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="meshkit VIP vs direct, and routing mesh vs HAProxy (mode tcp), on a "
        "two-node cluster of namespace hosts: interleaved rounds, medians and ratios."
    )
    p.add_argument("--quick", action="store_true", help="one round of 2 s each (smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 5)")
    p.add_argument(
        "--dataplane",
        choices=("kernel", "userspace"),
        default="kernel",
        help="the overlay's data plane (default kernel)",
    )
    p.add_argument(
        "--backend",
        choices=("nginx", "web"),
        default="nginx",
        help="what the tasks run: nginx (one worker) or `meshkit web`",
    )
    p.add_argument("--replicas", type=int, default=2, help="tasks of the service (default 2)")
    p.add_argument(
        "--direct",
        choices=("all", "one"),
        default="all",
        help="the VIP's anchor: every task at once (wrk split over them, the "
        "default) or the first task alone",
    )
    p.add_argument(
        "--haproxy-splice",
        action="store_true",
        help="HAProxy with `option splice-auto` (meshkit copies; default off)",
    )
    p.add_argument(
        "--vip-declared",
        choices=("auto", "relay"),
        default=None,
        help="the agents' MESHKIT_VIP_DECLARED: declared VIP ports DNATed by nftables like "
        "undeclared ones where the service needs no relay (auto, meshkit's default) or through "
        "the L4 relay (default: as the environment says)",
    )
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds to wait for the VIP and the mesh to answer (default 20, 10 with --quick)",
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        default=None,
        help="skip the one-second warm-up run of each target (--quick skips it)",
    )
    p.add_argument(
        "--gateway",
        choices=("on", "off", "only"),
        default="on",
        help="the gateway case (iperf3 from a task to the outside vs from the node): measured "
        "with the rest (on, the default), skipped (off) or alone (only)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the samples to FILE")
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = not args.quick
    if args.wait is None:
        args.wait = 10.0 if args.quick else 20.0
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: must be at least 1")
    if args.duration < 1:
        p.error(f"--duration {args.duration:g}: must be at least 1 (wrk counts whole seconds)")
    if args.replicas < 1:
        p.error(f"--replicas {args.replicas}: must be at least 1")
    if args.threads < 1 or args.connections < args.threads:
        p.error(
            f"--threads {args.threads} / --connections {args.connections}: need at least "
            "one thread and a connection per thread"
        )
    if args.wait < 0:
        p.error(f"--wait {args.wait:g}: must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = REQUIRED + (("nginx",) if args.backend == "nginx" else ())
    tools += ("iperf3",) if args.gateway != "off" else ()
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        log(
            f"error: required tool(s) not found on PATH: {', '.join(missing)} (Debian: apt-get "
            "install iproute2 util-linux wrk haproxy bind9-dnsutils curl nginx-light iperf3)"
        )
        return 2

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    if args.vip_declared:  # the agents inherit this process's environment
        os.environ["MESHKIT_VIP_DECLARED"] = args.vip_declared
    tmp = Path(tempfile.mkdtemp(prefix="meshkit-bench-mesh-"))
    try:
        results = bench(args, tmp)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text, met = table(results, args)
    print()
    print(text)
    print(f"command: {shlex.join([sys.executable, 'bench/mesh.py', *(argv or sys.argv[1:])])}")
    if args.json:
        write_json(results, args, args.json)
    if results.missing:
        log(
            "error: not everything was measured: "
            + "; ".join(f"{k}: {v}" for k, v in results.missing.items())
        )
        return 1
    if args.check_goals and not met:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
