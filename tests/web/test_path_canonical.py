"""Issue 16, item 1: one canonical path per request, and every matcher on it.

The unit half checks meshkit.web.paths against an oracle written here. The end-to-end half
runs `meshkit web` (over both fast paths) with basicauth, status, header, fastcgi on a real
php-fpm and a proxy with `except`, and sends it generated raw request paths that mix `//`,
`./`, `../`, `%2e`, `%2f`, `%5c` and case: whatever the file server would resolve to a
protected file is protected, whatever reaches fastcgi's split rule runs and is never served
as source, and what is proxied leaves in canonical origin-form.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.web.paths import canonical_path, clamp_path
from support.peers import Proc, free_port, wait_tcp
from support.php_fpm import PhpFpm, php_fpm, php_fpm_binary

SECRET = b"SECRET-7f3a basicauth protects this"
FORBIDDEN = b"FORBIDDEN-91c0 status 403 covers this"
PRIVATE = b"PRIVATE-55e2 proxy except keeps this local"
HEADERED = b"HEADERED-0b7d"
PHP_RAN = b"PHP-RAN-c4d1"
PHP_SOURCE = b"<?php"
AUTH = "Authorization: Basic dXNlcjpwYXNz"  # user:pass

FILES = {
    "secret/s.txt": SECRET,
    "forbidden/f.txt": FORBIDDEN,
    "api/private/p.txt": PRIVATE,
    "hdr/h.txt": HEADERED,
    "app/index.php": b'<?php $db_password = "hunter2"; echo "' + PHP_RAN + b'";',
    "pub/ok.txt": b"public\n",
}
TARGETS = ["/secret/s.txt", "/forbidden/f.txt", "/api/private/p.txt", "/hdr/h.txt",
           "/app/index.php", "/api/open/x"]


# -- the unit half --------------------------------------------------------------------------


def oracle(decoded: str) -> str | None:
    """RFC 3986 §5.2.4 with empty segments dropped, written independently of paths.py."""
    stack: list[str] = []
    parts = decoded.split("/")[1:]
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg in ("", "."):
            if last:
                stack.append("")
            continue
        if seg == "..":
            if not stack or stack == [""]:
                return None
            stack.pop()
            if stack and stack[-1] == "":
                stack.pop()
            if last:
                stack.append("")
            continue
        if stack and stack[-1] == "":
            stack.pop()
        stack.append(seg)
    return "/" + "/".join(stack)


SEGMENT = st.sampled_from(["", ".", "..", "a", "b", "..b", "...", "c.d", "%", "\\", "A"])


@given(st.lists(SEGMENT, max_size=8))
def test_canonical_matches_the_oracle(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    got = canonical_path(path)
    assert got == oracle(path)
    if got is not None:
        assert "//" not in got
        assert not any(s in (".", "..") for s in got.split("/"))
        assert canonical_path(got) == got  # idempotent
        assert clamp_path(path) == got


def test_examples_from_the_issue() -> None:
    assert canonical_path("//secret/s.txt") == "/secret/s.txt"
    assert canonical_path("///secret/s.txt") == "/secret/s.txt"
    assert canonical_path("/api//private") == "/api/private"
    assert canonical_path("/api/./private") == "/api/private"
    assert canonical_path("/api/x/../private") == "/api/private"
    assert canonical_path("/api/../secret/s.txt") == "/secret/s.txt"
    assert canonical_path("/../secret") is None
    assert clamp_path("/../secret") == "/secret"
    assert clamp_path("secret/") == "/secret/"


# -- the end-to-end half --------------------------------------------------------------------


class Backend:
    """An HTTP/1.1 upstream that answers each request with its request line."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.lines.append(line)
                body = b"UPSTREAM " + line
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@dataclass
class Site:
    port: int
    backend: Backend


def caddyfile(root: Path, port: int, fpm: PhpFpm, backend: Backend) -> str:
    return f"""127.0.0.1:{port} {{
    root {root}
    basicauth /secret user pass
    status 403 /forbidden
    header /hdr X-Scoped yes
    fastcgi /app {fpm.tcp} php
    proxy /api 127.0.0.1:{backend.port} {{
        except /api/private
    }}
    limits {{
        body /upload 10
    }}
    redir /old /pub/ok.txt 301
}}
"""


@pytest.fixture(scope="module")
def fpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhpFpm]:
    if php_fpm_binary() is None:
        pytest.skip("needs php-fpm8.2")
    with php_fpm(tmp_path_factory.mktemp("fpm")) as f:
        yield f


@pytest.fixture(scope="module", params=["c", "python"])
def site(
    request: pytest.FixtureRequest, fpm: PhpFpm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("canon")
    root = base / "root"
    for name, data in FILES.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    backend = Backend()
    port = free_port()
    conf = base / "Caddyfile"
    conf.write_text(caddyfile(root, port, fpm, backend))
    env = {"MESHKIT_NO_EXTENSIONS": "1" if request.param == "python" else "0"}
    proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], env)
    try:
        wait_tcp(port, proc)
        yield Site(port, backend)
    finally:
        proc.stop()
        backend.close()


