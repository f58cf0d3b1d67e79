"""Hosts as network namespaces, for multi-host tests and benches.

A ``NetnsLab`` makes N "hosts", each a network namespace with ``lo`` and ``eth0``; every
``eth0`` is one end of a veth pair whose other end sits on the bridge ``br0`` of a hub
namespace, so all hosts share one L2 segment (like VMs on one switch). Addresses come from
198.18.0.0/15 only (RFC 2544 benchmarking space): host i gets 198.18.0.(10+i)/24 by default.

Names: every namespace is ``<prefix>-<name>`` with a prefix unique to this lab (``mkt`` +
pid + random hex), so parallel tests and leftovers of a crashed run never collide. Links are
created directly inside the hub and host namespaces, never in the caller's namespace.

``run(host, argv)`` and ``spawn(host, argv)`` run a program on a host through
``ip netns exec`` (which execs the program, so the Popen pid is the program's).
``close()`` (also on leaving the ``with`` block, and from the pytest fixture even when the
test fails) stops every process this lab started and every process still inside its
namespaces, by pid, then deletes the namespaces, which removes their links with them.

Needs root and iproute2; ``available()`` says why not when it cannot work.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")
DEFAULT_SUBNET = "198.18.0.0/24"
HOST_OFFSET = 10  # host i gets the subnet's address number HOST_OFFSET + i
BRIDGE = "br0"
HOST_IF = "eth0"


class NetnsError(Exception):
    """A namespace step failed; the message has the command and what ip said."""


def available() -> str | None:
    """None when network namespaces can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"mkt{os.getpid()}probe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; NetnsError with ip's own words when it fails and check is set."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Host:
    """One host of a lab: its namespace, address, and the hub-side end of its cable."""

    name: str
    netns: str
    address: str
    prefixlen: int
    hub_if: str

    @property
    def cidr(self) -> str:
        """The address with its prefix length (``198.18.0.10/24``)."""
        return f"{self.address}/{self.prefixlen}"


