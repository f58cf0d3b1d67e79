"""Debian's pebble (an ACME test CA) and pebble-challtestsrv (its DNS: every name -> 127.0.0.1)
for automatic-HTTPS tests, on 127.0.0.1 ports of their own, stopped by pid.

    with run_pebble(tmp, http_port=H, tls_port=T) as ca:
        ca.directory           # https://127.0.0.1:P/dir   (pebble's own TLS: ca.trust)
        ca.root(tmp / "r.pem") # the root of the certificates it issues (management API)
        ca.orders()            # how many orders it has seen (its log)
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.peers import Proc, free_port, wait_tcp

__all__ = ["Pebble", "have_pebble", "run_pebble"]


def have_pebble() -> bool:
    return bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))


@dataclass
class Pebble:
    directory: str
    trust: Path  # verifies pebble's own HTTPS (MESHKIT_ACME_CA_ROOTS)
    mgmt: int
    proc: Proc
    out: Path  # pebble's stdout: its log of orders and issued certificates
    dns_mgmt: int = 0  # pebble-challtestsrv's management API (e.g. /set-servfail)

    def servfail(self, host: str) -> None:
        """DNS answers SERVFAIL for `host`: its validation fails."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.dns_mgmt}/set-servfail",
            data=json.dumps({"host": host}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):
            pass

    def root(self, dest: Path) -> Path:
        ctx = ssl.create_default_context(cafile=str(self.trust))
        url = f"https://127.0.0.1:{self.mgmt}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            dest.write_bytes(r.read())
        return dest

    def intermediate(self) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) of the intermediate that signs the certificates
        pebble issues (management API), to sign OCSP answers as the issuer."""
        ctx = ssl.create_default_context(cafile=str(self.trust))
        out = []
        for what in ("intermediates", "intermediate-keys"):
            url = f"https://127.0.0.1:{self.mgmt}/{what}/0"
            with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                out.append(r.read())
        return out[0], out[1]

    def log(self) -> str:
        return self.out.read_text(errors="replace") + self.proc.stderr()

    def orders(self) -> int:
        """Orders placed with pebble (its "POST /order-plz" log lines)."""
        return self.log().count("POST /order-plz")


@contextmanager
def run_pebble(
    tmp: Path,
    *,
    http_port: int,
    tls_port: int,
    env: dict[str, str] | None = None,
    ocsp_url: str = "",
) -> Iterator[Pebble]:
    """`ocsp_url`: the OCSP responder pebble names in its certificates' AIA (it has none of
    its own; a test answers with the intermediate's key, Pebble.intermediate())."""
    tmp.mkdir(parents=True, exist_ok=True)
    cert, key = tmp / "pebble.crt", tmp / "pebble.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=pebble test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    port, mgmt, dns, chall_mgmt = free_port(), free_port(), free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": ocsp_url,
            "externalAccountBindingRequired": False,
        }
    }
    (tmp / "pebble.json").write_text(json.dumps(config))
    dns_srv = Proc(
        [
            "pebble-challtestsrv",
            "-dns01", f"127.0.0.1:{dns}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{chall_mgmt}",
            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        ]
    )  # fmt: skip
    pebble: Proc | None = None
    out = tmp / "pebble.out"
    out_file = out.open("wb")
    try:
        wait_tcp(chall_mgmt, dns_srv)
        pebble = Proc(
            ["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
            {
                "PEBBLE_VA_NOSLEEP": "1",
                "PEBBLE_VA_ALWAYS_VALID": "0",
                "PEBBLE_WFE_NONCEREJECT": "0",
                "PEBBLE_AUTHZREUSE": "0",
                **(env or {}),
            },
            stdout=out_file.fileno(),
        )
        wait_tcp(port, pebble)
        wait_tcp(mgmt, pebble)
        yield Pebble(f"https://127.0.0.1:{port}/dir", cert, mgmt, pebble, out, chall_mgmt)
    finally:
        if pebble is not None:
            pebble.stop()
        dns_srv.stop()
        out_file.close()
