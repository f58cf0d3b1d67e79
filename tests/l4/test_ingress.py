"""`meshkit ingress` end to end: real backends, curl and sockets as clients.

Every test runs twice: with the compiled fast path and with its pure-Python twin.
"""

from __future__ import annotations

import collections
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.peers import (
    Proc,
    backend_argv,
    free_port,
    ingress_argv,
    nginx_conf,
    wait_stderr,
    wait_tcp,
)

Spawn = Callable[..., Proc]


def curl(port: int, path: str = "/", *extra: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "5", *extra, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def curl_many(port: int, n: int) -> list[str]:
    """n requests, each on a new connection, from one curl process."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-H",
            "Connection: close",
            *[f"http://127.0.0.1:{port}/" for _ in range(n)],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def start_backends(spawn: Spawn, names: list[str], *flags: str) -> dict[str, tuple[int, Proc]]:
    out = {}
    for name in names:
        port = free_port()
        proc = spawn(backend_argv(port, name, *flags))
        out[name] = (port, proc)
    for port, proc in out.values():
        wait_tcp(port, proc)
    return out


def backend_flags(backends: dict[str, tuple[int, Proc]]) -> list[str]:
    return [arg for port, _ in backends.values() for arg in ("--backend", f"127.0.0.1:{port}")]


def start_ingress(spawn: Spawn, env: dict[str, str], *args: str) -> tuple[int, Proc]:
    port = free_port()
    proc = spawn(ingress_argv("--publish", f"127.0.0.1:{port}:80", *args), env)
    wait_tcp(port, proc)
    return port, proc


def http_get(sock: socket.socket, path: str = "/") -> str:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return body.decode().strip()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_round_robin_over_nginx(spawn: Spawn, fastpath_env: dict[str, str], tmp_path: Path) -> None:
    sites = {free_port(): f"n{i}" for i in range(3)}
    conf = nginx_conf(tmp_path, sites)
    nginx = spawn(["nginx", "-p", str(tmp_path), "-c", str(conf)])
    for port in sites:
        wait_tcp(port, nginx)
    args = [arg for port in sites for arg in ("--backend", f"127.0.0.1:{port}")]
    port, _ = start_ingress(spawn, fastpath_env, *args)
    counts = collections.Counter(curl_many(port, 60))
    assert counts == {"n0": 20, "n1": 20, "n2": 20}


def test_weighted_round_robin_from_file(
    spawn: Spawn, fastpath_env: dict[str, str], tmp_path: Path
) -> None:
    b = start_backends(spawn, ["a", "b"])
    f = tmp_path / "backends"
    f.write_text(f"# two backends\n127.0.0.1:{b['a'][0]} weight=3\n127.0.0.1:{b['b'][0]}\n")
    port, _ = start_ingress(spawn, fastpath_env, "--backends-file", str(f))
    assert collections.Counter(curl_many(port, 40)) == {"a": 30, "b": 10}


def test_killed_backend_leaves_and_rejoins(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["a", "b", "c"])
    args = backend_flags(b)
    interval, fall, rise = 0.2, 2, 2
    port, ing = start_ingress(
        spawn,
        fastpath_env,
        *args,
        "--health-interval",
        f"{interval}s",
        "--health-timeout",
        "0.2s",
        "--fall",
        str(fall),
        "--rise",
        str(rise),
    )
    assert set(curl_many(port, 9)) == {"a", "b", "c"}
    b_port, b_proc = b["b"]
    b_proc.stop()
    # Requests in the window before the probes notice are retried on another backend.
    assert set(curl_many(port, 6)) <= {"a", "c"}
    wait_stderr(ing, "is down")
    time.sleep(fall * interval)
    assert set(curl_many(port, 30)) == {"a", "c"}
    proc = spawn(backend_argv(b_port, "b"))
    wait_tcp(b_port, proc)
    wait_stderr(ing, "is up")
    assert set(curl_many(port, 9)) == {"a", "b", "c"}


def test_every_request_succeeds_when_backend_dies_mid_run(
    spawn: Spawn, fastpath_env: dict[str, str]
) -> None:
    b = start_backends(spawn, ["a", "b"])
    args = backend_flags(b)
    port, _ = start_ingress(spawn, fastpath_env, *args, "--health-interval", "10s")
    b["a"][1].stop()
    # No probe has run yet: passive failures and retries alone keep every request whole.
    assert curl_many(port, 20) == ["b"] * 20


def test_maglev_keeps_a_client_on_one_backend_and_retries_elsewhere(
    spawn: Spawn, fastpath_env: dict[str, str]
) -> None:
    b = start_backends(spawn, ["a", "b", "c"])
    args = backend_flags(b)
    port, _ = start_ingress(spawn, fastpath_env, *args, "--policy", "maglev",
                            "--health-interval", "10s", "--fall", "100")
    names = set(curl_many(port, 10))
    assert len(names) == 1  # one client address, one backend
    (chosen,) = names
    b[chosen][1].stop()
    # Maglev keeps choosing the dead backend; each connect retry must go to another one.
    after = curl_many(port, 10)
    assert len(after) == 10 and chosen not in after


def test_passively_failed_backend_gets_another_try(spawn: Spawn,
                                                    fastpath_env: dict[str, str]) -> None:
    """With no active probe (--health-interval 0s) a refused backend must not stay out forever."""
    b = start_backends(spawn, ["a", "b"])
    args = backend_flags(b)
    port, ing = start_ingress(spawn, fastpath_env, *args, "--health-interval", "0s",
                              "--fall", "1", "--fail-timeout", "1s")
    a_port, a_proc = b["a"]
    a_proc.stop()
    assert set(curl_many(port, 4)) == {"b"}
    wait_stderr(ing, "is down")
    proc = spawn(backend_argv(a_port, "a"))
    wait_tcp(a_port, proc)
    wait_stderr(ing, "back in rotation")
    assert set(curl_many(port, 4)) == {"a", "b"}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_reaches_backend(
    spawn: Spawn, fastpath_env: dict[str, str], version: str
) -> None:
    b = start_backends(spawn, ["pp"], "--proxy-protocol")
    port, _ = start_ingress(
        spawn, fastpath_env, "--backend", f"127.0.0.1:{b['pp'][0]}", "--proxy-protocol", version
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local_port = s.getsockname()[1]
        s.connect(("127.0.0.1", port))
        assert http_get(s) == f"pp 127.0.0.1:{local_port}"
        # Keep-alive: the header is sent once, the second request still works.
        assert http_get(s) == f"pp 127.0.0.1:{local_port}"


def test_sighup_reloads_backends_file_without_dropping_flows(
    spawn: Spawn, fastpath_env: dict[str, str], tmp_path: Path
) -> None:
    b = start_backends(spawn, ["a", "c"])
    f = tmp_path / "backends"
    f.write_text(f"127.0.0.1:{b['a'][0]}\n")
    port, ing = start_ingress(spawn, fastpath_env, "--backends-file", str(f))
    with socket.create_connection(("127.0.0.1", port)) as kept:
        assert http_get(kept) == "a"
        f.write_text(f"127.0.0.1:{b['c'][0]}\n")
        ing.signal(signal.SIGHUP)
        wait_stderr(ing, "reloaded")
        assert set(curl_many(port, 5)) == {"c"}
        assert http_get(kept) == "a"  # the open flow was not dropped
        # An empty file (caught half-written, most often) keeps the running set too.
        f.write_text("# nothing yet\n")
        ing.signal(signal.SIGHUP)
        wait_stderr(ing, "no backends in it")
        assert set(curl_many(port, 3)) == {"c"}
        # A broken file keeps the running set and says why.
        f.write_text("127.0.0.1:notaport\n")
        ing.signal(signal.SIGHUP)
        wait_stderr(ing, f"{f}:1")
        assert "reload failed" in ing.stderr()
        assert set(curl_many(port, 3)) == {"c"}
        assert http_get(kept) == "a"


def test_half_close_keeps_the_other_direction(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["h"])
    port, _ = start_ingress(spawn, fastpath_env, "--backend", f"127.0.0.1:{b['h'][0]}")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /halfclose HTTP/1.1\r\nHost: t\r\n\r\n" + b"x" * 100_000)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.endswith(b"h got 100000\n")


def test_udp_replies_come_from_published_address(
    spawn: Spawn, fastpath_env: dict[str, str]
) -> None:
    ports = {name: free_port(socket.SOCK_DGRAM) for name in ("u1", "u2")}
    for name, p in ports.items():
        proc = spawn(backend_argv(p, name, "--udp"))
        wait_stderr_or_ready(proc)
    pub = free_port(socket.SOCK_DGRAM)
    args = [arg for p in ports.values() for arg in ("--backend", f"127.0.0.1:{p}")]
    ing = spawn(ingress_argv("--publish", f"127.0.0.1:{pub}:53/udp", *args), fastpath_env)
    wait_stderr(ing, "listening")
    seen = collections.Counter()
    for i in range(4):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            for j in range(3):
                c.sendto(f"q{i}.{j}".encode(), ("127.0.0.1", pub))
                data, addr = c.recvfrom(2048)
                assert addr == ("127.0.0.1", pub)
                name, _, echo = data.decode().partition(":")
                assert echo == f"q{i}.{j}"
                seen[(i, name)] += 1
    # Each client's flow stays on one backend; clients alternate between the two.
    assert sorted(seen.values()) == [3, 3, 3, 3]
    assert {name for (_, name) in seen} == {"u1", "u2"}


def wait_stderr_or_ready(proc: Proc) -> None:
    # backend_server prints "ready" on stdout, which the tests discard; give it a moment.
    time.sleep(0.5)
    assert proc.popen.poll() is None, proc.stderr()


def test_idle_flows_are_closed(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["a"])
    mport = free_port()
    port, _ = start_ingress(spawn, fastpath_env, "--backend", f"127.0.0.1:{b['a'][0]}",
                            "--idle-timeout", "1s", "--metrics", f"127.0.0.1:{mport}")
    with socket.create_connection(("127.0.0.1", port)) as s:
        assert http_get(s) == "a"
        s.settimeout(10)
        started = time.monotonic()
        assert s.recv(100) == b""  # the ingress closed the idle flow
        assert time.monotonic() - started < 5
    pub = free_port(socket.SOCK_DGRAM)
    uport = free_port(socket.SOCK_DGRAM)
    wait_stderr_or_ready(spawn(backend_argv(uport, "u", "--udp")))
    mp = free_port()
    ing = spawn(ingress_argv("--publish", f"127.0.0.1:{pub}:53/udp", "--backend",
                             f"127.0.0.1:{uport}", "--idle-timeout", "1s", "--metrics",
                             f"127.0.0.1:{mp}"), fastpath_env)
    wait_stderr(ing, "listening")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(b"x", ("127.0.0.1", pub))
        assert c.recvfrom(100)[0] == b"u:x"

    def active() -> int:
        line = next(x for x in curl(mp, "/metrics").splitlines()
                    if x.startswith("meshkit_ingress_flows_active"))
        return int(line.rsplit(" ", 1)[1])

    assert active() == 1
    deadline = time.monotonic() + 5
    while active() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active() == 0  # the UDP flow expired


def test_udp_refusals_do_not_take_out_tcp_on_the_same_port(
    spawn: Spawn, fastpath_env: dict[str, str]
) -> None:
    """iperf3's case: TCP control and UDP data on one port are two services."""
    b = start_backends(spawn, ["t"])  # TCP only: UDP to this port is refused by ICMP
    bport = b["t"][0]
    pub = free_port()
    ing = spawn(ingress_argv("--publish", f"127.0.0.1:{pub}:{bport}/tcp",
                             "--publish", f"127.0.0.1:{pub}:{bport}/udp",
                             "--backend", "127.0.0.1", "--fall", "1"), fastpath_env)
    wait_tcp(pub, ing)
    with socket.create_connection(("127.0.0.1", pub)) as kept:
        assert http_get(kept) == "t"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for _ in range(5):
                c.sendto(b"x", ("127.0.0.1", pub))
                time.sleep(0.05)
        wait_stderr(ing, f"127.0.0.1:{bport}/udp is down")
        assert http_get(kept) == "t"  # the TCP flow was not closed
        assert curl_many(pub, 3) == ["t"] * 3
    assert f"127.0.0.1:{bport} is down" not in ing.stderr()


def test_metrics_count_flows_per_backend(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["a", "b"])
    mport = free_port()
    args = backend_flags(b)
    port, _ = start_ingress(spawn, fastpath_env, *args, "--metrics", f"127.0.0.1:{mport}")
    curl_many(port, 10)
    text = curl(mport, "/metrics")
    totals = []
    for name in ("a", "b"):
        label = f'backend="127.0.0.1:{b[name][0]}"'
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("meshkit_ingress_flows_total") and label in x
        )
        totals.append(int(line.rsplit(" ", 1)[1]))
        up = next(
            x
            for x in text.splitlines()
            if x.startswith("meshkit_ingress_backend_up") and label in x
        )
        assert up.endswith(" 1")
    # The 10 requests plus the connect that waited for the port to open, in round robin.
    assert sorted(totals) == [5, 6]
    assert "meshkit_ingress_bytes_total" in text
    assert curl(mport, "/nope", "-o", "/dev/null", "-w", "%{http_code}") == "404"


