"""bench/mesh.py's own parts: its options, the wrk runner and parser (against real wrk), the
HAProxy and nginx configurations it writes (checked by real haproxy -c and nginx -t), how it
splits a client's load, and the table it prints."""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "mesh.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mesh", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mesh"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


mesh = _load()


# ------------------------------------------------------------------------------- options


def test_quick_is_one_short_round_without_warmup() -> None:
    args = mesh.parse_args(["--quick"])
    assert (args.rounds, args.duration, args.warmup, args.wait) == (1, 2.0, False, 10.0)
    full = mesh.parse_args([])
    assert (full.rounds, full.duration, full.warmup, full.wait) == (3, 5.0, True, 20.0)
    assert (full.dataplane, full.backend, full.direct) == ("kernel", "nginx", "all")
    assert (full.threads, full.connections, full.replicas) == (2, 32, 2)
    # explicit values win over --quick's
    mine = mesh.parse_args(["--quick", "--rounds", "4", "--duration", "3"])
    assert (mine.rounds, mine.duration) == (4, 3.0)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--duration", "0.5"], "--duration 0.5"),
        (["--rounds", "0"], "--rounds 0"),
        (["--replicas", "0"], "--replicas 0"),
        (["--threads", "4", "--connections", "2"], "--threads 4 / --connections 2"),
        (["--wait", "-1"], "--wait -1"),
        (["--dataplane", "dpdk"], "--dataplane"),
        (["--backend", "apache"], "--backend"),
    ],
)
def test_bad_options_are_named(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        mesh.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


# ------------------------------------------------------------------------------- wrk


class _Small(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"x" * 99 + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def small_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Small)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/file"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@needs_wrk
def test_wrk_runs_at_once_and_their_rates_add_up(small_server: str) -> None:
    cmds = [mesh.wrk_argv(t, c, 1, small_server) for t, c in mesh.split_load(2, 4, 2)]
    assert cmds[0] == ["wrk", "-t1", "-c2", "-d1s", "--timeout", "5s", small_server]
    total, errors = mesh.run_wrks(cmds, 1)
    assert total > 0 and errors == ""
    # the warm-up variant only changes the duration
    longer = mesh.wrk_argv(2, 8, 7, small_server)
    assert mesh.warm(longer) == ["wrk", "-t2", "-c8", "-d1s", "--timeout", "5s", small_server]


@needs_wrk
def test_a_wrk_that_cannot_connect_fails_the_run_with_its_command() -> None:
    with pytest.raises(mesh.BenchError) as exc:
        mesh.run_wrks([mesh.wrk_argv(1, 1, 1, "http://127.0.0.1:1/file")], 1)
    assert "wrk -t1 -c1 -d1s --timeout 5s http://127.0.0.1:1/file failed" in str(exc.value)
    assert "Connection refused" in str(exc.value)


def test_parse_wrk_keeps_socket_errors_and_bad_statuses() -> None:
    out = (
        "Running 2s test @ http://198.19.0.4:8080/file\n  2 threads and 32 connections\n"
        "  Socket errors: connect 0, read 3, write 0, timeout 1\n"
        "  Non-2xx or 3xx responses: 7\nRequests/sec:  12345.67\nTransfer/sec:      1.2MB\n"
    )
    rate, errors = mesh.parse_wrk(out)
    assert rate == 12345.67
    assert (
        errors == "Socket errors: connect 0, read 3, write 0, timeout 1; Non-2xx or 3xx "
        "responses: 7"
    )
    with pytest.raises(ValueError, match="Requests/sec"):
        mesh.parse_wrk("unable to connect to 198.19.0.4:8080 Connection refused")


def test_split_load_shares_threads_and_connections() -> None:
    assert mesh.split_load(2, 32, 1) == [(2, 32)]
    assert mesh.split_load(2, 32, 2) == [(1, 16), (1, 16)]
    three = mesh.split_load(2, 32, 3)
    assert three == [(1, 11), (1, 11), (1, 10)] and sum(c for _, c in three) == 32
    # never a run without a thread, nor fewer connections than threads
    assert mesh.split_load(1, 2, 4) == [(1, 1)] * 4


def test_large_file_rates_become_gigabits() -> None:
    assert mesh.value_of(1000.0, "small") == 1000.0
    assert mesh.value_of(1000.0, "large") == pytest.approx(1000 * 1024 * 1024 * 8 / 1e9)


# ------------------------------------------------------------------------------- configs


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")


@needs_root
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_configs_pass_haproxy_check(tmp_path: Path) -> None:
    ns = f"mkt{os.getpid()}hap{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        for text in (
            mesh.haproxy_config("127.0.0.1:18092", ["198.19.1.5:8080", "198.19.1.6:8080"], ns),
            mesh.haproxy_config(
                "198.19.0.1:8092", ["198.19.0.5:8080"], ns, listen_netns=ns, splice=True
            ),
            mesh.haproxy_config("127.0.0.1:18092", ["127.0.0.1:8080"], None),
        ):
            conf = tmp_path / "h.cfg"
            conf.write_text(text)
            r = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    text = mesh.haproxy_config("127.0.0.1:1", ["198.19.1.5:8080"], ns, splice=True)
    assert f"server t0 198.19.1.5:8080 namespace {ns}" in text
    assert "mode tcp" in text and "nbthread 1" in text and "balance roundrobin" in text
    assert "option splice-auto" in text and "check" not in text
    with pytest.raises(ValueError, match="at least one server"):
        mesh.haproxy_config("127.0.0.1:1", [], None)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_config_passes_nginx_test(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(mesh.nginx_config(www, 18080))
    r = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "master_process off;" in conf.read_text()


# ------------------------------------------------------------------------------- table


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(mesh.parse_args(["--quick"])), **kw})


