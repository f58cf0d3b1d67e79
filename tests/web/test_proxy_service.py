"""`service://NAME:PORT` upstreams end to end: the embedded web server on its own uvloop,
a test ServiceDirectory whose tasks are real HTTP servers on 127.0.0.x (all on one port,
as a service's tasks are), curl as the client, and `meshkit web` refusing them."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.embedded import EmbeddedWeb, start_embedded
from meshkit.web.message import HandlerResult, Request, Response
from meshkit.web.server import HttpServer
from support.e2e_util import curl
from support.loopthread import Directory, LoopThread
from support.peers import free_port
from support.polling import eventually


class Backends:
    """Tasks of a service: an HttpServer per 127.0.0.x address, all on the same port, each
    answering with its name and the Host it was sent (`/health`: 500 when made sick)."""

    def __init__(self, runner: LoopThread, port: int) -> None:
        self.runner = runner
        self.port = port
        self.servers: dict[str, HttpServer] = {}
        self.sick: set[str] = set()
        self.served: Counter[str] = Counter()  # answers by task IP

    def start(self, ip: str) -> None:
        name = "b" + ip.rsplit(".", 1)[1]

        async def slow(request: Request) -> Response:
            await asyncio.sleep(0.005)
            self.served[ip] += 1
            return Response.text(200, f"{name} host={request.host}\n")

        def handler(request: Request) -> HandlerResult:
            if request.path == "/health":
                return Response.text(500 if ip in self.sick else 200, f"{name}\n")
            if request.path == "/slow":
                return slow(request)
            return Response.text(200, f"{name} host={request.host}\n")

        server = HttpServer(handler)
        self.runner.call(server.listen(ip, self.port))
        self.servers[ip] = server

    def stop(self, ip: str) -> None:
        server = self.servers.pop(ip)
        self.runner.call(server.shutdown(2.0))

    def open_connections(self, ip: str) -> int:
        server = self.servers[ip]
        return self.runner.run(lambda: server.open_connections)

    def close(self) -> None:
        for ip in list(self.servers):
            self.stop(ip)


def _task_port() -> int:
    """A port free on 127.0.0.2-5 alike (the tasks of a service share their port)."""
    for _ in range(20):
        port = free_port()
        try:
            for n in range(2, 6):
                with socket.socket() as s:
                    s.bind((f"127.0.0.{n}", port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on 127.0.0.2-5")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.web_loop = LoopThread()
        self.backend_loop = LoopThread()
        self.directory = Directory(self.web_loop)
        self.backends = Backends(self.backend_loop, _task_port())
        self.web: EmbeddedWeb | None = None
        self.port = 0

    def serve(self, body: str) -> EmbeddedWeb:
        """Run a Caddyfile `:PORT { body }` embedded; {task_port} in body is the tasks' port."""
        self.port = free_port()
        conf = self.tmp / "Caddyfile"
        conf.write_text(f":{self.port} {{\n" + body.format(task_port=self.backends.port) + "}\n")
        self.web = self.web_loop.call(start_embedded(str(conf), self.directory))
        return self.web

    def get(self, path: str = "/") -> tuple[int, str]:
        r = curl(self.port, path, tmp=self.tmp)
        return r.status, r.body.decode()

    def names(self, count: int, path: str = "/") -> list[str]:
        """The backends that answered `count` requests, in order (curl: one connection)."""
        urls = [f"http://127.0.0.1:{self.port}{path}"] * count
        out = subprocess.run(
            ["curl", "-sS", "--http1.1", "--max-time", "20", *urls],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return [line.split()[0] for line in out.splitlines()]

    def close(self) -> None:
        try:
            if self.web is not None:
                self.web_loop.call(self.web.stop(1.0))
        finally:
            self.backends.close()
            self.web_loop.close()
            self.backend_loop.close()


# --- following the tasks -----------------------------------------------------------------


def test_requests_follow_the_tasks(lab: Lab) -> None:
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        lab.backends.start(ip)
    lab.directory.set("web", ["127.0.0.2", "127.0.0.3"])
    lab.serve("proxy / service://web:{task_port} {{\n policy round_robin\n}}\n")
    status, body = lab.get()
    assert status == 200
    assert body.split()[1] == f"host=web:{lab.backends.port}"  # the service's name
    assert set(lab.names(8)) == {"b2", "b3"}
    assert lab.directory.sockets["web"] > 0  # dialled on the directory's sockets

    lab.directory.set("web", ["127.0.0.2", "127.0.0.3", "127.0.0.4"])  # a task joins
    assert set(lab.names(9)) == {"b2", "b3", "b4"}

    # b2 has kept connections from the proxy; when it leaves they are closed at once
    assert lab.backends.open_connections("127.0.0.2") > 0
    lab.directory.set("web", ["127.0.0.3", "127.0.0.4"])
    eventually(lambda: lab.backends.open_connections("127.0.0.2") == 0, "b2's connections closed")
    assert set(lab.names(8)) == {"b3", "b4"}


def test_removing_a_task_mid_load_fails_no_request(lab: Lab) -> None:
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        lab.backends.start(ip)
    lab.directory.set("web", ["127.0.0.2", "127.0.0.3"])
    lab.serve("proxy / service://web:{task_port} {{\n policy least_conn\n}}\n")
    urls = [f"http://127.0.0.1:{lab.port}/slow"] * 400
    # four clients, each a keep-alive connection running 400 requests one after another
    clients = [
        subprocess.Popen(
            ["curl", "-sS", "--http1.1", "--max-time", "60", "-w", "%{http_code}\n", *urls],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        eventually(lambda: lab.backends.served["127.0.0.2"] >= 10, "load reaches b2")
        lab.directory.set("web", ["127.0.0.3"])  # b2 leaves, then stops (its requests end)
        lab.backends.stop("127.0.0.2")
        lab.directory.set("web", ["127.0.0.3", "127.0.0.4"])  # b4 joins
        outs = [c.communicate(timeout=120) for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
    codes: Counter[str] = Counter()
    names: Counter[str] = Counter()
    for out, err in outs:
        assert not err
        for line in out.splitlines():
            if line.isdigit():
                codes[line] += 1
            else:
                names[line.split()[0]] += 1
    assert codes == Counter({"200": 1600})
    assert names["b4"] > 0 and names["b2"] > 0
    assert sum(names.values()) == 1600


def test_no_up_task_gives_502_until_one_comes(lab: Lab) -> None:
    lab.backends.start("127.0.0.2")
    lab.serve("proxy / service://web:{task_port}\n")
    assert lab.get()[0] == 502  # no such service yet
    lab.directory.set("web", [])
    assert lab.get()[0] == 502  # a service with no up task
    lab.directory.set("web", ["127.0.0.2"])
    assert lab.get() == (200, f"b2 host=web:{lab.backends.port}\n")
    lab.directory.set("web", None)
    assert lab.get()[0] == 502
    # a reload follows with the new blocks only; a stop follows with none
    web = lab.web
    assert web is not None and len(lab.directory.callbacks) == 1
    assert lab.web_loop.call(web.reload()) is True
    assert len(lab.directory.callbacks) == 1
    lab.directory.set("web", ["127.0.0.2"])
    assert lab.get()[0] == 200
    lab.web_loop.call(web.stop(1.0))
    assert lab.directory.callbacks == []


def test_try_duration_waits_for_a_task(lab: Lab) -> None:
    lab.backends.start("127.0.0.2")
    lab.directory.set("web", [])
    lab.serve("proxy / service://web:{task_port} {{\n try_duration 20s\n try_interval 50ms\n}}\n")
    waiting = subprocess.Popen(
        ["curl", "-sS", "--http1.1", "--max-time", "30", f"http://127.0.0.1:{lab.port}/"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # the request is in the proxy, waiting (not answered 502)
        eventually(lambda: lab.web_loop.run(lambda: _open(lab)) > 0, "the request is in")
        assert waiting.poll() is None
        lab.directory.set("web", ["127.0.0.2"])
        out, _ = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert out.startswith("b2 ")


def _open(lab: Lab) -> int:
    assert lab.web is not None
    return lab.web._app.open_connections()


def test_mixed_with_plain_upstreams_and_a_dead_task(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="meshkit.web")
    plain = HttpServer(lambda request: Response.text(200, "plain x\n"))
    lab.backend_loop.call(plain.listen("127.0.0.1", 0))
    plain_port = plain.addresses()[0][1]
    try:
        lab.backends.start("127.0.0.2")
        # 127.0.0.5 is a task that went away without the directory knowing yet
        lab.directory.set("web", ["127.0.0.5", "127.0.0.2"])
        lab.serve(
            f"proxy / service://web:{{task_port}} 127.0.0.1:{plain_port} {{{{\n"
            " policy round_robin\n fail_timeout 30s\n try_duration 2s\n}}\n"
        )
        got = lab.names(12)
        assert len(got) == 12 and set(got) == {"b2", "plain"}
        dials = caplog.text.count("cannot connect to 127.0.0.5")
        assert dials == 1  # max_fails 1: one failure takes it out for fail_timeout
        # the dead task stays marked down when the set changes (passive failures carried)
        lab.backends.start("127.0.0.3")
        lab.directory.set("web", ["127.0.0.5", "127.0.0.2", "127.0.0.3"])
        got = lab.names(12)
        assert len(got) == 12 and set(got) == {"b2", "b3", "plain"}
        assert caplog.text.count("cannot connect to 127.0.0.5") == dials
    finally:
        lab.backend_loop.call(plain.shutdown(1.0))


def test_health_checks_follow_the_tasks(lab: Lab) -> None:
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        lab.backends.start(ip)
    lab.backends.sick.add("127.0.0.3")
    lab.directory.set("web", ["127.0.0.2", "127.0.0.3"])
    lab.serve(
        "proxy / service://web:{task_port} {{\n policy round_robin\n"
        " health_check /health\n health_check_interval 1h\n}}\n"
    )
    # checked at start; the next round is an hour away: a change alone must trigger one
    eventually(lambda: set(lab.names(4)) == {"b2"}, "b3 taken out by its health check")
    lab.backends.sick.add("127.0.0.4")
    lab.directory.set("web", ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    eventually(lambda: set(lab.names(6)) == {"b2"}, "the newcomer b4 checked at once")
    lab.backends.sick.clear()
    lab.directory.set("web", ["127.0.0.3", "127.0.0.4"])  # b2 leaves: a round runs
    eventually(lambda: set(lab.names(6)) == {"b3", "b4"}, "b3 and b4 back after passing")


# --- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("service://web", "needs the port the service's tasks listen on (service://web:PORT)"),
        ("service://web:", "needs the port"),
        ("service://:80", "names no service"),
        ("service://we_b:80", "invalid service name 'we_b'"),
        ("service://-web:80", "invalid service name '-web'"),
        ("service://" + "w" * 64 + ":80", "invalid service name"),
        ("service://web:0", "invalid port '0' in upstream 'service://web:0'"),
        ("service://web:70000", "invalid port '70000'"),
        ("service://web:http", "invalid port 'http'"),
        ("service://web:80/api", "must not have a path"),
        ("service://web:80-82", "port ranges are not supported"),
    ],
)
def test_bad_service_upstream_names_file_and_line(lab: Lab, upstream: str, message: str) -> None:
    config = load_text(
        f":2015 {{\n  proxy /a 127.0.0.1:9\n  proxy / {upstream}\n}}\n",
        "Caddyfile",
        directory=lab.directory,
    )
    assert len(config.errors) == 1
    assert str(config.errors[0]).startswith("Caddyfile:3 - ")
    assert message in str(config.errors[0])


def test_embedded_raises_before_listening(lab: Lab) -> None:
    from meshkit.web.caddyfile.load import CaddyfileErrors

    conf = lab.tmp / "Caddyfile"
    port = free_port()
    conf.write_text(f":{port} {{\n proxy / service://web\n}}\n")
    with pytest.raises(CaddyfileErrors) as info:
        lab.web_loop.call(start_embedded(str(conf), lab.directory))
    assert f"{conf}:2" in str(info.value)
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


NO_DIRECTORY = (
    "service:// upstreams need the web server to run inside a node agent (meshkit node init --web)"
)


def test_plain_meshkit_web_refuses_service_upstreams(tmp_path: Path) -> None:
    config = load_text(":2015 {\n  proxy / 127.0.0.1:9 {\n    upstream service://web:80\n  }\n}\n")
    assert [str(e) for e in config.errors] == [f"Caddyfile:3 - {NO_DIRECTORY}"]
    conf = tmp_path / "Caddyfile"
    conf.write_text(f":{free_port()}\nproxy / service://web:80\n")
    for args in (["-validate"], []):
        done = subprocess.run(
            [sys.executable, "-m", "meshkit", "web", "-conf", str(conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert f"{conf}:2" in done.stderr and NO_DIRECTORY in done.stderr
        assert "Traceback" not in done.stderr


# --- the sans-IO parts -------------------------------------------------------------------


def test_parse_and_expand() -> None:
    from meshkit.web.proxy.services import expand
    from meshkit.web.proxy.upstream import Upstream, parse_upstreams

    [web] = parse_upstreams("service://web:8080")
    assert web == Upstream("service", "web", 8080)
    assert web.name == "service://web:8080"
    [plain] = parse_upstreams("127.0.0.1:9")
    tasks = {"web": ["198.51.100.7", "2001:db8::7", "198.51.100.7", "nonsense"]}
    got, bad = expand([web, plain], lambda name: tasks.get(name, []))
    assert got == [
        Upstream("http", "198.51.100.7", 8080, service="web"),
        Upstream("http", "2001:db8::7", 8080, service="web"),
        plain,
    ]
    assert got[0].host_header == "web:8080" and got[1].name == "[2001:db8::7]:8080"
    assert bad == ["service 'web' gave 'nonsense', which is not an IP address"]
    assert Upstream("http", "203.0.113.9", 80, service="api").host_header == "api"
    assert expand([web], lambda name: [])[0] == []


def test_a_change_keeps_pools_and_tickets_of_the_old_set() -> None:
    from meshkit.web.proxy.handler import ProxyRule, make_route
    from meshkit.web.proxy.upstream import parse_upstreams

    runner = LoopThread()
    try:
        directory = Directory(runner)
        directory.tasks["web"] = ["203.0.113.1", "203.0.113.2"]
        rule = ProxyRule("/", parse_upstreams("service://web:80"), policy="least_conn")
        route = make_route(rule, directory)
        old = route.set
        assert [u.host for u in old.upstreams] == ["203.0.113.1", "203.0.113.2"]
        assert old.picker is not None
        ticket = old.picker.pick(0.0)
        assert ticket is not None
        directory.tasks["web"] = ["203.0.113.2", "203.0.113.3"]
        assert route.refresh(1.0) is True
        assert route.refresh(1.0) is False  # nothing changed: the same set
        new = route.set
        assert [u.host for u in new.upstreams] == ["203.0.113.2", "203.0.113.3"]
        assert new.pools[0] is old.pools[1]  # the task that stayed keeps its connections
        assert old.pools[0].keepalive == 0  # the one that left keeps none
        old.picker.release(ticket)  # released where it was picked
        assert old.picker.in_flight(ticket.index) == 0
        route.set_healthy(new.upstreams[1], False)
        directory.tasks["web"] = ["203.0.113.3"]
        route.refresh(2.0)
        assert route.set.picker is not None and not route.set.picker.is_up(0)
        directory.tasks["web"] = []
        route.refresh(3.0)
        assert route.set.picker is None and route.describe_empty() == "no up task of service web"
        del directory.tasks["web"]
        assert route.describe_empty() == "no such service: web"
    finally:
        runner.close()