@dataclass
class Spawned:
    """A process started on a host, with its output file."""

    host: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    logfile: Path

    @property
    def pid(self) -> int:
        """The program's pid (``ip netns exec`` execs it)."""
        return self.popen.pid

    def output(self) -> str:
        """What the process wrote so far (stdout and stderr together)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class NetnsLab:
    """N hosts as network namespaces on one bridge; see the module docstring."""

    subnet: str = DEFAULT_SUBNET
    prefix: str = field(default_factory=lambda: f"mkt{os.getpid()}{secrets.token_hex(2)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[Spawned] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check the subnet and make the hub namespace with its bridge."""
        net = ipaddress.ip_network(self.subnet)
        if not net.subnet_of(LAB_NETWORK):  # type: ignore[arg-type]
            raise NetnsError(f"lab subnet {net} is not inside {LAB_NETWORK}")
        self._net = net
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._closed = False
        self.hub = f"{self.prefix}-hub"
        self._made: list[str] = []
        try:
            self._add_netns(self.hub)
            _ip("-n", self.hub, "link", "set", "lo", "up")
            _ip("-n", self.hub, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.hub, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building

    def _add_netns(self, name: str) -> None:
        """Create a namespace and remember it for teardown."""
        _ip("netns", "add", name)
        self._made.append(name)

    def add_host(self, name: str, mtu: int | None = None) -> Host:
        """A new host ``name`` with ``eth0`` on the hub's bridge and the next address."""
        if self._closed:
            raise NetnsError("the lab is closed")
        if name in self.hosts or name == "hub" or not name.isidentifier():
            raise NetnsError(f"invalid or duplicate host name {name!r}")
        index = len(self.hosts)
        address = self._net.network_address + HOST_OFFSET + index
        if address not in self._net or address == self._net.broadcast_address:
            raise NetnsError(f"no address left in {self._net} for host {name}")
        netns = f"{self.prefix}-{name}"
        hub_if = f"v{index}-{name}"[:15]
        self._add_netns(netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", hub_if, "type", "veth", "peer", "name", HOST_IF,
            "netns", netns)  # fmt: skip
        _ip("-n", self.hub, "link", "set", hub_if, "master", BRIDGE)
        if mtu is not None:
            _ip("-n", self.hub, "link", "set", hub_if, "mtu", str(mtu))
            _ip("-n", netns, "link", "set", HOST_IF, "mtu", str(mtu))
        _ip("-n", self.hub, "link", "set", hub_if, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{self._net.prefixlen}", "dev", HOST_IF)
        _ip("-n", netns, "link", "set", HOST_IF, "up")
        host = Host(name, netns, str(address), self._net.prefixlen, hub_if)
        self.hosts[name] = host
        return host

    def add_hosts(self, count: int, stem: str = "h") -> list[Host]:
        """``count`` new hosts named ``<stem>0``, ``<stem>1``, ..."""
        start = len(self.hosts)
        return [self.add_host(f"{stem}{start + i}") for i in range(count)]

    def addr(self, host: str) -> str:
        """A host's address."""
        return self.hosts[host].address

    def disconnect(self, host: str) -> None:
        """Pull a host's cable (its hub-side veth goes down): a network partition."""
        _ip("-n", self.hub, "link", "set", self.hosts[host].hub_if, "down")

    def reconnect(self, host: str) -> None:
        """Plug a host's cable back in."""
        _ip("-n", self.hub, "link", "set", self.hosts[host].hub_if, "up")

    # ------------------------------------------------------------------ running

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``ip netns exec <ns> argv...`` for a host of this lab."""
        if host not in self.hosts:
            raise NetnsError(f"no host {host!r} in this lab (hosts: {', '.join(self.hosts)})")
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to completion; output captured as text.

        With ``check`` a non-zero exit raises NetnsError showing the command's output.
        """
        proc = subprocess.run(
            self._argv(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NetnsError(
                f"{' '.join(argv)} on {host} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Spawned:
        """Start ``argv`` on ``host`` in the background; stopped by pid at teardown."""
        logfile = self._tmp / f"{host}-{len(self.processes)}.log"
        with logfile.open("wb") as out:
            popen = subprocess.Popen(
                self._argv(host, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        spawned = Spawned(host, list(argv), popen, logfile)
        self.processes.append(spawned)
        return spawned

    def stop(self, proc: Spawned, timeout: float = 5.0) -> int | None:
        """Stop one spawned process by pid (SIGTERM, then SIGKILL); its exit status."""
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                proc.popen.wait(timeout)
        return proc.popen.returncode

    def pids(self, host: str | None = None) -> list[int]:
        """Pids of processes inside this lab's namespaces (one host, or all)."""
        names = [self.hosts[host].netns] if host else list(self._made)
        out: list[int] = []
        for ns in names:
            proc = _ip("netns", "pids", ns, check=False)
            out += [int(p) for p in proc.stdout.split() if p.isdigit()]
        return out

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop all processes (ours, then any left in our namespaces, by pid), delete the
        namespaces (their links go with them) and the lab's temporary files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in reversed(self.processes):
            try:
                self.stop(proc)
            except Exception as exc:  # keep tearing down
                errors.append(f"stopping {proc.argv}: {exc}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3.0
            while left and time.monotonic() < deadline:
                left = [p for p in left if _alive(p)]
                if left:
                    time.sleep(0.05)
            if not left:
                break
        for ns in reversed(self._made):
            deleted = _ip("netns", "del", ns, check=False)
            if deleted.returncode != 0 and "No such file" not in deleted.stderr:
                errors.append(f"ip netns del {ns}: {deleted.stderr.strip()}")
        self._made.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
        if errors:
            raise NetnsError("lab teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> NetnsLab:
        """``with NetnsLab() as lab:``: closed on leaving, also on an exception."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear the lab down."""
        self.close()


def _alive(pid: int) -> bool:
    """True while a process exists and is not a zombie we could reap."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True
