"""The compiled FastCGI path and its pure-Python twin end to end: two `meshkit web` processes,
one with the C record layer and one with MESHKIT_NO_EXTENSIONS=1, in front of the same real
php-fpm 8.2 (over TCP and a unix socket), get the same generated requests (method, path,
query, headers, body) and must answer the same status, the same header fields bar Date, and
the same body."""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.web.fastcgi import fast
from support.peers import Proc, free_port, wait_tcp
from support.php_fpm import php_fpm, php_fpm_binary

pytestmark = pytest.mark.skipif(php_fpm_binary() is None, reason="needs php-fpm")

SCRIPTS = {
    "hello.php": '<?php echo "Hello World\\n";',
    # the request as PHP saw it, without what differs per connection (REMOTE_PORT, times)
    "echo.php": "<?php header('X-Method: ' . $_SERVER['REQUEST_METHOD']);"
    " foreach (['SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_URI', 'CONTENT_LENGTH',"
    " 'CONTENT_TYPE', 'HTTP_X_TEST', 'HTTP_HOST'] as $k) {"
    " echo $k, '=', $_SERVER[$k] ?? '-', \"\\n\"; }"
    " echo md5(file_get_contents('php://input')), \"\\n\";",
    "status.php": "<?php $c = intval($_GET['c'] ?? 200); http_response_code($c);"
    " header('X-Two: a'); header('X-Two: b', false); setcookie('k', $_GET['v'] ?? 'x');"
    " if (isset($_GET['len'])) { header('Content-Length: ' . $_GET['len']); }"
    " echo str_repeat('z', intval($_GET['n'] ?? 3));",
    "redirect.php": "<?php header('Location: /hello.php?' . ($_SERVER['QUERY_STRING'] ?? ''));",
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    if not fast.COMPILED:
        # both servers would run the twin: nothing to compare
        pytest.skip("the compiled FastCGI record layer is not built (or is switched off)")
    base = tmp_path_factory.mktemp("fcgitwins")
    root = base / "root"
    (root / "unix").mkdir(parents=True)
    for name, text in SCRIPTS.items():
        (root / name).write_text(text)
        (root / "unix" / name).write_text(text)
    with php_fpm(base / "fpm", children=4) as fpm:
        procs: list[Proc] = []
        ports: list[int] = []
        try:
            for no_ext in (False, True):
                port = free_port()
                conf = base / f"Caddyfile-{int(no_ext)}"
                conf.write_text(
                    f"127.0.0.1:{port} {{\n  root {root}\n"
                    f"  fastcgi /unix {fpm.unix} php\n  fastcgi / {fpm.tcp} php\n}}\n"
                )
                env = {"MESHKIT_NO_EXTENSIONS": "1"} if no_ext else {"MESHKIT_NO_EXTENSIONS": ""}
                proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], env=env)
                procs.append(proc)
                wait_tcp(port, proc)
                ports.append(port)
            yield ports[0], ports[1]
        finally:
            for proc in procs:
                proc.stop()


def _ask(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        fields = [(k, v) for k, v in resp.getheaders() if k.lower() != "date"]
        return resp.status, fields, data
    finally:
        conn.close()


_QUERY_TEXT = st.text("abcxyz019=&%+.-_", max_size=20)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    prefix = draw(st.sampled_from(["", "/unix"]))
    script = draw(st.sampled_from(sorted(SCRIPTS)))
    info = draw(st.sampled_from(["", "/extra", "/a/b.txt"]))
    if script == "status.php":
        query = f"c={draw(st.sampled_from([200, 201, 204, 302, 404, 500]))}"
        query += f"&n={draw(st.integers(0, 70000))}&v={draw(st.text('abc', max_size=3))}"
        if draw(st.booleans()):
            query += f"&len={draw(st.integers(0, 8))}"
    else:
        query = draw(_QUERY_TEXT)
    target = f"{prefix}/{script}{info}" + (f"?{query}" if query else "")
    method = draw(st.sampled_from(["GET", "GET", "HEAD", "POST"]))
    body = draw(st.binary(max_size=3000)) if method == "POST" else b""
    headers = {"Host": "twins.test"}
    if draw(st.booleans()):
        headers["X-Test"] = draw(st.text("abcdefgh 123;=", max_size=30)).strip()
    if method == "POST" and draw(st.booleans()):
        headers["Content-Type"] = "application/octet-stream"
    return method, target, headers, body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_compiled_and_twin_answer_alike(
    servers: tuple[int, int], req: tuple[str, str, dict[str, str], bytes]
) -> None:
    method, target, headers, body = req
    compiled = _ask(servers[0], method, target, headers, body)
    twin = _ask(servers[1], method, target, headers, body)
    assert compiled == twin, (method, target)
    assert compiled[0] != 502, compiled  # php-fpm answered (not a broken exchange)
