#!/usr/bin/env python3
"""Overlay throughput: plain underlay vs kernel VXLAN vs meshkit's userspace VXLAN, side by side.

Two hosts are network namespaces on a veth underlay (tests/netns.py, 198.18.0.0/24). Each
overlay under test has, per host, a network namespace with a bridge ``br0`` holding the VXLAN
port (a kernel ``vxlan`` link made in the host namespace and moved in, or a TAP served by a
``runner`` process of this file in the host namespace) and a veth to a task namespace whose
``eth0`` has the task IP (203.0.113.1 / .2). Peers are static (FDB + neighbour entries, no
learning, no flooding); every overlay has its own VNI and UDP port, so all are built once and
measured interleaved (underlay, kernel, c, underlay, ...), ``--rounds`` times; medians and the
ratio userspace/kernel are printed.

Measurements: ``iperf3 -c TASK -t D --json`` TCP Gbit/s (receiver side) with the CPU it cost
(busy cores of the whole machine from /proc/stat during the run, per Gbit/s: the kernel
plane's work is softirq time no process owns), small frames ``iperf3 -u -l 64 -b 0``
received packets/s, and a TCP_RR-style ping-pong (1-byte request, 1-byte response, one
connection, TCP_NODELAY) whose median round trip is printed in microseconds. The ``sealed``
row is the C plane on an encrypted overlay (AES-256-GCM or ChaCha20-Poly1305 by the CPU).
Userspace rows also print ``plane_s_per_gb``: CPU seconds the two runner processes used per
GB of TCP moved (on a shared machine the busy share of the whole machine says little), and
``plane_us_per_frame``: their CPU microseconds per inner frame sent in the 64-byte run.
``--extra c:1`` adds a row ``c@1``: the C plane with burst priority 1 (SCHED_FIFO while a
thread moves a bulk stream; off by default), measured in the same rounds, so settings compare
side by side.

    python bench/overlay.py                  # 3 rounds x 5 s, underlay/kernel/c
    python bench/overlay.py --quick          # smoke: 1 round x 2 s (about 30 s in all)
    python bench/overlay.py --python         # also the pure-Python twin (slow)
    python bench/overlay.py --mtu 1400       # underlay MTU (overlay = MTU - 50)
    python bench/overlay.py --extra c:1 --extra sealed:1   # also the planes with burst priority
    python bench/overlay.py --only rr --rr-count 5000       # only the ping-pong, more samples
    python bench/overlay.py --extra c:0:NAME=VALUE          # a row whose planes run with NAME=VALUE

``python bench/overlay.py runner ...`` is the data-plane process one host runs (also used by
tests/net/test_dataplane_e2e.py): it opens the TAP with ``UserspaceDataplane.open_tap`` (for
the C plane: IFF_VNET_HDR, so TSO/checksum offloads and UDP GSO/GRO are on; ``--plain-tap``
opens it plain), serves it, writes its stats as JSON to ``--stats`` every 0.2 s and once more
when SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
try:
    import meshkit  # noqa: F401  (the installed one, with its compiled data plane)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))

TASK_IPS = ("203.0.113.1", "203.0.113.2")
TASK_PREFIX = 24
SO_NO_CHECK = 11


def task_mac(ip: str) -> str:
    """02:4d:<4 IP bytes>, the project's MAC-from-IP rule."""
    return "02:4d:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


# ---------------------------------------------------------------------------- runner


