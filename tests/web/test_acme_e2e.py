"""Automatic HTTPS end to end: `meshkit web -agree` gets certificates from Debian's pebble
(an ACME test CA, started here on 127.0.0.1 with pebble-challtestsrv as its DNS, every name
-> 127.0.0.1), over HTTP-01 and TLS-ALPN-01 answered by meshkit's own ports; curl checks the
chain with pebble's root. Every process is stopped by pid."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.pebble import Pebble, have_pebble, run_pebble
from support.peers import Proc, free_port, wait_tcp

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not have_pebble(), reason="pebble is not installed"),
]


class Ports:
    def __init__(self) -> None:
        self.http, self.https = free_port(), free_port()


@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest.fixture
def ca(tmp_path: Path, ports: Ports) -> Iterator[Pebble]:
    with run_pebble(tmp_path / "pebble", http_port=ports.http, tls_port=ports.https) as p:
        yield p


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("hello over acme\n")
    return root


def web(
    tmp: Path, text: str, ca_url: str, ports: Ports, trust: Path, *flags: str, **env: str
) -> Proc:
    conf = tmp / "Caddyfile"
    conf.write_text(text)
    argv = [
        sys.executable, "-m", "meshkit", "web", "-quiet", "-conf", str(conf), "-agree",
        "-ca", ca_url, "-http-port", str(ports.http), "-https-port", str(ports.https), *flags,
    ]  # fmt: skip
    proc = Proc(
        argv,
        {"MESHKIT_DATA": str(tmp / "data"), "MESHKIT_ACME_CA_ROOTS": str(trust), **env},
    )
    wait_tcp(ports.https, proc)
    return proc


def wait_log(proc: Proc, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        err = proc.stderr()
        if text in err:
            return err
        if proc.popen.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"never logged {text!r}:\n{proc.stderr()}")


def curl(url: str, port: int, root: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["curl", "-sS", "--http1.1", "--max-time", "10", "--resolve", f"a.test:{port}:127.0.0.1"]
    if root is not None:
        cmd += ["--cacert", str(root)]
    return subprocess.run([*cmd, *args, url], capture_output=True, text=True, timeout=30)


def served_cert(port: int, name: str = "a.test") -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


SITE = "a.test {{\n  root {root}\n}}\nhttp://localhost:{plain} {{\n  root {root}\n}}\n"


def test_http01_certificate_serves_https_and_is_stored_private(
    tmp_path: Path, ca: Pebble, ports: Ports, www: Path
) -> None:
    plain = free_port()
    proc = web(tmp_path, SITE.format(root=www, plain=plain), ca.directory, ports, ca.trust)
    try:
        err = wait_log(proc, "certificate for a.test obtained")
        assert "answering http-01 for a.test" in err
        assert "sites with a host name" not in err  # no plain-HTTP warning when ACME is on
        root = ca.root(tmp_path / "root.pem")
        r = curl(f"https://a.test:{ports.https}/", ports.https, root)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello over acme\n"
        # the http port redirects the site's other requests to https
        r = curl(f"http://a.test:{ports.http}/x?y=1", ports.http, None, "-o", "/dev/null",
                 "-w", "%{http_code} %{redirect_url}")  # fmt: skip
        assert r.stdout == f"301 https://a.test:{ports.https}/x?y=1"
        # a plain site beside it keeps serving
        r = subprocess.run(["curl", "-sS", f"http://localhost:{plain}/"], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        assert r.stdout == "hello over acme\n"
        site = next((tmp_path / "data" / "acme").glob("*/sites/a.test"))
        for f in site.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE(site.stat().st_mode) == 0o700
        assert {f.name for f in site.iterdir()} == {"a.test.crt", "a.test.key", "a.test.json"}
        assert ca.orders() == 1
    finally:
        proc.stop()


def test_tls_alpn01_when_the_http_challenge_is_disabled(
    tmp_path: Path, ca: Pebble, ports: Ports, www: Path
) -> None:
    proc = web(tmp_path, f"a.test {{\n root {www}\n}}\n", ca.directory, ports, ca.trust,
               "-disable-http-challenge")  # fmt: skip
    try:
        err = wait_log(proc, "certificate for a.test obtained")
        assert "answering tls-alpn-01 for a.test" in err and "http-01" not in err
        root = ca.root(tmp_path / "root.pem")
        r = curl(f"https://a.test:{ports.https}/", ports.https, root)
        assert r.returncode == 0 and r.stdout == "hello over acme\n", r.stderr
    finally:
        proc.stop()


def test_restart_reuses_the_stored_certificate(
    tmp_path: Path, ca: Pebble, ports: Ports, www: Path
) -> None:
    text = f"a.test {{\n root {www}\n}}\n"
    proc = web(tmp_path, text, ca.directory, ports, ca.trust)
    try:
        wait_log(proc, "certificate for a.test obtained")
        first = served_cert(ports.https)
    finally:
        proc.stop()
    proc = web(tmp_path, text, ca.directory, ports, ca.trust)
    try:
        wait_log(proc, "serving the stored certificate of a.test")
        root = ca.root(tmp_path / "root.pem")
        r = curl(f"https://a.test:{ports.https}/", ports.https, root)
        assert r.returncode == 0 and r.stdout == "hello over acme\n", r.stderr
        assert served_cert(ports.https) == first
        time.sleep(1)
        assert ca.orders() == 1, ca.log()
        assert "asking" not in proc.stderr()
    finally:
        proc.stop()


def test_renewal_within_the_window_swaps_the_certificate_in_place(
    tmp_path: Path, ca: Pebble, ports: Ports, www: Path
) -> None:
    # pebble's certificates last 5 years: a window of 100 years makes every check renew
    proc = web(tmp_path, f"a.test {{\n root {www}\n}}\n", ca.directory, ports, ca.trust,
               MESHKIT_ACME_RENEW_BEFORE="876000h", MESHKIT_ACME_CHECK_EVERY="2s")  # fmt: skip
    try:
        wait_log(proc, "certificate for a.test obtained")
        first = served_cert(ports.https)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and served_cert(ports.https) == first:
            time.sleep(0.2)
        assert served_cert(ports.https) != first, proc.stderr()
        assert "due for renewal" in proc.stderr()
        assert ca.orders() >= 2
        assert proc.popen.poll() is None  # the same process: no restart
        root = ca.root(tmp_path / "root.pem")
        r = curl(f"https://a.test:{ports.https}/", ports.https, root)
        assert r.returncode == 0 and r.stdout == "hello over acme\n", r.stderr
    finally:
        proc.stop()


def test_a_name_that_fails_validation_does_not_stop_the_others(
    tmp_path: Path, ca: Pebble, ports: Ports, www: Path
) -> None:
    ca.servfail("bad.test")
    text = f"a.test {{\n root {www}\n}}\nbad.test {{\n root {www}\n}}\n"
    proc = web(tmp_path, text, ca.directory, ports, ca.trust)
    try:
        err = wait_log(proc, "no certificate for bad.test")
        err = wait_log(proc, "certificate for a.test obtained")
        line = next(x for x in err.splitlines() if "no certificate for bad.test" in x)
        # the CA's problem document, whole, with the challenge type
        assert "validation of bad.test failed: http-01:" in line
        assert '"type": "urn:ietf:params:acme:error:' in line and "retrying in" in line
        root = ca.root(tmp_path / "root.pem")
        r = curl(f"https://a.test:{ports.https}/", ports.https, root)
        assert r.returncode == 0 and r.stdout == "hello over acme\n", r.stderr
    finally:
        proc.stop()


def test_ca_unreachable_logs_and_serves_the_other_sites(
    tmp_path: Path, ports: Ports, www: Path
) -> None:
    plain = free_port()
    dead = free_port()  # nothing listens there
    trust = tmp_path / "none.pem"
    proc = web(tmp_path, SITE.format(root=www, plain=plain), f"https://127.0.0.1:{dead}/dir",
               ports, trust, "-catimeout", "2s", MESHKIT_ACME_RETRY="1s")  # fmt: skip
    try:
        wait_tcp(plain, proc)
        err = wait_log(proc, "no certificate for a.test")
        line = next(x for x in err.splitlines() if "no certificate for a.test" in x)
        assert f"cannot reach the CA https://127.0.0.1:{dead}/dir" in line
        assert "retrying in 1s" in line
        wait_log(proc, "retrying in 2s")  # backoff doubles
        r = subprocess.run(["curl", "-sS", f"http://localhost:{plain}/"], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        assert r.stdout == "hello over acme\n"
        # the site without a certificate: a TLS alert, never another certificate
        r = curl(f"https://a.test:{ports.https}/", ports.https, None, "-k")
        assert r.returncode != 0 and r.stdout == ""
        assert (
            not any(Path(tmp_path / "data").rglob("*.crt"))
            if os.path.isdir(tmp_path / "data")
            else True
        )
    finally:
        proc.stop()


def test_sigterm_does_not_wait_for_a_silent_ca(tmp_path: Path, ports: Ports, www: Path) -> None:
    silent = socket.socket()  # accepts connections (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/dir"
        proc = web(tmp_path, f"a.test {{\n root {www}\n}}\n", url, ports, tmp_path / "none.pem",
                   "-catimeout", "60s")  # fmt: skip
        try:
            wait_log(proc, "a.test has none; asking")
            time.sleep(0.5)
            started = time.monotonic()
            proc.signal(15)
            assert proc.wait(20) == 0
            assert time.monotonic() - started < 15, proc.stderr()
        finally:
            proc.stop()
    finally:
        silent.close()


def test_a_reload_obtains_certificates_for_new_names(
    tmp_path: Path, ca: Pebble, ports: Ports, www: Path
) -> None:
    text = f"a.test {{\n root {www}\n}}\n"
    proc = web(tmp_path, text, ca.directory, ports, ca.trust)
    try:
        wait_log(proc, "certificate for a.test obtained")
        (tmp_path / "Caddyfile").write_text(text + f"b.test {{\n root {www}\n}}\n")
        proc.signal(10)  # SIGUSR1
        wait_log(proc, "certificate for b.test obtained")
        root = ca.root(tmp_path / "root.pem")
        for name in ("a.test", "b.test"):
            r = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", str(root), "--resolve",
                 f"{name}:{ports.https}:127.0.0.1", f"https://{name}:{ports.https}/"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert r.returncode == 0 and r.stdout == "hello over acme\n", (name, r.stderr)
        assert ca.orders() == 2
    finally:
        proc.stop()
