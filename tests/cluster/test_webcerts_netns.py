"""Certificates in a cluster, end to end: three namespace hosts run agents with `--web` of one
Caddyfile naming site.test, pebble (the ACME test CA) runs on a fourth. One node takes the order
lease and places the only order; the CA's DNS (a small responder in this test) sends the
validation to ANOTHER node, which answers the HTTP-01 challenge from the cluster state; every
node then serves HTTPS for site.test with the same certificate, no node wrote its key to disk,
and a worker started again serves it at once without a new order. Then a node that holds an
order dies: its lease runs out and another node takes the order over."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshkit.net.nsock import NetnsRef, socket_in
from support import netns
from support.labutil import ENV, Lab
from support.polling import until

pytestmark = pytest.mark.root

NAME = "site.test"
NODES = ("m1", "w1", "w2")
CA_PORT, MGMT_PORT, DNS_PORT = 14000, 15000, 8053


class WebLab(Lab):
    """Agents started with `--web` and the test's ACME settings; pebble on host "ca"."""

    caddyfile = ""
    env: dict[str, str] = {}
    last: list[str] = []  # what the last look at the served certificates gave

    def start(self, host: str, *args: str) -> None:
        argv = [sys.executable, "-m", "meshkit", "node", *args, "--web", self.caddyfile]
        argv += ["--data-dir", str(self.data(host)), "--host", self.sock(host)]
        self.procs[host] = self.lab.spawn(host, argv, env={**ENV, **self.env})
        self.wait_up(host)

    def log(self, host: str) -> str:
        return self.procs[host].output()

    def wait_logged(self, host: str, *lines: str) -> str:
        """The host's log once it holds one of `lines`: a certificate is installed (and so
        served) just before the line saying so is written."""
        until(lambda: any(line in self.log(host) for line in lines), 10, f"{lines} in {host}'s log")
        return self.log(host)

    def ordered(self, name: str, hosts: tuple[str, ...] = NODES) -> str:
        """The node that placed an order for `name` ("" : none yet)."""
        return next((h for h in hosts if f"ordered a certificate for {name}" in self.log(h)), "")

    def orders(self) -> int:
        """Orders placed with pebble (its "POST /order-plz" log lines)."""
        return self.log("ca").count("POST /order-plz")

    def served(self, name: str, hosts: tuple[str, ...] = NODES) -> list[str] | None:
        """`IP SHA256 PAGE` of each host's HTTPS for `name`, verified with pebble's root; None
        until every host serves such a certificate."""
        ca, trust, root = self.lab.addr("ca"), self.root / "pebble.crt", self.root / "root.pem"
        got = self.lab.run(
            "ca",
            ["curl", "-sSf", "--cacert", str(trust), "-o", str(root),
             f"https://{ca}:{MGMT_PORT}/roots/0"],
            check=False,
        )  # fmt: skip
        if got.returncode != 0:
            self.last = [got.stderr]
            return None
        addrs = [self.lab.addr(h) for h in hosts]
        r = self.lab.run("ca", [sys.executable, "-c", SERVED, str(root), name, *addrs], check=False)
        self.last = [r.stdout, r.stderr]
        lines = r.stdout.splitlines()
        ok = len(lines) == len(hosts) and all("FAILED" not in line for line in lines)
        return lines if ok else None

    def wait_served(self, name: str, hosts: tuple[str, ...] = NODES) -> list[str]:
        try:
            return list(until(lambda: self.served(name, hosts), 30, f"HTTPS for {name}"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.last}") from None


def site_block(name: str, www: Path, ca_url: str) -> str:
    tls = f"    tls admin@{name} {{\n        ca {ca_url}\n    }}\n"
    return f"https://{name} {{\n    root {www}\n{tls}}}\n"


Answers = dict[str, Callable[[], "str | None"]]
"""Name -> what its A query gets now: an address, or None (no reply: the CA's lookup stalls)."""


def dns_answer(query: bytes, answers: Answers) -> bytes | None:
    """The reply to one DNS query: an A record for the names in `answers`, no records for
    anything else."""
    if len(query) < 17:
        return None
    qid, flags = struct.unpack("!HH", query[:4])
    pos, labels = 12, []
    while pos < len(query) and query[pos]:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    end = pos + 5
    if end > len(query):
        return None
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    question = query[12:end]
    records = b""
    count = 0
    pick = answers.get(".".join(labels).lower())
    if pick is not None and qtype == 1:
        addr = pick()
        if addr is None:
            return None
        records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton(addr)
        count = 1
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, count, 0, 0)
    return header + question + records