def test_sigterm_lets_open_flows_finish(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["a"])
    port, ing = start_ingress(spawn, fastpath_env, "--backend", f"127.0.0.1:{b['a'][0]}")
    with socket.create_connection(("127.0.0.1", port)) as kept:
        assert http_get(kept) == "a"
        ing.signal(signal.SIGTERM)
        wait_stderr(ing, "draining")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert http_get(kept) == "a"
    assert ing.wait(10) == 0


def test_max_conns_queues_instead_of_refusing(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["a"])
    port, _ = start_ingress(
        spawn, fastpath_env, "--backend", f"127.0.0.1:{b['a'][0]}", "--max-conns", "1"
    )
    with socket.create_connection(("127.0.0.1", port)) as first:
        assert http_get(first) == "a"
        second = socket.create_connection(("127.0.0.1", port))
        second.settimeout(0.5)
        second.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(socket.timeout):
            second.recv(100)  # waits in the backlog while the first flow is open
    second.settimeout(5)
    with second:
        data = second.recv(4096)
    assert data.endswith(b"a\n")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_through_ingress_has_no_errors(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    b = start_backends(spawn, ["a", "b"])
    args = backend_flags(b)
    port, _ = start_ingress(spawn, fastpath_env, *args)
    out = subprocess.run(
        ["wrk", "-t1", "-c20", "-d1s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "Socket errors" not in out.stdout, out.stdout
    assert "Non-2xx" not in out.stdout, out.stdout


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "flag", "code"),
    [
        (["--publish", "80", "--backend", "127.0.0.1"], "--publish", 2),
        (["--publish", "8080:99999", "--backend", "127.0.0.1"], "--publish", 2),
        (["--publish", "8080:80/sctp", "--backend", "127.0.0.1"], "--publish", 2),
        (["--publish", "8080:80", "--backend", "127.0.0.1", "--policy", "fastest"], "--policy", 2),
        (["--publish", "8080:80", "--backend", "no-such-host.invalid"], "--backend", 2),
        (
            ["--publish", "8080:80", "--backend", "127.0.0.1", "--health-interval", "2"],
            "--health-interval",
            2,
        ),
        (["--publish", "8080:80"], "--backend", 2),
        (
            ["--publish", "8080:80", "--backends-file", "/nonexistent/backends"],
            "/nonexistent/backends",
            1,
        ),
    ],
)
def test_bad_input_names_the_flag(args: list[str], flag: str, code: int) -> None:
    out = run_cli("ingress", *args)
    assert out.returncode == code, out.stderr
    assert flag in out.stderr
    assert "Traceback" not in out.stderr


def test_empty_backends_file_is_refused_at_start(tmp_path: Path) -> None:
    f = tmp_path / "backends"
    f.write_text("\n# none\n")
    out = run_cli("ingress", "--publish", "8080:80", "--backends-file", str(f))
    assert out.returncode == 1
    assert f"{f}: no backends" in out.stderr and "Traceback" not in out.stderr


def test_ipv6_publish_and_backend(spawn: Spawn, fastpath_env: dict[str, str]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    bport = free_port()
    backend = spawn([*backend_argv(bport, "six", "--proxy-protocol"), "--host", "::1"])
    wait_tcp(bport, backend, host="::1")
    ing = spawn(ingress_argv("--publish", f"[::1]:{port}:80", "--backend", f"[::1]:{bport}",
                             "--proxy-protocol", "v2"), fastpath_env)
    wait_tcp(port, ing, host="::1")
    with socket.socket(socket.AF_INET6) as s:
        s.connect(("::1", port))
        local_port = s.getsockname()[1]
        assert http_get(s) == f"six ::1:{local_port}"


def test_port_in_use_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_cli("ingress", "--publish", f"127.0.0.1:{port}:80", "--backend", "127.0.0.1")
    assert out.returncode == 2
    assert "--publish" in out.stderr and "already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_version_and_module_entry() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("meshkit ")
    assert run_cli("no-such-command").returncode == 2
