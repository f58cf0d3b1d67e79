"""A VIP answers on every port, and `meshkit run` on an attachable network, end to end on agents
on namespace hosts (198.18.0.0/24).

`db` declares no port: two replicas (w1, w2) of mesh_echo.py on 5432 and 7001 (TCP and UDP).
From a client task on m1, `db:5432` and `db:7001` answer through the VIP (the nftables DNAT
of m1's overlay namespace), new flows alternate between the two tasks, UDP on an undeclared
port works, and after a scale-down the task that left gets no new flow. Then `meshkit run
--network` on m1 reaches `web` on w1 by name, exit codes come back, -i forwards stdin, a
record without --rm stays in `network inspect`, and a network that is not attachable is
refused with Docker's words.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.labutil import ENV, lab_cluster
from support.meshlab import Cluster
from support.polling import until

pytestmark = pytest.mark.root

ECHO = str(Path(__file__).with_name("mesh_echo.py"))
ASK = """
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
addr = socket.getaddrinfo(host, port, socket.AF_INET)[0][4]
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(b"hi", addr); print(s.recv(200).decode())
else:
    s = socket.create_connection(addr, timeout=3); print(s.makefile().readline().strip())
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with lab_cluster(Cluster, ("m1", "w1", "w2")) as c:
        yield c


def ask(c: Cluster, task: dict[str, Any], host: str, port: int, proto: str = "tcp") -> str:
    r = c.in_task(task, sys.executable, "-c", ASK, host, str(port), proto)
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()[-300:]}"


def node_of(answer: str) -> str:
    return answer.split()[1] if answer.startswith("node ") else answer


def meshkit_run(
    c: Cluster, *args: str, stdin: str = "", host: str = "m1"
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "meshkit", "run", "--host", c.sock(host), *args]
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=90, env=run_env()
    )


def meshkit_popen(c: Cluster, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "meshkit", "run", "--host", c.sock("m1"), *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=run_env())


