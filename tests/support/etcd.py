"""A real etcd (Debian's etcd-server, /usr/bin/etcd) for the tests of the etcd cluster store:
one member on a temporary data dir and free ports, removed afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ETCD = "/usr/bin/etcd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _server_cert(ca: Any, tmp: Path, host: str) -> tuple[Path, Path]:
    """etcd's own certificate: server and client use (its gateway dials etcd's gRPC with it,
    and --client-cert-auth checks it as a client certificate)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    crt, pem = tmp / "server.crt", tmp / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


class Etcd:
    """One etcd member on `host`; `spawn` runs it (in a namespace host, say)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        spawn: Callable[[Sequence[str]], subprocess.Popen[bytes]] | None = None,
        probe: Callable[[str], bool] | None = None,
        tls: bool = False,
    ) -> None:
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix="mketcd-"))
        self.client_port = free_port() if host == "127.0.0.1" else 2379
        self.peer_port = free_port() if host == "127.0.0.1" else 2380
        self._spawn = spawn
        self._probe = probe  # how to ask /health from where etcd runs (a namespace host)
        self.proc: subprocess.Popen[bytes] | None = None
        # with tls: etcd serves HTTPS and asks for a client certificate of the same CA
        self.ca = self.cert = self.key = self.client_cert = self.client_key = ""
        if tls:
            from support import tlscerts

            ca = tlscerts.make_ca(self.dir, "etcd test CA")
            cert, key = _server_cert(ca, self.dir, host)
            ccert, ckey = tlscerts.issue(ca, self.dir, "client", ["meshkit"], client=True)
            self.ca, self.cert, self.key = str(ca.path), str(cert), str(key)
            self.client_cert, self.client_key = str(ccert), str(ckey)

    @property
    def url(self) -> str:
        return f"{'etcds' if self.ca else 'etcd'}://{self.host}:{self.client_port}"

    @property
    def http(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            ETCD,
            "--name", "t",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.http,
            "--advertise-client-urls", self.http,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}",
            "--log-level", "error",
            "--logger", "zap",
        ]  # fmt: skip
        if self.ca:
            argv += [
                "--cert-file", self.cert, "--key-file", self.key,
                "--client-cert-auth", "--trusted-ca-file", self.ca,
            ]  # fmt: skip
        return argv

    def start(self, wait: bool = True) -> None:
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - the child holds it
        if self._spawn is not None:
            self.proc = self._spawn(self.argv())
        else:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        log.close()
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited: {self.log()[-2000:]}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise AssertionError(f"etcd not healthy within {timeout} s: {self.log()[-2000:]}")

    def healthy(self) -> bool:
        if self._probe is not None:
            return self._probe(self.http + "/health")
        ctx = None
        if self.ca:
            ctx = ssl.create_default_context(cafile=self.ca)
            ctx.load_cert_chain(self.client_cert, self.client_key)
        try:
            with urllib.request.urlopen(self.http + "/health", timeout=1, context=ctx) as r:
                return bool(json.load(r).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "etcd.log").read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_etcd(tls: bool = False) -> Iterator[Etcd]:
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} missing (Debian's etcd-server; scripts/install-test-deps)")
    e = Etcd(tls=tls)
    try:
        e.start()
        yield e
    finally:
        e.close()