def runner_main(argv: list[str]) -> int:
    """Serve one TAP on this host until SIGTERM (see the module docstring)."""
    from meshkit.net.vxlan.plane import UserspaceDataplane, open_tap

    ap = argparse.ArgumentParser(prog="overlay.py runner")
    ap.add_argument("--impl", choices=("c", "python"), required=True)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tap", required=True)
    ap.add_argument("--vni", type=int, required=True)
    ap.add_argument("--fdb", default="{}", help="JSON {mac: peer underlay ip}")
    ap.add_argument("--neigh", default="{}", help="JSON {ip: mac}")
    ap.add_argument("--stats", required=True, help="file the stats JSON is written to")
    ap.add_argument("--plain-tap", action="store_true",
                    help="open the TAP without IFF_VNET_HDR (no offloads)")
    ap.add_argument("--udp-no-check", action="store_true",
                    help="send UDP without checksums (SO_NO_CHECK), which makes the kernel "
                         "refuse UDP_SEGMENT: exercises the one-datagram-per-segment path")
    ap.add_argument("--sockbuf", type=int, default=0,
                    help="UDP socket buffer bytes (default: the plane's own)")
    ap.add_argument("--burst-prio", type=int, default=None,
                    help="the C threads' SCHED_FIFO priority in bulk streams, 0 off "
                         "(default: the plane's own)")
    ap.add_argument("--keys-file",
                    help='encrypt: JSON {"keys": [{"id", "key": base64 of 36 bytes}], "tx": id, '
                         '"cipher": 1|2 (optional)}, re-read whenever it changes (rotation)')
    ap.add_argument("--test-refuse-uso-after", type=int, default=None, metavar="N",
                    help="TEST HOOK (C plane): after N USO super-frames into the TAP, the next "
                         "fails as a kernel before 6.2 fails it (EINVAL): exercises the "
                         "one-datagram-per-write fallback")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in this process's environment before the plane starts (the "
                         "plane's MESHKIT_VXLAN_* settings)")
    args = ap.parse_args(argv)
    for assignment in args.env:
        name, _, value = assignment.partition("=")
        os.environ[name] = value
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats_path = Path(args.stats)

    def dump(plane: UserspaceDataplane) -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(plane.stats()))
        tmp.replace(stats_path)

    extra: dict[str, int] = {"socket_buffer": args.sockbuf} if args.sockbuf else {}
    if args.burst_prio is not None:
        extra["burst_priority"] = args.burst_prio
    with UserspaceDataplane(args.bind, args.port, args.impl, **extra) as plane:
        if args.udp_no_check:  # a test hook on the plane's own socket, before it runs
            plane._sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        if args.test_refuse_uso_after is not None and plane.implementation == "c":
            plane._plane.test_refuse_uso(args.test_refuse_uso_after)  # type: ignore[attr-defined]
        tap = open_tap(args.tap) if args.plain_tap else plane.open_tap(args.tap)
        try:
            plane.add_network(args.vni, tap)
            plane.set_peers(args.vni, json.loads(args.fdb), json.loads(args.neigh))
            seen_keys = load_keys(plane, args.vni, args.keys_file, None)
            plane.start()
            dump(plane)
            while not stop.wait(0.2):
                seen_keys = load_keys(plane, args.vni, args.keys_file, seen_keys)
                dump(plane)
            plane.remove_network(args.vni)
            dump(plane)
        finally:
            plane.close()  # its threads stop before the fd they read may be reused
            os.close(tap)
    return 0


def load_keys(plane: Any, vni: int, path: str | None, seen: str | None) -> str | None:
    """Give the plane the keys of ``path`` when its text changed since ``seen``."""
    if not path:
        return None
    text = Path(path).read_text()
    if text != seen:
        from meshkit.net.vxlan.seal import key_from_wire

        spec = json.loads(text)
        keys = [key_from_wire(k) for k in spec["keys"]]
        plane.set_keys(vni, keys, int(spec["tx"]), spec.get("cipher"))
    return text


def write_keys(path: Path, keys: list[tuple[int, bytes]], tx: int, cipher: int | None) -> None:
    """The runner's --keys-file: (id, 36 bytes of key + salt) pairs, written atomically."""
    import base64

    spec = {"keys": [{"id": i, "key": base64.b64encode(raw).decode()} for i, raw in keys],
            "tx": tx, "cipher": cipher}  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec))
    tmp.replace(path)


# ---------------------------------------------------------------------------- topology


