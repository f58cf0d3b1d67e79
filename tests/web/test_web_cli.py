"""`meshkit web` as a user runs it: real processes, curl as the client, signals."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.peers import free_port

MESHKIT = [sys.executable, "-m", "meshkit"]


class Web:
    """A `meshkit web` process with its stderr in a file, stopped by pid."""

    def __init__(self, args: list[str], cwd: Path, stdin_text: str | None = None) -> None:
        self.args = args
        self.err = tempfile.NamedTemporaryFile(prefix="meshkit-web-", suffix=".err")  # noqa: SIM115
        self.out = tempfile.NamedTemporaryFile(prefix="meshkit-web-", suffix=".out")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [*MESHKIT, "web", *args],
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=self.out,
            stderr=self.err,
        )
        if stdin_text is not None:
            assert self.popen.stdin is not None
            self.popen.stdin.write(stdin_text.encode())
            self.popen.stdin.close()

    def stderr(self) -> str:
        return Path(self.err.name).read_text(errors="replace")

    def stdout(self) -> str:
        return Path(self.out.name).read_text(errors="replace")

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"meshkit web exited {self.popen.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"not listening on {port}: {self.stderr()}")

    def wait_log(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stderr().count(text) >= count:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never logged {text!r} x{count}: {self.stderr()}")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self.err.close()
        self.out.close()


@pytest.fixture
def web() -> Iterator[type[Web]]:
    started: list[Web] = []

    class Tracked(Web):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for w in started:
        w.stop()


def curl(port: int, path: str = "/", host: str | None = None, *flags: str) -> tuple[int, str]:
    argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]
    if host is not None:
        argv += ["-H", f"Host: {host}"]
    out = subprocess.run(
        [*argv, *flags, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHKIT, "web", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("home\n")
    (tmp_path / "www" / "other.html").write_text("other\n")
    return tmp_path


# --- starting up ----------------------------------------------------------------------------


def test_default_site_serves_the_working_folder(web: type[Web], site: Path) -> None:
    port = free_port()
    w = web(["-port", str(port)], site / "www")
    w.wait_port(port)
    assert curl(port, "/") == (200, "home\n")
    assert curl(port, "/other.html", "anything.test") == (200, "other\n")
    assert f"http://:{port}" in w.stdout()
    assert "listening on 0.0.0.0:" in w.stderr()


def test_default_site_without_index_answers(web: type[Web], tmp_path: Path) -> None:
    port = free_port()
    w = web(["-port", str(port)], tmp_path)
    w.wait_port(port)
    code, body = curl(port, "/")
    assert code == 200  # the welcome page, not a bare 404
    assert "meshkit web is running" in body and "Caddyfile" in body
    assert str(tmp_path) in body  # it says which folder is served


def test_first_run_from_the_story(web: type[Web], tmp_path: Path) -> None:
    # STORY.md part 2: run it in a folder, get a welcome page, drop in a file, fetch it
    port = free_port()
    w = web(["-port", str(port)], tmp_path)
    w.wait_port(port)
    assert "welcome" not in curl(port, "/missing.txt")[1].lower()
    assert curl(port, "/missing.txt")[0] == 404
    (tmp_path / "foo.txt").write_text("foo\n")
    assert curl(port, "/foo.txt") == (200, "foo\n")
    (tmp_path / "index.html").write_text("<h1>mine</h1>\n")
    assert curl(port, "/") == (200, "<h1>mine</h1>\n")  # the welcome page steps aside


def test_root_flag(web: type[Web], site: Path) -> None:
    port = free_port()
    w = web(["-port", str(port), "-root", str(site / "www")], site)
    w.wait_port(port)
    assert curl(port, "/other.html") == (200, "other\n")


def test_positional_directive_lines(web: type[Web], site: Path) -> None:
    port = free_port()
    w = web(["--port", str(port), "root www", "index other.html"], site)
    w.wait_port(port)
    assert curl(port, "/") == (200, "other\n")


def test_caddyfile_in_the_working_folder(web: type[Web], site: Path) -> None:
    port = free_port()
    (site / "Caddyfile").write_text(f":{port}\nroot www\nindex other.html\n")
    w = web([], site)
    w.wait_port(port)
    assert curl(port, "/") == (200, "other\n")
    assert curl(port, "/Caddyfile")[0] == 404  # never served, even inside the root


def test_conf_file_with_virtual_hosts(web: type[Web], site: Path) -> None:
    port = free_port()
    (site / "b").mkdir()
    (site / "b" / "index.html").write_text("b site\n")
    conf = site / "sites.caddy"
    conf.write_text(
        f"a.test:{port} {{\n  root {site / 'www'}\n}}\n"
        f"b.test:{port}, *.b.test:{port} {{\n  root {site / 'b'}\n}}\n"
    )
    w = web(["-conf", str(conf)], Path("/"))
    w.wait_port(port)
    assert curl(port, "/", "a.test") == (200, "home\n")
    assert curl(port, "/", f"b.test:{port}") == (200, "b site\n")
    assert curl(port, "/", "x.b.test") == (200, "b site\n")
    assert curl(port, "/", "c.test") == (404, "404 Not Found\n")


def test_path_prefix_sites(web: type[Web], site: Path) -> None:
    port = free_port()
    (site / "api" / "api").mkdir(parents=True)
    (site / "api" / "api" / "x.txt").write_text("from api\n")
    (site / "www" / "api").mkdir()
    (site / "www" / "api" / "x.txt").write_text("from www\n")
    conf = site / "Caddyfile"
    conf.write_text(
        f"127.0.0.1:{port}/api {{\n  root {site / 'api'}\n}}\n"
        f"127.0.0.1:{port} {{\n  root {site / 'www'}\n}}\n"
    )
    w = web([f"-conf={conf}"], site)
    w.wait_port(port)
    assert curl(port, "/api/x.txt", "127.0.0.1") == (200, "from api\n")
    assert curl(port, "/") == (200, "home\n")
    assert curl(port, "/other.html") == (200, "other\n")


def test_conf_stdin(web: type[Web], site: Path) -> None:
    port = free_port()
    w = web(["-conf", "stdin"], site, stdin_text=f":{port} {{\n  root www\n}}\n")
    w.wait_port(port)
    assert curl(port, "/") == (200, "home\n")


def test_several_ports(web: type[Web], site: Path) -> None:
    p1, p2 = free_port(), free_port()
    (site / "Caddyfile").write_text(
        f":{p1} {{\n root www\n}}\n:{p2} {{\n root www\n index other.html\n}}\n"
    )
    w = web([], site)
    w.wait_port(p1)
    w.wait_port(p2)
    assert curl(p1, "/") == (200, "home\n")
    assert curl(p2, "/") == (200, "other\n")


# --- -validate and mistakes -----------------------------------------------------------------


def test_validate_ok(site: Path) -> None:
    (site / "Caddyfile").write_text(":8080 {\n  root www\n}\n")
    r = run(["-validate"], site)
    assert (r.returncode, r.stdout) == (0, "Caddyfile is valid\n"), r.stderr


def test_validate_lists_every_error(site: Path) -> None:
    conf = site / "bad.caddy"
    conf.write_text(
        "https://a.test {\n  root www\n}\n:8080 {\n  gzp\n  index\n  root /a /b\n}\n:8080 {\n}\n"
    )
    r = run(["-validate", "-conf", str(conf)], site)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 5, r.stderr
    assert (
        f"Error: {conf}:1 - site address 'https://a.test': it needs a certificate: add " in r.stderr
        and "or -agree for one from the ACME CA (automatic HTTPS (ACME) is not on)" in r.stderr
    )
    assert f"Error: {conf}:5 - unknown directive 'gzp'" in r.stderr
    assert f"Error: {conf}:9 - duplicate site address ':8080'" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_json(site: Path) -> None:
    r = run(["-validate", "-json", "-port", "8081", "root www"], site)
    assert r.returncode == 0, r.stderr
    assert '"port": 8081' in r.stdout and '"root": "' in r.stdout


def test_validate_stdin(site: Path) -> None:
    r = run(["-validate", "-conf", "stdin"], site, stdin=":80\nbogus\n")
    assert r.returncode == 1
    assert "Error: stdin:2 - unknown directive 'bogus'" in r.stderr


def test_start_with_errors_exits_1(site: Path) -> None:
    (site / "Caddyfile").write_text(":8080\nroot www\ngzp\nbrowze\n")
    r = run([], site)
    assert r.returncode == 1
    assert "Caddyfile:3 - unknown directive 'gzp'" in r.stderr
    assert "Caddyfile:4 - unknown directive 'browze'" in r.stderr
    assert "Traceback" not in r.stderr


def test_https_without_certificate_is_refused(site: Path) -> None:
    r = run(["-conf", "stdin"], site, stdin="https://example.test {\n}\n")
    assert r.returncode == 1 and "automatic HTTPS (ACME) is not on" in r.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["-port", "abc"], "-port"),
        (["-port", "70000"], "-port"),
        (["-conf", "/nonexistent/Caddyfile"], "-conf"),
        (["-conf", "x", "browse"], "-conf"),
        (["-grace", "soon"], "-grace"),
        (["-host", "bad host"], "-host"),
    ],
)
def test_flag_errors(site: Path, args: list[str], flag: str) -> None:
    r = run(args, site)
    assert r.returncode == 2, r.stderr
    assert flag in r.stderr and "Traceback" not in r.stderr


def test_port_in_use(site: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run(["-port", str(port)], site)
    assert r.returncode == 1 and f"cannot listen on 0.0.0.0:{port}" in r.stderr


# --- signals --------------------------------------------------------------------------------


def keepalive_get(conn: http.client.HTTPConnection, path: str, host: str = "x.test") -> str:
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    return f"{resp.status} {resp.read().decode()}"


def test_reload_keeps_connections_and_rejects_bad_configs(web: type[Web], site: Path) -> None:
    port = free_port()
    conf = site / "Caddyfile"
    conf.write_text(f":{port} {{\n  root www\n}}\n")
    pidfile = site / "web.pid"
    w = web(["-pidfile", str(pidfile)], site)
    w.wait_port(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert keepalive_get(conn, "/") == "200 home\n"
    sock = conn.sock

    # a good new configuration: the open connection stays and sees it
    conf.write_text(f":{port} {{\n  root www\n  index other.html\n}}\n")
    w.signal(signal.SIGUSR1)
    w.wait_log("reload: done")
    assert keepalive_get(conn, "/") == "200 other\n"
    assert conn.sock is sock

    # a broken one: logged, the old one keeps running
    conf.write_text(f":{port} {{\n  root www\n  gzp\n}}\n")
    w.signal(signal.SIGUSR1)
    w.wait_log("reload failed")
    assert "Caddyfile:3 - unknown directive 'gzp'" in w.stderr()
    assert keepalive_get(conn, "/") == "200 other\n"
    assert curl(port, "/") == (200, "other\n")
    assert conn.sock is sock
    conn.close()
    assert w.popen.poll() is None
    assert pidfile.read_text().strip() == str(w.popen.pid)


def test_reload_changes_ports(web: type[Web], site: Path) -> None:
    p1, p2 = free_port(), free_port()
    conf = site / "Caddyfile"
    conf.write_text(f":{p1} {{\n  root www\n}}\n")
    w = web([], site)
    w.wait_port(p1)
    conn = http.client.HTTPConnection("127.0.0.1", p1, timeout=10)
    assert keepalive_get(conn, "/") == "200 home\n"
    conf.write_text(f":{p2} {{\n  root www\n  index other.html\n}}\n")
    w.signal(signal.SIGUSR1)
    w.wait_log("reload: done")
    assert curl(p2, "/") == (200, "other\n")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p1), timeout=2).close()
    conn.close()


def test_reload_with_a_new_header_limit(web: type[Web], site: Path) -> None:
    port = free_port()
    conf = site / "Caddyfile"
    conf.write_text(f":{port} {{\n  root www\n}}\n")
    w = web([], site)
    w.wait_port(port)
    assert curl(port, "/", None, "-H", "X-Big: " + "a" * 3000)[0] == 200
    conf.write_text(f":{port} {{\n  root www\n  limits {{\n    header 1KB\n  }}\n}}\n")
    w.signal(signal.SIGUSR1)
    w.wait_log("reload: done")
    assert curl(port, "/", None, "-H", "X-Big: " + "a" * 3000)[0] == 431
    assert curl(port, "/") == (200, "home\n")


def test_reload_refused_when_a_new_port_is_taken(web: type[Web], site: Path) -> None:
    port = free_port()
    conf = site / "Caddyfile"
    conf.write_text(f":{port} {{\n  root www\n}}\n")
    w = web([], site)
    w.wait_port(port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        conf.write_text(f":{port} {{\n  root www\n  index other.html\n}}\n:{taken} {{\n}}\n")
        w.signal(signal.SIGUSR1)
        w.wait_log("reload failed")
    assert f"cannot listen on 0.0.0.0:{taken}" in w.stderr()
    assert curl(port, "/") == (200, "home\n")  # the old configuration, whole


def test_sigterm_drains_and_removes_the_pidfile(web: type[Web], site: Path) -> None:
    port = free_port()
    pidfile = site / "web.pid"
    w = web(["-port", str(port), "-pidfile", str(pidfile), "-root", "www"], site)
    w.wait_port(port)
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pidfile.read_text().strip() == str(w.popen.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert keepalive_get(conn, "/") == "200 home\n"  # an idle keep-alive connection
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert "SIGTERM: shutting down (1 open connection(s)" in w.stderr()
    assert "stopped" in w.stderr()
    assert not pidfile.exists()
    conn.close()


def test_sigint_stops(web: type[Web], site: Path) -> None:
    port = free_port()
    w = web(["-port", str(port)], site)
    w.wait_port(port)
    w.signal(signal.SIGINT)
    assert w.wait() == 0


def test_sigquit_exits_at_once(web: type[Web], site: Path) -> None:
    port = free_port()
    pidfile = site / "web.pid"
    w = web(["-port", str(port), "-pidfile", str(pidfile)], site)
    w.wait_port(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert keepalive_get(conn, "/www/") == "200 home\n"
    w.signal(signal.SIGQUIT)
    assert w.wait() == 0
    assert "SIGQUIT: exiting at once" in w.stderr() and "stopped" not in w.stderr()
    assert not pidfile.exists()
    conn.close()


def test_log_to_a_file(web: type[Web], site: Path) -> None:
    port = free_port()
    logfile = site / "process.log"
    w = web(["-port", str(port), "-log", str(logfile)], site)
    w.wait_port(port)
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert "listening on 0.0.0.0:" in logfile.read_text()
    assert "listening" not in w.stderr()


def test_sigterm_lets_a_response_in_flight_finish(web: type[Web], site: Path) -> None:
    size = 32 << 20
    (site / "www" / "big.bin").write_bytes(b"x" * size)
    port = free_port()
    w = web(["-port", str(port), "-root", "www", "-grace", "30s"], site)
    w.wait_port(port)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x.test\r\n\r\n")
        got = s.recv(65536)  # the response has started; most of it is still to come
        assert got.startswith(b"HTTP/1.1 200")
        w.signal(signal.SIGTERM)
        w.wait_log("SIGTERM: shutting down (1 open connection(s)")
        _, _, body = got.partition(b"\r\n\r\n")
        total = len(body)
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    assert total == size
    assert w.wait() == 0


def test_reload_after_the_caddyfile_is_gone_keeps_running(web: type[Web], site: Path) -> None:
    port = free_port()
    conf = site / "Caddyfile"
    conf.write_text(f":{port} {{\n  root www\n}}\n")
    w = web([], site)
    w.wait_port(port)
    conf.unlink()
    w.signal(signal.SIGUSR1)
    w.wait_log("reload failed")
    assert "no such file" in w.stderr()
    assert curl(port, "/") == (200, "home\n")


def test_host_flag_names_the_default_site(web: type[Web], site: Path) -> None:
    port = free_port()
    w = web(["-host", "a.test", "-port", str(port), "-root", "www"], site)
    w.wait_port(port)
    assert curl(port, "/", "a.test") == (200, "home\n")
    assert curl(port, "/", "b.test")[0] == 404
    assert f"http://a.test:{port}" in w.stdout()


# --- the plan (in-process) --------------------------------------------------------------------


def test_plan_groups_ports_and_takes_the_smallest_header_limit() -> None:
    from meshkit.web.app import DEFAULT_HEADER_LIMIT, plan
    from meshkit.web.caddyfile.load import load_text
    from meshkit.web.message import Handler, Request, Response
    from meshkit.web.site import Site

    config = load_text(
        "a.test:81, b.test:82 {\n  limits {\n    header 4KB\n  }\n}\n"
        "c.test:81 {\n  limits {\n    header 2KB\n  }\n}\n"
        "d.test:83 {\n}\n"
    )
    assert config.errors == []

    def build(s: Site) -> Handler:
        def handler(req: Request) -> Response:
            return Response.text(200, s.addresses[0].host)

        return handler

    ports = plan(config, build)
    assert sorted(ports) == [81, 82, 83]
    assert ports[81].header_limit == 2048
    assert ports[82].header_limit == 4096
    assert ports[83].header_limit == DEFAULT_HEADER_LIMIT
    router = ports[81].router()
    resp = router(Request("GET", "/", "/", host="c.test"))
    assert isinstance(resp, Response) and resp.body == b"c.test"
    assert sorted(r.address.host for r in router.routes) == ["a.test", "c.test"]


def test_second_sigterm_stops_at_once(web: type[Web], site: Path) -> None:
    size = 64 << 20
    (site / "www" / "big.bin").write_bytes(b"x" * size)
    port = free_port()
    w = web(["-port", str(port), "-root", "www", "-grace", "1h"], site)
    w.wait_port(port)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x.test\r\n\r\n")
        got = len(s.recv(65536))
        w.signal(signal.SIGTERM)
        w.wait_log("SIGTERM: shutting down (1 open connection(s)")
        w.signal(signal.SIGTERM)
        w.wait_log("SIGTERM again: closing every connection now")
        assert w.wait() == 0
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
    assert got < size  # cut short, not finished