def run_env() -> dict[str, str]:
    src = str(Path(ECHO).parents[2] / "src")
    return {**ENV, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": src}


def run_on_pty(c: Cluster, *args: str) -> tuple[str, int]:
    """`meshkit run ARGS` on a new pseudo-terminal: (what it wrote there, its exit code)."""
    argv = [sys.executable, "-m", "meshkit", "run", "--host", c.sock("m1"), *args]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(argv[0], argv, run_env())
    out = b""
    try:
        while chunk := os.read(fd, 4096):
            out += chunk
    except OSError:  # EIO: the other side closed
        pass
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


UDP_FLOWS = """
import socket, sys
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((sys.argv[1], int(sys.argv[2])))
    socks.append(s)
def ask(s):
    try:
        s.send(b"hi")
        return s.recv(200).decode().split()[1]
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
print(" ".join(ask(s) for s in socks), flush=True)
sys.stdin.readline()
print(" ".join(ask(s) for s in socks), flush=True)
"""


def open_udp_flows(c: Cluster, task: dict[str, Any], host: str, port: int) -> Any:
    """Two UDP flows from the task to host:port, kept open: prints where each went, then,
    after a line on stdin, where each goes now (or "refused")."""
    pid = c.procs[task["Node"]].popen.pid
    argv = ["nsenter", "-t", str(pid), "-m", "ip", "netns", "exec", f"mk-{task['ID']}",
            sys.executable, "-c", UDP_FLOWS, host, str(port)]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def attached(c: Cluster, name: str) -> str:
    view = json.loads(c.cli_ok("network", "inspect", "vnet"))[0]
    return next((a["State"] for a in view["Attached"] if a["Name"] == name), "")


def test_a_vip_answers_every_port_and_run_reaches_services(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    c.cli_ok("network", "create", "-d", "overlay", "--attachable", "vnet")
    c.cli_ok("network", "create", "-d", "overlay", "closed")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("the web page\n")
    tmp_path.chmod(0o755)
    try:
        c.cli_ok(
            "service", "create", "--name", "db", "--replicas", "2", "--network", "vnet",
            "--constraint", "node.hostname!=m1", "--", "/bin/sh", "-c",
            f"{sys.executable} {ECHO} 7001 & exec {sys.executable} {ECHO} 5432",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "client", "--network", "vnet",
            "--constraint", "node.hostname==m1", "--", "sleep", "3600",
        )  # fmt: skip
        c.cli_ok(
            "service", "create", "--name", "web", "--network", "vnet", "--workdir", str(site),
            "--constraint", "node.hostname==w1", "--", sys.executable, "-m", "http.server", "80",
        )  # fmt: skip
        until(lambda: len(c.running("db")) == 2, 60, "db running")
        client = until(lambda: (r := c.running("client")) and r[0], 60, "client running")
        until(lambda: c.running("web"), 60, "web running")

        # two undeclared ports through the VIP, from another node, spread over both tasks
        first = until(
            lambda: (a := ask(c, client, "db", 5432)).startswith("node ") and a, 30, "db:5432"
        )
        seen = {node_of(first)} | {node_of(ask(c, client, "db", 5432)) for _ in range(5)}
        assert seen == {"w1", "w2"}, seen
        seen7001 = {node_of(ask(c, client, "db", 7001)) for _ in range(6)}
        assert seen7001 == {"w1", "w2"}, seen7001
        assert node_of(ask(c, client, "db", 7001, "udp")) in {"w1", "w2"}
        # the kernel path, and doctor says so
        info = json.loads(c.cli_ok("doctor", "--json"))
        assert info["mesh"]["vip_ports"]["path"] == "nft", info["mesh"]
        assert "VIPs on every port" in c.cli_ok("doctor")

        # a task that leaves gets no new flow, and an open UDP flow to it is refused
        flows = open_udp_flows(c, client, "db", 7001)
        assert flows.stdout is not None
        before = flows.stdout.readline().split()
        assert sorted(before) == ["w1", "w2"], before  # two flows, one per task
        c.cli_ok("service", "scale", "db=1")
        left = until(lambda: (r := c.running("db")) and len(r) == 1 and r[0], 60, "db=1")
        until(
            lambda: {node_of(ask(c, client, "db", 5432)) for _ in range(4)} == {left["Node"]},
            20,
            "only the remaining task answers",
        )
        assert {node_of(ask(c, client, "db", 5432)) for _ in range(6)} == {left["Node"]}
        out, _ = flows.communicate("again\n", timeout=30)
        after = dict(zip(before, out.split(), strict=True))
        gone = ({"w1", "w2"} - {left["Node"]}).pop()
        assert after == {left["Node"]: left["Node"], gone: "refused"}, (before, out)

        # meshkit run on m1: web (on w1) by name, exit codes, stdin
        r = meshkit_run(c, "--network", "vnet", "--rm", "--", "curl", "-sS", "--max-time", "5",
                        "http://web/")  # fmt: skip
        assert r.returncode == 0 and r.stdout == "the web page\n", (r.stdout, r.stderr)
        # ... also from a worker (its agent asks a manager for the address)
        r = meshkit_run(c, "--network", "vnet", "--rm", "--", "curl", "-sS", "--max-time", "5",
                        "http://web/", host="w2")  # fmt: skip
        assert r.returncode == 0 and r.stdout == "the web page\n", (r.stdout, r.stderr)
        r = meshkit_run(c, "--network", "vnet", "--rm", "--", "sh", "-c", "exit 7")
        assert r.returncode == 7, r.stderr
        r = meshkit_run(c, "--network", "vnet", "--rm", "-i", "--", "cat", stdin="hello\n")
        assert r.returncode == 0 and r.stdout == "hello\n", (r.stdout, r.stderr)
        r = meshkit_run(c, "--network", "vnet", "--rm", "--", "no-such-program")
        assert r.returncode == 127 and "not found" in r.stderr, r.stderr
        r = meshkit_run(c, "--network", "vnet", "--name", "kept", "--", "sh", "-c", "exit 3")
        assert r.returncode == 3, r.stderr
        view = json.loads(c.cli_ok("network", "inspect", "vnet"))[0]
        assert view["Attachable"] is True
        kept = [a for a in view["Attached"] if a["Name"] == "kept"]
        assert kept and kept[0]["State"] == "exited" and kept[0]["ExitCode"] == 3, view
        assert all(a["Name"] == "kept" for a in view["Attached"]), view["Attached"]  # --rm ones
        r = meshkit_run(c, "--network", "closed", "--rm", "--", "true")
        assert r.returncode == 125, r.stderr
        assert "network closed not manually attachable" in r.stderr, r.stderr
        ls = c.cli_ok("network", "ls")
        assert any(line.split()[1:] == ["vnet", "overlay", "swarm", "true"]
                   for line in ls.splitlines()), ls  # fmt: skip
        # -t: on the terminal (a pty here); -t without one is refused as Docker does
        out, status = run_on_pty(c, "--network", "vnet", "--rm", "-t", "--", "sh", "-c",
                                 "test -t 0 && test -t 1 && echo on-a-tty")  # fmt: skip
        assert status == 0 and "on-a-tty" in out, out
        r = meshkit_run(c, "--network", "vnet", "--rm", "-t", "--", "true")
        assert r.returncode == 1 and "the input device is not a TTY" in r.stderr, r.stderr
        # Ctrl-C (SIGINT to meshkit run) reaches the command, whose exit code comes back
        p = meshkit_popen(c, "--network", "vnet", "--rm", "--", "sh", "-c",
                          'trap "echo got-int; exit 5" INT; echo ready; '
                          "while :; do sleep 0.2; done")  # fmt: skip
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 5 and p.stdout.read() == "got-int\n"
        # a meshkit run killed outright: its agent detaches it (and ends what it left running)
        p = meshkit_popen(c, "--network", "vnet", "--name", "orphan", "--", "sh", "-c",
                          "echo ready; exec sleep 60")  # fmt: skip
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.kill()
        p.wait(10)
        until(lambda: attached(c, "orphan") == "exited", 20, "orphan detached by the agent")
        view = json.loads(c.cli_ok("network", "inspect", "vnet"))[0]
        # nothing of the runs is left on m1: no namespace of theirs
        nss = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert view["Attached"] and not any(a["ID"] in nss for a in view["Attached"]), nss
    finally:
        for name in ("db", "client", "web"):
            c.rm_service(name)
        c.rm_network("vnet")
        c.rm_network("closed")