def sh(*argv: str, timeout: float = 30.0) -> str:
    """Run a command; RuntimeError with its output when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


TX_CSUM_OFF = """
import ctypes, fcntl, socket, struct, sys
value = ctypes.create_string_buffer(struct.pack("II", 0x17, 0))  # ETHTOOL_STXCSUM, off
ifreq = struct.pack("16sP16x", sys.argv[1].encode(), ctypes.addressof(value))
fcntl.ioctl(socket.socket(), 0x8946, ifreq)  # SIOCETHTOOL
"""


def tx_checksum_off(ns: str, dev: str) -> None:
    """Turn off TX checksum offload of ``dev`` in ``ns`` (no ethtool binary here).

    Why: over a veth underlay the kernel never computes an offloaded inner checksum (veth
    hands CHECKSUM_PARTIAL packets on as they are), so a kernel VXLAN port would send inner
    TCP segments with unfilled checksums to a userspace peer, which reads them from a plain UDP
    socket and writes them into its TAP as they came. A physical NIC fills them in."""
    sh("ip", "netns", "exec", ns, sys.executable, "-c", TX_CSUM_OFF, dev)


@dataclass
class Overlay:
    """One overlay between hosts h0 and h1; ``kinds`` per host: "kernel", "c" or "python"."""

    lab: Any  # netns.NetnsLab
    kinds: tuple[str, str]
    vni: int
    port: int
    mtu: int  # overlay MTU
    tag: str
    plain_tap: bool = False  # runners open their TAPs without IFF_VNET_HDR (no offloads)
    udp_no_check: bool = False  # runners send without UDP checksums: no UDP_SEGMENT
    # a kernel port facing a userspace one gets TX checksum offload off (see tx_checksum_off);
    # False keeps it on, which a C runner with a vnet TAP copes with (DATA_VALID on receive)
    kernel_csum_off: bool = True
    # encrypted: the runners seal with the keys of these files (side i: keys_files[i])
    keys_files: tuple[Path, Path] | None = None
    sockbuf: int = 0  # the runners' UDP socket buffers (0: the plane's default)
    burst_prio: int | None = None  # the runners' burst priority (None: the plane's default)
    env: tuple[str, ...] = ()  # NAME=VALUE settings for the runners' environment
    refuse_uso_after: int | None = None  # C runners: the USO write after N fails (test hook)
    namespaces: list[str] = field(default_factory=list)
    runners: list[Any] = field(default_factory=list)
    stats_files: list[Path] = field(default_factory=list)

    def netns(self, i: int) -> str:
        return f"{self.lab.prefix}-{self.tag}{i}n"

    def task(self, i: int) -> str:
        """The task namespace of side i (where iperf3, ping run)."""
        return f"{self.lab.prefix}-{self.tag}{i}t"

    def build(self) -> None:
        hosts = [self.lab.hosts["h0"], self.lab.hosts["h1"]]
        for i, kind in enumerate(self.kinds):
            other = 1 - i
            peer_ip, peer_mac = TASK_IPS[other], task_mac(TASK_IPS[other])
            ns, task, host = self.netns(i), self.task(i), hosts[i]
            for name in (ns, task):
                sh("ip", "netns", "add", name)
                self.namespaces.append(name)
                sh("ip", "-n", name, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge")
            if kind == "kernel":
                port = f"vx{self.vni}"
                sh("ip", "-n", host.netns, "link", "add", port, "type", "vxlan", "id",
                   str(self.vni), "local", host.address, "dstport", str(self.port),
                   "nolearning", "proxy")  # fmt: skip
            else:
                port = f"tap{self.vni}"
                stats = self.lab._tmp / f"{self.tag}{i}.json"
                self.stats_files.append(stats)
                self.runners.append(self.lab.spawn(host.name, [
                    sys.executable, str(HERE / "overlay.py"), "runner", "--impl", kind,
                    "--bind", host.address, "--port", str(self.port), "--tap", port,
                    "--vni", str(self.vni),
                    "--fdb", json.dumps({peer_mac: hosts[other].address}),
                    "--neigh", json.dumps({peer_ip: peer_mac}),
                    "--stats", str(stats),
                    *(["--plain-tap"] if self.plain_tap else []),
                    *(["--keys-file", str(self.keys_files[i])] if self.keys_files else []),
                    *(["--sockbuf", str(self.sockbuf)] if self.sockbuf else []),
                    *(["--burst-prio", str(self.burst_prio)] if self.burst_prio is not None
                      else []),
                    *[a for e in self.env for a in ("--env", e)],
                    *(["--test-refuse-uso-after", str(self.refuse_uso_after)]
                      if self.refuse_uso_after is not None else []),
                    *(["--udp-no-check"] if self.udp_no_check else [])]))  # fmt: skip
                deadline = time.monotonic() + 20
                while not stats.exists():
                    if time.monotonic() > deadline or self.runners[-1].popen.poll() is not None:
                        raise RuntimeError(f"runner on {host.name} did not start:\n"
                                           f"{self.runners[-1].output()}")  # fmt: skip
                    time.sleep(0.05)
            sh("ip", "-n", host.netns, "link", "set", port, "netns", ns)
            sh("ip", "-n", ns, "link", "set", port, "mtu", str(self.mtu), "master", "br0", "up")
            if kind == "kernel":
                sh("bridge", "-n", ns, "fdb", "append", peer_mac, "dev", port, "dst",
                   hosts[other].address, "self", "permanent")  # fmt: skip
                sh("ip", "-n", ns, "neigh", "add", peer_ip, "lladdr", peer_mac, "dev", port,
                   "nud", "permanent")  # fmt: skip
                if self.kinds[other] != "kernel" and self.kernel_csum_off:
                    tx_checksum_off(ns, port)
            sh("ip", "-n", ns, "link", "add", "t0", "mtu", str(self.mtu), "type", "veth",
               "peer", "name", "eth0", "netns", task)  # fmt: skip
            sh("ip", "-n", ns, "link", "set", "t0", "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "br0", "up")
            sh("ip", "-n", task, "link", "set", "eth0", "address", task_mac(TASK_IPS[i]),
               "mtu", str(self.mtu), "up")  # fmt: skip
            sh("ip", "-n", task, "addr", "add", f"{TASK_IPS[i]}/{TASK_PREFIX}", "dev", "eth0")

    def stats(self, i: int) -> dict[str, Any]:
        """The latest stats the runner of side i wrote (userspace sides only)."""
        path = self.lab._tmp / f"{self.tag}{i}.json"
        return dict(json.loads(path.read_text()))

    def frames_moved(self) -> int:
        """Inner frames both runners sent to their peers so far (from their stats files,
        written every 0.2 s)."""
        total = 0
        for i in range(len(self.runners)):
            with contextlib.suppress(FileNotFoundError, ValueError):
                total += sum(int(p["tx_frames"]) for p in self.stats(i)["peers"].values())
        return total

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the runners' processes used so far: the userspace
        plane's own cost, which the machine-wide busy share cannot isolate on a shared host."""
        total = 0
        for runner in self.runners:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                fields = Path(f"/proc/{runner.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Stop the runners, every process left in our namespaces (by pid), then the
        namespaces themselves."""
        for runner in self.runners:
            self.lab.stop(runner)
        for ns in self.namespaces:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in out.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()


@contextlib.contextmanager
def two_hosts(mtu: int) -> Iterator[Any]:
    """A NetnsLab with hosts h0, h1 whose underlay links have the given MTU."""
    from support import netns

    reason = netns.available()
    if reason:
        raise SystemExit(f"cannot build the lab: {reason}")
    with netns.NetnsLab() as lab:
        lab.add_host("h0", mtu=mtu)
        lab.add_host("h1", mtu=mtu)
        yield lab


# ---------------------------------------------------------------------------- bench


def iperf(server_ns: str, client_ns: str, dst: str, seconds: float, udp: bool) -> float:
    """Gbit/s (TCP) or received packets/s (UDP, 64-byte payloads) of one iperf3 run."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", dst, "-p", "5201", "-t",
                str(seconds), "--json"]  # fmt: skip
        if udp:
            argv += ["-u", "-l", "64", "-b", "0"]
        out = json.loads(sh(*argv, timeout=seconds + 30))
        end = out["end"]
        if udp:
            s = end["sum"]
            return float(s["packets"] - s["lost_packets"]) / float(s["seconds"])
        return float(end["sum_received"]["bits_per_second"]) / 1e9
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        if server.poll() is None:
            server.kill()
            server.wait()


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