def raw_get(port: int, target: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """One GET with the target exactly as given, over a fresh connection."""
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(h + "\r\n" for h in headers) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, body


def where(raw: str) -> str | None:
    """The canonical form of a raw path (decoded once, then folded by the oracle): what the
    file server resolves and what every scope must be matched on; None when it climbs above
    the root."""
    return oracle(unquote(raw))


def _encode_some(draw: st.DrawFn, seg: str) -> str:
    out = []
    for ch in seg:
        how = draw(st.sampled_from(["keep", "keep", "keep", "pct", "PCT", "case"]))
        if how == "pct":
            out.append(f"%{ord(ch):02x}")
        elif how == "PCT":
            out.append(f"%{ord(ch):02X}")
        elif how == "case":
            out.append(ch.swapcase())
        else:
            out.append(ch)
    return "".join(out)


NOISE = ["", "", "", ".", "%2e", "%2E", "x/..", "x/%2e%2e", "X/.%2E", "..", "%2e%2e"]
SEPS = ["/", "/", "/", "//", "///", "/./", "/%2e/", "%2f", "%2F", "/%2f", "%5c", "/%5C/"]


@st.composite
def noisy_paths(draw: st.DrawFn) -> str:
    target = draw(st.sampled_from(TARGETS))
    raw = ""
    for seg in target.strip("/").split("/"):
        raw += draw(st.sampled_from(SEPS[:8] if not raw else SEPS))
        noise = draw(st.sampled_from(NOISE))
        if noise:
            raw += noise + "/"
        raw += _encode_some(draw, seg) if draw(st.booleans()) else seg
    return raw if raw.startswith("/") else "/" + raw


def check(site: Site, raw: str) -> None:
    status, fields, body = raw_get(site.port, raw)
    canonical = where(raw)
    what = (raw, canonical, status, body[:200])
    # never leaked, whatever the path
    assert SECRET not in body, what
    assert FORBIDDEN not in body, what
    assert PHP_SOURCE not in body and b"hunter2" not in body, what
    if canonical is None:
        assert status == 400, what
        return
    hidden_slash = "%2f" in raw.lower() or "%5c" in raw.lower()
    if canonical.startswith("/secret"):
        assert status == 401, what
        if canonical == "/secret/s.txt" and not hidden_slash:
            status, _, body = raw_get(site.port, raw, AUTH)
            assert (status, body) == (200, SECRET), what
    elif canonical.startswith("/forbidden"):
        assert status == 403, what
    elif canonical == "/app/index.php":
        assert (status, body) == (200, PHP_RAN), what
    elif canonical.startswith("/api/private"):
        assert not body.startswith(b"UPSTREAM"), what  # local, never the upstream
        if canonical == "/api/private/p.txt" and not hidden_slash:
            assert (status, body) == (200, PRIVATE), what
    elif canonical.startswith("/api"):
        assert status == 200, what
        method, target, version = body.removeprefix(b"UPSTREAM ").decode().split(" ")
        assert (method, version) == ("GET", "HTTP/1.1"), what
        assert target.startswith("/") and unquote(target) == canonical, what
    elif canonical.startswith("/hdr") and status == 200:
        assert fields.get("x-scoped") == "yes", what


@pytest.mark.parametrize(
    "raw",
    [
        "//secret/s.txt",
        "///secret/s.txt",
        "/pub/../secret/s.txt",
        "/%2e/secret/s.txt",
        "/%73ecret/s.txt",
        "//forbidden/f.txt",
        "//app/index.php",
        "/app//index.php",
        "/x/../app/./index.php",
        "/api//private/p.txt",
        "/api/./private/p.txt",
        "/api/x/../private/p.txt",
        "/api/../secret/s.txt",
        "//hdr/h.txt",
        "/api/open//x",
        "/api/open/%2e/x",
        "/../secret/s.txt",
        "/%2e%2e/secret/s.txt",
    ],
)
def test_the_issues_requests(site: Site, raw: str) -> None:
    check(site, raw)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=noisy_paths())
def test_generated_paths_never_bypass_a_scope(site: Site, raw: str) -> None:
    check(site, raw)


def test_absolute_form_is_matched_on_its_canonical_path(site: Site) -> None:
    status, _, body = raw_get(site.port, "http://127.0.0.1//secret/./s.txt")
    assert status == 401 and SECRET not in body


def raw_request(port: int, head: str, body: bytes = b"") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("raw", ["/upload/x", "//upload/x", "/a/../upload/x", "/%2e/upload/x"])
def test_body_limits_hold_on_the_canonical_path(site: Site, raw: str) -> None:
    head = (f"POST {raw} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20\r\n"
            "Connection: close\r\n\r\n")
    assert raw_request(site.port, head, b"x" * 20) == 413


@pytest.mark.parametrize("raw", ["/old", "//old", "/x/../old", "/./old"])
def test_redir_matches_the_canonical_path(site: Site, raw: str) -> None:
    status, fields, _ = raw_get(site.port, raw)
    assert status == 301 and fields["location"].endswith("/pub/ok.txt")