@contextlib.contextmanager
def dns_responder(lab: netns.NetnsLab, host: str, answers: Answers) -> Iterator[None]:
    """A UDP DNS server on `host`'s address (a thread of this process, its socket made in the
    host's namespace)."""
    ref = NetnsRef.open_path(f"/run/netns/{lab.hosts[host].netns}", host)
    sock = socket_in(ref, socket.AF_INET, socket.SOCK_DGRAM)
    ref.close()
    sock.setblocking(True)
    sock.settimeout(0.2)
    sock.bind((lab.addr(host), DNS_PORT))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except OSError:
                continue
            reply = dns_answer(query, answers)
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def pebble_cert(c: WebLab, host: str) -> Path:
    """The certificate of pebble's own HTTPS on `host` (what the nodes trust for the CA)."""
    ip = c.lab.addr(host)
    cert, key = c.root / "pebble.crt", c.root / "pebble.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=pebble test", "-addext", f"subjectAltName=IP:{ip}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert


def start_pebble(c: WebLab, host: str, cert: Path) -> None:
    """pebble on `host`, its DNS the test's responder."""
    ip = c.lab.addr(host)
    config = {
        "pebble": {
            "listenAddress": f"{ip}:{CA_PORT}",
            "managementListenAddress": f"{ip}:{MGMT_PORT}",
            "certificate": str(cert),
            "privateKey": str(cert.with_suffix(".key")),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (c.root / "pebble.json").write_text(json.dumps(config))
    c.procs[host] = c.lab.spawn(
        host,
        ["pebble", "-config", str(c.root / "pebble.json"), "-dnsserver", f"{ip}:{DNS_PORT}"],
        env={
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_VA_ALWAYS_VALID": "0",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        },
    )

    def up() -> bool:
        r = c.lab.run(host, ["curl", "-sf", "--cacert", str(cert), f"https://{ip}:{CA_PORT}/dir"],
                      check=False)  # fmt: skip
        return r.returncode == 0

    until(up, 20, "pebble up")


SERVED = """
import hashlib, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
name = sys.argv[2]
for ip in sys.argv[3:]:
    try:
        with socket.create_connection((ip, 443), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
                tls.sendall(f"GET / HTTP/1.1\\r\\nHost: {name}\\r\\n".encode()
                            + b"Connection: close\\r\\n\\r\\n")
                body = b""
                while chunk := tls.recv(65536):
                    body += chunk
        page = body.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip()
        print(ip, hashlib.sha256(der).hexdigest(), page)
    except Exception as exc:
        print(ip, "FAILED", type(exc).__name__, exc)
"""


def test_one_order_and_every_node_serves_the_same_certificate(tmp_path: Path) -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    if not Path("/usr/bin/pebble").exists():
        pytest.skip("needs Debian's pebble")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("same site everywhere\n")
    tmp_path.chmod(0o755)
    with netns.NetnsLab() as nl:
        c = WebLab(nl)
        try:
            for h in (*NODES, "ca"):
                nl.add_host(h)
            ca_url = f"https://{nl.addr('ca')}:{CA_PORT}/dir"
            caddyfile = tmp_path / "Caddyfile"
            caddyfile.write_text(f":8080 {{\n    root {www}\n}}\n")  # no HTTPS yet
            c.caddyfile = str(caddyfile)
            c.env = {
                "MESHKIT_ACME_CA_ROOTS": str(pebble_cert(c, "ca")),
                "MESHKIT_ACME_RETRY": "1s",
                "MESHKIT_ACME_LEASE": "6s",  # extended every 2 s while its holder lives
                "MESHKIT_DATA": str(c.root / "acmedata"),
            }
            answered: list[str] = []

            def at_another_node() -> str:
                # the CA validates at a node that does NOT hold the order
                pick = next(h for h in NODES if h != c.ordered(NAME))
                answered.append(pick)
                return nl.addr(pick)

            answers: Answers = {NAME: at_another_node}
            with dns_responder(nl, "ca", answers):
                # every node and the CA are up when the site asks for HTTPS (a reload)
                c.start_cluster("m1", ("w1", "w2"))
                start_pebble(c, "ca", c.root / "pebble.crt")
                caddyfile.write_text(site_block(NAME, www, ca_url))
                for h in NODES:
                    c.procs[h].popen.send_signal(signal.SIGHUP)
                until(lambda: c.ordered(NAME), 30, "an order")
                lines = c.wait_served(NAME)
                fingerprints = {line.split()[1] for line in lines}
                assert len(fingerprints) == 1, lines
                assert all(line.endswith("same site everywhere") for line in lines), lines
                holder = c.ordered(NAME)
                assert sum(f"ordered a certificate for {NAME}" in c.log(h) for h in NODES) == 1
                assert c.orders() == 1, c.log("ca")[-3000:]
                # the challenge was answered by another node, from the cluster's state
                assert answered and holder not in answered, (holder, answered)
                assert f"answering the HTTP-01 challenge for {NAME}" in c.log(answered[-1])
                no_key_on_disk(c)
                restarted_worker_needs_no_order(c, holder, fingerprints.pop())
                a_dead_holders_order_is_taken_over(c, answers, caddyfile, www, ca_url)
        except BaseException:
            for h in c.procs:  # what each agent and the CA said, for the failure's report
                print(f"--- {h}:\n{c.log(h)[-6000:]}")
            raise
        finally:
            c.close()


def no_key_on_disk(c: WebLab) -> None:
    """No node wrote a certificate or key to the ACME data folder (standalone `meshkit web`
    keeps them there); the only keys in clear in a node's data dir are its own identity's (the
    raft journal and snapshots hold the certificate's key sealed)."""
    assert not (c.root / "acmedata").exists()
    for h in NODES:
        found = subprocess.run(
            ["grep", "-rla", "PRIVATE KEY", str(c.data(h))], capture_output=True, text=True
        )
        keys = [Path(f).relative_to(c.data(h)).as_posix() for f in found.stdout.split()]
        assert all(k.startswith("certs/") for k in keys), (h, keys)


def restarted_worker_needs_no_order(c: WebLab, holder: str, fingerprint: str) -> None:
    """A worker started again serves the cluster's certificate at once: no new order."""
    again = next(h for h in ("w1", "w2") if h != holder)
    c.kill(again)
    c.start(again, "run")
    lines = c.wait_served(NAME)
    assert {line.split()[1] for line in lines} == {fingerprint}, lines
    c.wait_logged(again, f"serving the cluster's certificate of {NAME}")
    assert "ordered a certificate" not in c.log(again)
    assert c.orders() == 1


def a_dead_holders_order_is_taken_over(
    c: WebLab, answers: Answers, caddyfile: Path, www: Path, ca_url: str
) -> None:
    """The workers add a name (SIGHUP); the one that orders it dies while the CA's lookup
    stalls; its lease runs out and the other worker takes the order over."""
    two = "two.test"
    stall = threading.Event()
    stall.set()
    survivor: list[str] = []
    answers[two] = lambda: None if stall.is_set() else c.lab.addr(survivor[0])
    caddyfile.write_text(caddyfile.read_text() + site_block(two, www, ca_url))
    for h in ("w1", "w2"):
        c.procs[h].popen.send_signal(signal.SIGHUP)
    dead = until(lambda: c.ordered(two, ("w1", "w2")), 30, f"an order for {two}")
    survivor.append("w2" if dead == "w1" else "w1")
    c.kill(dead)
    stall.clear()
    lines = c.wait_served(two, (survivor[0],))
    # the survivor ordered it, or found it stored when the dead holder's order had already
    # been committed just before the kill (the store is checked under the lease)
    log = c.wait_logged(
        survivor[0],
        f"certificate for {two} obtained",
        f"serving the cluster's certificate of {two}",
    )
    waited = log.index(f"holds the order for {two}; waiting for its certificate")
    assert waited < log.index(f"this node holds the order for {two}"), log[-3000:]
    assert lines[0].endswith("same site everywhere"), lines
    assert c.orders() == 3  # site.test, the dead holder's, the survivor's