PINGPONG_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5202)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while c.recv(1):
    c.sendall(b"y")
"""
PINGPONG_CLIENT = """
import socket, statistics, sys, time
n = int(sys.argv[2])
c = socket.create_connection((sys.argv[1], 5202), timeout=10)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(50):  # warm up (ARP, the first frames through the planes)
    c.sendall(b"x"); c.recv(1)
rtts = []
for _ in range(n):
    t = time.perf_counter_ns(); c.sendall(b"x"); c.recv(1); rtts.append(time.perf_counter_ns() - t)
print(statistics.median(rtts) / 1000)
"""


def pingpong(server_ns: str, client_ns: str, dst: str, count: int) -> float:
    """Median microseconds of ``count`` 1-byte TCP request/response round trips."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", PINGPONG_SERVER, dst],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        server.stdout.readline()
        out = sh("ip", "netns", "exec", client_ns, sys.executable, "-c", PINGPONG_CLIENT, dst,
                 str(count), timeout=120)  # fmt: skip
        return float(out.strip())
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def bench_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="1 round x 2 s, for CI smoke")
    ap.add_argument("--python", action="store_true", help="also the pure-Python twin (slow)")
    ap.add_argument("--mtu", type=int, default=1500, help="underlay MTU (overlay = MTU - 50)")
    ap.add_argument("--json", help="write the samples here")
    ap.add_argument("--no-sealed", action="store_true", help="leave out the encrypted overlay")
    ap.add_argument("--no-underlay", action="store_true", help="leave out the underlay row")
    ap.add_argument("--burst-prio", type=int, default=None,
                    help="the userspace rows' burst priority, 0 off (default: the plane's)")
    ap.add_argument("--extra", action="append", default=[], metavar="ROW:PRIO",
                    help="one more row: c or sealed with this burst priority, e.g. c:0 "
                         "(named c@0); repeatable, to compare settings in one run")
    ap.add_argument("--only", action="append", default=[], choices=("tcp", "udp64", "rr"),
                    help="measure only these cases (repeatable; default all), e.g. --only rr "
                         "to iterate on the ping-pong")
    ap.add_argument("--rr-count", type=int, default=None,
                    help="ping-pong round trips per round (default 3000, --quick 500)")
    args = ap.parse_args(argv)
    only = set(args.only) or {"tcp", "udp64", "rr"}
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    rr_count = args.rr_count or (500 if args.quick else 3000)
    rows: list[tuple[str, str, int | None, tuple[str, ...]]] = [("kernel", "kernel", None, ())]
    rows += [("c", "c", args.burst_prio, ())]
    rows += [] if args.no_sealed else [("sealed", "sealed", args.burst_prio, ())]
    rows += [("python", "python", None, ())] if args.python else []
    for spec in args.extra:
        kind, _, rest = spec.partition(":")
        prio, *env = rest.split(":")
        if (kind not in ("c", "sealed") or not prio.isdigit() or int(prio) > 99
                or any("=" not in e for e in env)):
            ap.error(f"--extra {spec!r}: expected c:PRIO or sealed:PRIO (PRIO 0..99), then "
                     f"optionally :NAME=VALUE settings for the planes' environment")
        rows.append((f"{kind}@{rest}", kind, int(prio), tuple(env)))
    samples: dict[tuple[str, str], list[float]] = {}
    with two_hosts(args.mtu) as lab:
        overlays: dict[str, Overlay] = {}
        try:
            for n, (name, kind, prio, env) in enumerate(rows):
                plane = "c" if kind == "sealed" else kind
                files = None
                if kind == "sealed":
                    files = (lab._tmp / f"keys{n}-0.json", lab._tmp / f"keys{n}-1.json")
                    raw = os.urandom(36)
                    for f in files:
                        write_keys(f, [(1, raw)], 1, None)
                mtu = args.mtu - 50 - (28 if kind == "sealed" else 0)  # sealing: 28 bytes
                ov = Overlay(lab, (plane, plane), 4096 + n, 4789 + n, mtu, f"o{n}",
                             keys_files=files, burst_prio=prio, env=env)  # fmt: skip
                overlays[name] = ov
                ov.build()
            targets: list[tuple[str, str, str, str]] = [
                ("underlay", lab.hosts["h1"].netns, lab.hosts["h0"].netns, lab.addr("h1"))
            ] if not args.no_underlay else []
            targets += [(k, o.task(1), o.task(0), TASK_IPS[1]) for k, o in overlays.items()]
            for rnd in range(args.rounds):
                for name, srv, cli, dst in targets:
                    for metric, udp in (("tcp_gbps", False), ("udp64_pps", True)):
                        if (name == "python" and udp) or ("udp64" if udp else "tcp") not in only:
                            continue
                        run_ov = overlays.get(name)
                        plane0 = run_ov.cpu_seconds() if run_ov and run_ov.runners else 0.0
                        moved0 = run_ov.frames_moved() if run_ov and run_ov.runners else 0
                        busy0, total0 = cpu_busy()
                        value = iperf(srv, cli, dst, args.duration, udp)
                        busy1, total1 = cpu_busy()
                        if run_ov and run_ov.runners and not udp and value > 0:
                            # the planes' CPU seconds per GB moved (both sides together)
                            gb = value * args.duration / 8
                            samples.setdefault((name, "plane_s_per_gb"), []).append(
                                (run_ov.cpu_seconds() - plane0) / gb)
                        if run_ov and run_ov.runners and udp:
                            # the planes' CPU per inner frame they sent (both sides)
                            time.sleep(0.3)  # the runners' next stats write
                            moved = run_ov.frames_moved() - moved0
                            if moved > 0:
                                samples.setdefault((name, "plane_us_per_frame"), []).append(
                                    (run_ov.cpu_seconds() - plane0) * 1e6 / moved)
                        samples.setdefault((name, metric), []).append(value)
                        print(f"round {rnd + 1} {name:8} {metric:12} {value:,.2f}", flush=True)
                        if not udp and value > 0:
                            # busy cores of the machine during the run, per Gbit/s
                            cores = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
                            samples.setdefault((name, "cpu_per_gbps"), []).append(cores / value)
                    if name != "python" and "rr" in only:
                        rtt = pingpong(srv, cli, dst, rr_count)
                        samples.setdefault((name, "rr_p50_us"), []).append(rtt)
                        print(f"round {rnd + 1} {name:8} {'rr_p50_us':12} {rtt:,.1f}", flush=True)
        finally:
            for ov in overlays.values():
                ov.close()
    med = {key: statistics.median(v) for key, v in samples.items()}
    print(f"\nmedians of {args.rounds} round(s) x {args.duration:g} s, underlay MTU {args.mtu}:")
    for (name, metric), value in sorted(med.items()):
        print(f"  {name:8} {metric:12} {value:>14,.2f}")
    for metric in ("tcp_gbps", "udp64_pps", "rr_p50_us", "cpu_per_gbps", "plane_s_per_gb",
                   "plane_us_per_frame"):
        kern = samples.get(("kernel", metric))
        for user in [row[0] for row in rows if row[0] != "kernel"]:
            vals = samples.get((user, metric))
            if not kern or not vals:
                continue
            # per round: both measured back to back, so machine noise hits both alike
            ratios = [v / k for v, k in zip(vals, kern, strict=False) if k]
            per_round = " ".join(f"{r:.2f}" for r in ratios)
            print(f"ratio {user}/kernel {metric}: median {statistics.median(ratios):.2f}x "
                  f"(rounds: {per_round})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in samples.items()}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "runner":
        sys.exit(runner_main(sys.argv[2:]))
    sys.exit(bench_main(sys.argv[1:]))
