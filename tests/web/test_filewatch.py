"""The rule table's file watches (meshkit.web.filewatch): an answer the lane keeps is known
current from inotify events instead of a stat(2) per request, so every change to a file or
folder it depends on must change the next answer at once. Real files, real sockets: each
change is made, then the very next request must see it, on a server reading with the
compiled lane and its rule table and on one reading in Python (the twin: the chain answers
every request). The watch limit is reached for real in a user namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit._ext import load_fastpath
from meshkit.web import filewatch, lane, ruletable
from meshkit.web.app import plan
from meshkit.web.caddyfile.load import load_text
from meshkit.web.router import Router
from support.httpserver_util import Reader, Reply, ServerThread, connect

_fastpath = load_fastpath()
HAVE_LANE = _fastpath is not None and hasattr(_fastpath, "Lane") and lane.LANE is not None
OLD = 1_600_000_000
# the compiled lane checks for queued events with an epoll_wait(2) per request ("compiled")
# or by reading its io_uring's completion ring on the thread that armed it ("ring",
# csrc/watch_ring.c); the twin reads in Python
MODES = [
    pytest.param(
        "epoll",
        id="compiled",
        marks=pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built"),
    ),
    pytest.param(
        "ring",
        id="compiled-ring",
        marks=pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built"),
    ),
    pytest.param("", id="python"),
]


def arm_ring(server: ServerThread, on: bool) -> None:
    """Arm (or close) the watches' ring for the server's loop thread; skip when this kernel
    refuses io_uring (kernel.io_uring_disabled, a seccomp filter)."""
    assert _fastpath is not None
    owned = server.run(lambda: _fastpath.watch_ring(on))
    if on and not owned:
        pytest.skip("io_uring is not available here: the lane keeps its epoll_wait")


def make_tree(base: Path, name: str, a_txt: bytes, index: bool = True) -> Path:
    www = base / name
    (www / "canon").mkdir(parents=True)
    if index:
        (www / "canon" / "index.html").write_bytes(b"<p>canon</p>")
    (www / "a.txt").write_bytes(a_txt)
    for p in www.rglob("*"):
        os.utime(p, (OLD, OLD))
    return www


def router_for(root: Path) -> Router:
    router = plan(load_text(f":8000 {{\n root {root}\n}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    router.validated_responses = False  # the response cache off: the table or the chain
    return router


def rule_hits(server: ServerThread) -> int:
    conns = server.run(lambda: list(server.server._conns))
    lanes = [getattr(c, "_lane", None) for c in conns]
    return sum(int(ln.rule_hits) for ln in lanes if ln is not None)


class Client:
    def __init__(self, server: ServerThread, compiled: bool) -> None:
        self.server = server
        self.compiled = compiled
        self.sock = connect(server.port)
        self.reader = Reader(self.sock)

    def get(self, path: str) -> Reply:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t.example\r\n\r\n".encode())
        return self.reader.response("GET")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """base/current -> v1 (a symlink, for the swap), v1 holding canon/index.html, a.txt."""
    make_tree(tmp_path, "v1", b"one!")
    (tmp_path / "current").symlink_to("v1")
    return tmp_path


@pytest.fixture(params=MODES)
def client(request: pytest.FixtureRequest, tree: Path) -> Iterator[Client]:
    compiled = bool(request.param)
    server = ServerThread(router_for(tree / "current"), compiled=compiled)
    if compiled and filewatch.shared() is not None:
        arm_ring(server, request.param == "ring")
    c = Client(server, compiled)
    yield c
    c.close()
    server.stop()


def redirects(reply: Reply) -> bool:
    return reply.status == 301 and reply.header("Location") == "/canon/"


def warm(c: Client) -> None:
    """Ask both paths twice: in the compiled mode the second answers come from the table,
    known current by their watches (armed: no stat per request)."""
    before = rule_hits(c.server) if c.compiled else 0
    for _ in range(2):
        assert redirects(c.get("/canon/index.html"))
        assert c.get("/a.txt").body == b"one!"
    if c.compiled:
        assert rule_hits(c.server) - before >= 2
        watch = filewatch.shared()
        if watch is not None:
            assert watch._by_key, "the answers' files are watched"


def _rename_over(tree: Path) -> None:
    (tree / "v1" / "new.txt").write_bytes(b"two!")
    os.utime(tree / "v1" / "new.txt", (OLD, OLD))  # same size, same times: a new inode
    os.replace(tree / "v1" / "new.txt", tree / "v1" / "a.txt")


def _in_place(tree: Path) -> None:
    with open(tree / "v1" / "a.txt", "r+b") as f:
        f.write(b"two!")
    os.utime(tree / "v1" / "a.txt", (OLD, OLD))


def _via_hard_link(tree: Path) -> None:
    os.link(tree / "v1" / "a.txt", tree / "elsewhere")
    with open(tree / "elsewhere", "r+b") as f:  # the same inode by another name
        f.write(b"two!")
    os.utime(tree / "elsewhere", (OLD, OLD))


def _swap_link(tree: Path) -> None:
    make_tree(tree, "v2", b"two!", index=False)
    (tree / "next").symlink_to("v2")
    os.replace(tree / "next", tree / "current")  # an atomic deploy


def _index_removed(tree: Path) -> None:
    (tree / "v1" / "canon" / "index.html").unlink()


def _index_renamed(tree: Path) -> None:
    os.rename(tree / "v1" / "canon" / "index.html", tree / "v1" / "canon" / "old.html")


def _folder_recreated(tree: Path) -> None:
    shutil.rmtree(tree / "v1" / "canon")
    (tree / "v1" / "canon").mkdir()


def _ancestor_replaced(tree: Path) -> None:
    os.rename(tree / "v1", tree / "v1-old")
    make_tree(tree, "v1", b"two!", index=False)


CHANGES: dict[str, tuple[Callable[[Path], None], bool, bytes]] = {
    # name: (change, still redirects, a.txt's body after it)
    "rewritten-in-place": (_in_place, True, b"two!"),
    "renamed-over": (_rename_over, True, b"two!"),
    "written-via-hard-link": (_via_hard_link, True, b"two!"),
    "symlink-swapped": (_swap_link, False, b"two!"),
    "index-removed": (_index_removed, False, b"one!"),
    "index-renamed": (_index_renamed, False, b"one!"),
    "folder-removed-recreated": (_folder_recreated, False, b"one!"),
    "ancestor-replaced": (_ancestor_replaced, False, b"two!"),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_shows_in_the_next_answer(client: Client, tree: Path, name: str) -> None:
    change, still, body = CHANGES[name]
    warm(client)
    change(tree)
    reply = client.get("/canon/index.html")
    assert redirects(reply) is still, (reply.status, reply.headers)
    if not still:
        assert reply.status == 404
    assert client.get("/a.txt").body == body


def test_removed_then_added_back_redirects_again(client: Client, tree: Path) -> None:
    warm(client)
    index = tree / "v1" / "canon" / "index.html"
    index.rename(tree / "v1" / "parked")
    assert client.get("/canon/index.html").status == 404
    (tree / "v1" / "parked").rename(index)
    assert redirects(client.get("/canon/index.html"))
    index.unlink()
    index.mkdir()  # a folder by that name now: its own canonical redirect
    reply = client.get("/canon/index.html")
    assert reply.status == 301 and reply.header("Location") == "/canon/index.html/"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_mount_over_a_folder_shows_and_others_do_not(client: Client, tree: Path) -> None:
    warm(client)
    elsewhere = tree / "elsewhere"
    elsewhere.mkdir()
    canon = tree / "v1" / "canon"
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "tmpfs", "none", str(elsewhere)], check=True)
        mounted.append(elsewhere)
        assert redirects(client.get("/canon/index.html"))  # a mount elsewhere: no change
        subprocess.run(["mount", "-t", "tmpfs", "none", str(canon)], check=True)
        mounted.append(canon)
        assert client.get("/canon/index.html").status == 404  # an empty folder over it
        subprocess.run(["umount", str(canon)], check=True)
        mounted.remove(canon)
        assert redirects(client.get("/canon/index.html"))
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)], check=False)


@pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
def test_a_full_ring_is_armed_again(tree: Path) -> None:
    """More completions than the ring holds (a thousand names made beside index.html while
    the server idles): its polls end, are armed again, and later changes still show."""
    server = ServerThread(router_for(tree / "current"), compiled=True)
    c = Client(server, True)
    try:
        if filewatch.shared() is None:
            pytest.skip("no inotify here")
        arm_ring(server, True)
        warm(c)
        canon = tree / "v1" / "canon"
        for i in range(1000):
            (canon / f"junk{i}").touch()
        assert redirects(c.get("/canon/index.html"))  # nothing it depends on changed
        assert _fastpath is not None and server.run(_fastpath.watch_ring_owned)
        (canon / "index.html").unlink()
        assert c.get("/canon/index.html").status == 404
        (tree / "v1" / "a.txt").write_bytes(b"two!")
        assert c.get("/a.txt").body == b"two!"
        assert server.run(_fastpath.watch_ring_owned)
    finally:
        c.close()
        server.stop()


@pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
def test_a_forked_child_does_not_read_the_ring() -> None:
    """The child of a fork shares the parent's ring memory: it asks the epoll instead."""
    assert _fastpath is not None
    if filewatch.shared() is None or not _fastpath.watch_ring(True):
        pytest.skip("no inotify or no io_uring here")
    try:
        assert _fastpath.watch_ring_owned()
        pid = os.fork()
        if pid == 0:
            os._exit(1 if _fastpath.watch_ring_owned() else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _fastpath.watch_ring_owned()
    finally:
        _fastpath.watch_ring(False)
    assert not _fastpath.watch_ring_owned()


RING_E2E = textwrap.dedent(
    """
    import os, socket, subprocess, sys, time
    from pathlib import Path
    www = Path(sys.argv[1])
    index = www / "canon" / "index.html"
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    (www.parent / "Caddyfile").write_text(f"127.0.0.1:{port} {{\\n root {www}\\n}}\\n")
    env = dict(os.environ, MESHKIT_NO_RESPCACHE="1")
    p = subprocess.Popen([sys.executable, "-m", "meshkit", "web", "-quiet", "-conf",
                          str(www.parent / "Caddyfile")], env=env)
    try:
        for _ in range(300):
            try:
                c = socket.create_connection(("127.0.0.1", port), 10); break
            except OSError:
                time.sleep(0.05)
        head = b"GET /canon/index.html HTTP/1.1\\r\\nHost: 127.0.0.1:%d\\r\\n\\r\\n" % port
        def ask():
            c.sendall(head)
            data = b""
            while b"\\r\\n\\r\\n" not in data:
                data += c.recv(65536)
            top, _, body = data.partition(b"\\r\\n\\r\\n")
            n = [int(x.split(b":")[1]) for x in top.split(b"\\r\\n")
                 if x.lower().startswith(b"content-length:")]
            while n and len(body) < n[0]:
                body += c.recv(65536)
            return int(top.split()[1])
        got = []
        for _ in range(50):
            got += [ask(), ask()]
            index.unlink()
            got.append(ask())
            index.write_bytes(b"x")
        rings = sum("io_uring" in os.readlink(f"/proc/{p.pid}/fd/{f}")
                    for f in os.listdir(f"/proc/{p.pid}/fd"))
        print(got.count(301), got.count(404), len(got), rings)
    finally:
        p.terminate(); p.wait(10)
    """
)


@pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
@pytest.mark.parametrize("ring", ["1", "0"])
def test_meshkit_web_sees_each_change_at_once(tmp_path: Path, ring: str) -> None:
    """`meshkit web` itself (the ring armed on its loop thread by its first table answer,
    or MESHKIT_WATCH_RING=0): an index.html removed between two requests is a 404 at once,
    put back a 301 at once, fifty times over one connection."""
    www = make_tree(tmp_path, "www", b"one!")
    env = dict(os.environ, MESHKIT_WATCH_RING=ring, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(
        [sys.executable, "-c", RING_E2E, str(www)],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    n301, n404, total, rings = (int(x) for x in run.stdout.split())
    assert (n301, n404, total) == (100, 50, 150)
    # libuv may hold a ring of its own: the lane's is one more when armed
    env0 = dict(env, MESHKIT_WATCH_RING="0")
    if ring == "1":
        base = subprocess.run(
            [sys.executable, "-c", RING_E2E, str(make_tree(tmp_path, "www0", b"one!"))],
            capture_output=True,
            text=True,
            env=env0,
            timeout=90,
            check=False,
        )
        assert base.returncode == 0, base.stderr[-3000:]
        if rings == int(base.stdout.split()[3]):
            pytest.skip("io_uring is not available here: the lane kept its epoll_wait")
        assert rings == int(base.stdout.split()[3]) + 1


# ---------------------------------------------------------------- FileWatch itself


@pytest.fixture
def watch() -> Iterator[filewatch.FileWatch]:
    w = filewatch.FileWatch()
    yield w
    w.close()


def test_unrelated_changes_leave_a_ticket_alone(watch: filewatch.FileWatch, tree: Path) -> None:
    ticket = watch.arm([str(tree / "current" / "canon" / "index.html")])
    assert ticket is not None and ticket.ok
    (tree / "v1" / "canon" / "sibling.html").write_bytes(b"x")  # another name, same folder
    (tree / "unrelated").mkdir()
    (tree / "v1" / "a.txt").write_bytes(b"changed")
    watch.poll()
    assert ticket.ok
    (tree / "v1" / "canon" / "index.html").write_bytes(b"changed")
    watch.poll()
    assert not ticket.ok
    assert not watch._by_key and not watch._wd_refs  # its watches went with it


def test_a_folder_validator_sees_names_come_and_go(watch: filewatch.FileWatch, tree: Path) -> None:
    folder = tree / "v1" / "canon"
    ticket = watch.arm([str(folder)])
    assert ticket is not None
    (folder / "index.html").write_bytes(b"edited")  # the folder's own stat is the same
    watch.poll()
    assert ticket.ok
    (folder / "index.html.gz").write_bytes(b"")
    watch.poll()
    assert not ticket.ok


def test_a_folder_reached_through_a_symlink_or_dots(watch: filewatch.FileWatch, tree: Path) -> None:
    for path in (tree / "current", tree / "v1" / "canon" / ".."):
        ticket = watch.arm([str(path)])
        assert ticket is not None
        (tree / "v1" / f"new-{path.name}").mkdir()  # a name comes: the folder's stat changes
        watch.poll()
        assert not ticket.ok


def test_paths_that_cannot_be_armed(watch: filewatch.FileWatch, tree: Path) -> None:
    assert watch.arm([str(tree / "missing")]) is None
    assert watch.arm(["relative/path"]) is None
    (tree / "loop").symlink_to("loop")
    assert watch.arm([str(tree / "loop" / "x")]) is None
    assert not watch._by_key and not watch._wd_refs


def test_a_released_ticket_drops_its_watches(watch: filewatch.FileWatch, tree: Path) -> None:
    a = watch.arm([str(tree / "v1" / "a.txt")])
    b = watch.arm([str(tree / "v1" / "canon" / "index.html")])
    assert a is not None and b is not None
    watch.release(a)
    assert not a.ok and b.ok and watch._by_key
    watch.release(b)
    assert not watch._by_key and not watch._wd_refs


# ---------------------------------------------------------------- the watch limit

LIMITED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    with open("/proc/sys/user/max_inotify_watches", "w") as f:
        f.write("2")
    sys.path[:0] = [sys.argv[2]]
    from meshkit.web import filewatch
    from support.httpserver_util import Reader, ServerThread, connect
    from web.test_filewatch import make_tree, router_for, rule_hits
    base = Path(sys.argv[1])
    www = make_tree(base, "www", b"one!")
    server = ServerThread(router_for(www), compiled=True)
    sock = connect(server.port)
    reader = Reader(sock)
    def ask():
        sock.sendall(b"GET /canon/index.html HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")
        return reader.response("GET").status
    assert [ask(), ask(), ask()] == [301, 301, 301]
    assert rule_hits(server) >= 2, "answered from the table (stat per request)"
    watch = filewatch.shared()
    assert watch is not None and watch.limited and not watch._by_key
    (www / "canon" / "index.html").unlink()
    assert ask() == 404
    sock.close()
    server.stop()
    print("fell back")
    """
)


@pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_the_watch_limit_reached_falls_back_to_stat(tmp_path: Path) -> None:
    assert ruletable.ENABLED
    tests = Path(__file__).resolve().parents[1]
    probe = subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), *sys.path]))
    run = subprocess.run(
        ["unshare", "-U", "-r", sys.executable, "-c", LIMITED, str(tmp_path), str(tests)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0 and "fell back" in run.stdout, run.stderr[-3000:]


# ---------------------------------------------------------------- generated, against the twin

OPS = ["write", "rm-index", "add-index", "index-dir", "swap", "recreate", "gz", "rm-gz"]
ASKS = [
    ("/canon/index.html", ""),
    ("/canon/", ""),
    ("/canon", ""),
    ("/a.txt", ""),
    ("/a.txt", "Accept-Encoding: gzip\r\n"),
    ("/canon/index.html/", ""),
]


def apply_op(base: Path, op: str, n: int) -> None:
    """One change to the tree under base (current -> v1 or v2), valid in any state."""
    www = (base / "current").resolve()
    canon = www / "canon"
    index = canon / "index.html"
    if op == "write":
        (www / "a.txt").write_bytes(b"v%d" % n * (n % 3 + 1))
    elif op == "rm-index" and index.is_file():
        index.unlink()
    elif op == "add-index" and canon.is_dir() and not index.exists():
        index.write_bytes(b"<p>%d</p>" % n)
    elif op == "index-dir" and index.is_file():
        index.unlink()
        index.mkdir()
    elif op == "index-dir" and index.is_dir():
        index.rmdir()
        index.write_bytes(b"<p>back</p>")
    elif op == "swap":
        other = "v2" if www.name == "v1" else "v1"
        (base / "next").symlink_to(other)
        os.replace(base / "next", base / "current")
    elif op == "recreate":
        shutil.rmtree(canon, ignore_errors=True)
        canon.mkdir()
    elif op == "gz":
        (www / "a.txt.gz").write_bytes(b"\x1f\x8b not really gzip %d" % n)
    elif op == "rm-gz" and (www / "a.txt.gz").exists():
        (www / "a.txt.gz").unlink()
    for p in [www, *www.rglob("*")]:
        os.utime(p, (OLD, OLD), follow_symlinks=False)  # the same validators in both trees


class Twins:
    def __init__(self, base: Path) -> None:
        self.bases = [base / "c", base / "py"]
        for b in self.bases:
            make_tree(b, "v1", b"one!")
            make_tree(b, "v2", b"two!!", index=False)
            (b / "current").symlink_to("v1")
        text = " gzip\n"
        self.servers = [
            ServerThread(router_for_extra(b / "current", text), compiled=c)
            for b, c in zip(self.bases, (True, False), strict=True)
        ]
        if HAVE_LANE and filewatch.shared() is not None:
            assert _fastpath is not None  # the compiled side reads the ring where there is one
            self.servers[0].run(lambda: _fastpath.watch_ring(True))
        self.socks = [connect(s.port) for s in self.servers]
        self.readers = [Reader(s) for s in self.socks]

    def ask(self, path: str, extra: str) -> list[tuple[int, list[tuple[str, str]], bytes]]:
        out = []
        for sock, reader in zip(self.socks, self.readers, strict=True):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t.example\r\n{extra}\r\n".encode())
            r = reader.response("GET")
            out.append((r.status, [h for h in r.headers if h[0] != "Date"], r.body))
        return out

    def stop(self) -> None:
        for sock in self.socks:
            sock.close()
        for s in self.servers:
            s.stop()


def router_for_extra(root: Path, extra: str) -> Router:
    router = plan(load_text(f":8000 {{\n root {root}\n{extra}}}\n", "Caddyfile"))[8000].router()
    assert isinstance(router, Router)
    router.validated_responses = False
    return router


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    t = Twins(tmp_path_factory.mktemp("twins"))
    yield t
    t.stop()


@pytest.mark.skipif(not HAVE_LANE, reason="the compiled lane is not built")
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([*OPS, "none", "none"]),
            st.integers(0, 9),
            st.lists(st.sampled_from(ASKS), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_changes_between_requests_answer_as_the_twin(
    twins: Twins, steps: list[tuple[str, int, list[tuple[str, str]]]]
) -> None:
    for op, n, asks in steps:
        for base in twins.bases:
            apply_op(base, op, n)
        for path, extra in asks:
            compiled, python = twins.ask(path, extra)
            assert compiled == python, (op, path, extra)
    assert rule_hits(twins.servers[0]) > 0  # the compiled side answered from its table