def test_table_shows_ratios_verdicts_and_what_was_not_measured() -> None:
    res = mesh.Results()
    for value in (20000.0, 21000.0):
        res.add("small", "direct", mesh.Sample(value))
    for value in (17000.0, 15000.0):
        res.add("small", "vip", mesh.Sample(value, "Socket errors: connect 0, read 1"))
    res.add("small", "haproxy", mesh.Sample(10000.0))
    res.add("small", "mesh", mesh.Sample(9000.0))
    res.missing["mesh"] = "the published port 198.18.0.10:8091 does not serve: refused"
    text, met = mesh.table(res, _args(rounds=2))
    rows = {line.split("|")[0].strip(): line for line in text.splitlines() if "|" in line}
    vip = rows["VIP vs direct, keep-alive req/s (100 B)"]
    # median 16000 / 20500 = 0.780..., truncated, not rounded
    assert "20.5k req/s" in vip and "16.0k req/s" in vip and "0.78x" in vip and "MISSED" in vip
    assert "0.90x" in rows["mesh vs HAProxy, keep-alive req/s (100 B)"]
    assert "not measured" in rows["VIP vs direct, Gbit/s (1 MiB)"]
    assert "context" in rows["context: HAProxy as the VIP vs direct, req/s (100 B)"]
    assert "vip_small vip/direct per round: 0.85 0.71 (median 0.78)" in text
    assert "small/vip: Socket errors: connect 0, read 1" in text
    assert "NOT MEASURED: mesh: the published port 198.18.0.10:8091" in text
    assert met is False
    good = mesh.Results()
    good.add("large", "direct", mesh.Sample(10.0))
    good.add("large", "vip", mesh.Sample(8.0))
    text, met = mesh.table(good, _args())
    assert met is True and "0.80x | >= 0.8x met" in text


def test_task_addresses_by_network_name() -> None:
    task = {
        "State": "running",
        "DesiredState": "running",
        "Networks": [
            {"Name": "meshbench", "ID": "n1", "Addr": "198.19.0.5/24"},
            {"Name": "ingress", "ID": "n2", "Addr": "198.19.1.5/24"},
        ],
    }
    assert mesh.task_addr(task, "meshbench") == "198.19.0.5"
    assert mesh.task_addr(task, "ingress") == "198.19.1.5"
    assert mesh.task_addr(task, "other") is None
    ended = {**task, "DesiredState": "shutdown"}
    assert mesh.running([task, ended]) == [task]


# ------------------------------------------------------------------------------- gateway case


def _listening(port: int) -> bool:
    """Whether a TCP socket listens on 127.0.0.1:port (state 0A in /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(f)[1:])


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is not installed")
def test_parse_iperf_reads_a_real_iperf3_run_and_names_its_errors() -> None:
    # iperf3 cannot be asked for a free port: take one, wait until the server listens on it (read
    # from /proc/net/tcp, so no probe connection uses up the server), then run the client. No `-1`:
    # a one-off server exits after a client that failed half-way and every retry was refused (CI).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(port) and time.monotonic() < deadline:
            assert server.poll() is None, "iperf3 -s exited before it listened"
            threading.Event().wait(0.05)
        out = ""
        for _ in range(5):
            r = subprocess.run(
                ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "1", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            out = r.stdout
            if r.returncode == 0:
                break
            threading.Event().wait(0.5)
        assert mesh.parse_iperf(out) > 0.01
    finally:
        server.kill()
        server.wait()
    refused = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    with pytest.raises(ValueError, match="iperf3: unable to connect"):
        mesh.parse_iperf(refused.stdout)
    with pytest.raises(ValueError, match="no JSON"):
        mesh.parse_iperf("iperf3: error - something\n")
    with pytest.raises(ValueError, match="sum_received"):
        mesh.parse_iperf('{"end": {}}')


def test_gateway_rows_follow_the_gateway_option() -> None:
    res = mesh.Results()
    for node, task in ((10.0, 8.0), (9.0, 9.0), (8.0, 7.6)):
        res.add(mesh.GW, "node", mesh.Sample(node))
        res.add(mesh.GW, "task", mesh.Sample(task))
    text, met = mesh.table(res, _args(rounds=3, gateway="only"))
    rows = {line.split("|")[0].strip(): line for line in text.splitlines() if "|" in line}
    assert set(rows) == {
        "comparison",
        "gateway: task vs node to the outside, iperf3 Gbit/s",
        "context: gateway reverse (-R, outside to task vs to node), Gbit/s",
    }
    # medians 8.0 / 9.0 = 0.888...: truncated, a miss
    out = rows["gateway: task vs node to the outside, iperf3 Gbit/s"]
    assert "9.00 Gbit/s" in out and "8.00 Gbit/s" in out and "0.88x" in out and "MISSED" in out
    assert "gw_out task/node per round: 0.80 1.00 0.95 (median 0.95)" in text
    assert met is False
    text, _ = mesh.table(res, _args(gateway="off"))
    assert "gateway" not in text.split("\n", 1)[1]
    assert mesh.parse_args(["--quick"]).gateway == "on"
