"""The fastcgi directive against a real php-fpm 8.2 (tests/web/php_fpm.py), curl as the client.

Most tests share one HttpServer (its own uvloop in a thread) built from a Caddyfile with
fastcgi rules over TCP, over a unix socket and over both in round robin; one test runs
`meshkit web -conf` as a process with the issue's `fastcgi / 127.0.0.1:PORT php`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from support.e2e_util import Reply, Running, curl
from support.peers import Proc, free_port, wait_tcp
from support.php_fpm import PhpFpm, php_fpm

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

SCRIPTS = {
    "hello.php": '<?php echo "Hello World\\n"; ?>',
    "index.php": '<?php echo "front controller\\n"; ?>',
    "sub/index.php": '<?php echo "sub index\\n"; ?>',
    "plain/readme.txt": "just text\n",
    "info.php": "<?php header('Content-Type: application/json');"
    " echo json_encode(['server' => $_SERVER, 'get' => $_GET, 'pool' => getenv('FPM_POOL')]);",
    "post.php": "<?php $b = file_get_contents('php://input');"
    " echo strlen($b), ' ', md5($b), ' ', $_POST['a'] ?? '-', ' ',"
    " $_SERVER['CONTENT_LENGTH'] ?? 'none', \"\\n\";",
    "headers.php": "<?php http_response_code(201); header('X-Made-By: php');"
    " setcookie('a', '1'); setcookie('b', '2'); echo \"made\\n\";",
    "redirect.php": "<?php header('Location: /hello.php');",
    "moved.php": "<?php header('Location: /hello.php', true, 301);",
    "missing.php": '<?php http_response_code(404); echo "no such thing\\n";',
    "length.php": "<?php header('Content-Length: 6'); echo \"sized\\n\";",
    "big.php": "<?php for ($i = 0; $i < 400; $i++) { echo str_repeat(chr(65 + $i % 26), 4096);"
    " flush(); }",
    "bigsized.php": "<?php header('Content-Length: ' . (400 * 4096));"
    " for ($i = 0; $i < 400; $i++) { echo str_repeat(chr(65 + $i % 26), 4096); flush(); }",
    "stderr.php": "<?php error_log('oops on stderr'); echo \"logged\\n\";",
    "slow.php": '<?php sleep(3); echo "late\\n";',
    "upload.jpg": '<?php echo "PWNED\\n"; ?>',
    "static/raw.php": '<?php echo "should not run\\n"; ?>',
    "style.css": "body { color: red }\n",
}


@dataclass
class Env:
    port: int
    root: Path
    tmp: Path
    fpm: PhpFpm

    def get(self, path: str, *args: str) -> Reply:
        return curl(self.port, path, *args, tmp=self.tmp)

    def info(self, path: str, *args: str) -> dict[str, object]:
        r = self.get(path, *args)
        assert r.status == 200, (r.status, r.body)
        data = json.loads(r.body)
        assert isinstance(data, dict)
        return data


def write_root(root: Path) -> None:
    for name, text in SCRIPTS.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def caddyfile(root: Path, fpm: PhpFpm, dead: int) -> str:
    return f"""
127.0.0.1:2015 {{
    root {root}
    rewrite /blog {{
        to /index.php
    }}
    fastcgi /unix {fpm.unix} php
    fastcgi /rr {fpm.tcp} php {{
        upstream {fpm.unix}
    }}
    fastcgi /dead 127.0.0.1:{dead} php
    fastcgi /slow.php {fpm.tcp} php {{
        read_timeout 1s
    }}
    fastcgi / {fpm.tcp} php {{
        except /static
        env MESHKIT_STATIC fixed
        env MESHKIT_HOST {{hostonly}}
        env MESHKIT_AGENT "{{>User-Agent}}"
    }}
}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("fcgi")
    root, tmp = base / "root", base / "tmp"
    root.mkdir()
    tmp.mkdir()
    write_root(root)
    for sub in ("unix", "rr", "dead"):
        (root / sub).mkdir()
        (root / sub / "info.php").write_text(SCRIPTS["info.php"])
    with php_fpm(base / "fpm") as fpm:
        dead = free_port()
        config = load_text(caddyfile(root, fpm, dead))
        config.raise_errors()
        site = config.sites[0]
        running = Running(build_chain(site))
        try:
            yield Env(running.port, root, tmp, fpm)
        finally:
            running.close()


def test_hello_world(env: Env) -> None:
    r = env.get("/hello.php")
    assert r.status == 200
    assert r.body == b"Hello World\n"
    assert r.headers["content-type"] == "text/html; charset=UTF-8"
    assert r.headers["content-length"] == "12"
    assert r.headers["server"] == "meshkit"


def test_index_php_for_folders(env: Env) -> None:
    assert env.get("/").body == b"front controller\n"
    assert env.get("/sub/").body == b"sub index\n"
    r = env.get("/sub")
    assert r.status == 301 and r.headers["location"] == "/sub/"
    # a folder without index.php is the file server's
    assert env.get("/plain/readme.txt").body == b"just text\n"


def test_static_files_fall_through(env: Env) -> None:
    r = env.get("/style.css")
    assert r.status == 200 and r.body == b"body { color: red }\n"
    assert "etag" in r.headers


def test_cgi_variables(env: Env) -> None:
    data = env.info("/info.php?x=1&y=two", "-H", "X-Custom: abc", "-A", "curl-test")
    s = data["server"]
    assert isinstance(s, dict)
    root = str(env.root)
    assert s["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert s["SERVER_SOFTWARE"] == "meshkit"
    assert s["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert s["REQUEST_METHOD"] == "GET"
    assert s["QUERY_STRING"] == "x=1&y=two"
    assert s["REQUEST_URI"] == "/info.php?x=1&y=two"
    assert s["DOCUMENT_ROOT"] == root
    assert s["DOCUMENT_URI"] == "/info.php"
    assert s["SCRIPT_NAME"] == "/info.php"
    assert s["SCRIPT_FILENAME"] == f"{root}/info.php"
    assert s["PATH_INFO"] == ""
    assert "PATH_TRANSLATED" not in s
    assert s["REMOTE_ADDR"] == "127.0.0.1"
    assert int(str(s["REMOTE_PORT"])) > 0
    assert s["SERVER_NAME"] == "127.0.0.1"
    assert s["SERVER_PORT"] == str(env.port)
    assert s["HTTP_HOST"] == f"127.0.0.1:{env.port}"
    assert s["HTTP_X_CUSTOM"] == "abc"
    assert s["HTTP_USER_AGENT"] == "curl-test"
    assert s["MESHKIT_STATIC"] == "fixed"
    assert s["MESHKIT_HOST"] == "127.0.0.1"
    assert s["MESHKIT_AGENT"] == "curl-test"
    assert data["get"] == {"x": "1", "y": "two"}


def test_path_info(env: Env) -> None:
    s = env.info("/info.php/some/where")["server"]
    assert isinstance(s, dict)
    assert s["SCRIPT_NAME"] == "/info.php"
    assert s["PATH_INFO"] == "/some/where"
    assert s["PATH_TRANSLATED"] == f"{env.root}/some/where"
    assert s["SCRIPT_FILENAME"] == f"{env.root}/info.php"
    assert s["REQUEST_URI"] == "/info.php/some/where"


def test_request_uri_is_the_original_after_rewrite(env: Env) -> None:
    r = env.get("/blog/2024/post?id=3")
    assert r.status == 200 and r.body == b"front controller\n"


def test_httpoxy_and_underscore_headers_dropped(env: Env) -> None:
    s = env.info("/info.php", "-H", "Proxy: http://203.0.113.9:1", "-H", "X_Forged: 1")["server"]
    assert isinstance(s, dict)
    assert "HTTP_PROXY" not in s
    assert "HTTP_X_FORGED" not in s


def test_post_bodies(env: Env) -> None:
    r = env.get("/post.php", "--data", "a=hello&b=2")
    assert r.status == 200
    body = b"a=hello&b=2"
    assert r.body == f"{len(body)} {hashlib.md5(body).hexdigest()} hello {len(body)}\n".encode()


def test_post_big_body_streamed(env: Env) -> None:
    data = os.urandom(700_000)
    f = env.tmp / "upload.bin"
    f.write_bytes(data)
    r = env.get("/post.php", "--data-binary", f"@{f}", "-H", "Content-Type: application/x-raw")
    assert r.status == 200
    assert r.body == f"{len(data)} {hashlib.md5(data).hexdigest()} - {len(data)}\n".encode()


def test_post_chunked_body(env: Env) -> None:
    data = b"z" * 100_000
    f = env.tmp / "chunked.bin"
    f.write_bytes(data)
    r = env.get(
        "/post.php",
        "--data-binary",
        f"@{f}",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Content-Type: application/octet-stream",
    )
    assert r.status == 200
    assert r.body == f"{len(data)} {hashlib.md5(data).hexdigest()} - {len(data)}\n".encode()


def test_status_and_headers_from_php(env: Env) -> None:
    r = env.get("/headers.php")
    assert r.status == 201
    assert r.headers["x-made-by"] == "php"
    assert r.body == b"made\n"
    head = (env.tmp / "head.txt").read_text()
    assert "Set-Cookie: a=1" in head and "Set-Cookie: b=2" in head


def test_location_gives_302_unless_status(env: Env) -> None:
    r = env.get("/redirect.php")
    assert r.status == 302 and r.headers["location"] == "/hello.php"
    r = env.get("/moved.php")
    assert r.status == 301 and r.headers["location"] == "/hello.php"
    assert env.get("/missing.php").status == 404


def test_content_length_from_script_kept(env: Env) -> None:
    r = env.get("/length.php")
    assert r.status == 200 and r.body == b"sized\n"
    assert r.headers["content-length"] == "6"


def test_head_request(env: Env) -> None:
    r = env.get("/hello.php", "-I")
    assert r.status == 200
    # PHP does not say how long the GET body would be: no length rather than a false 0
    assert "content-length" not in r.headers
    r = env.get("/length.php", "-I")
    assert r.status == 200 and r.headers["content-length"] == "6"


def test_big_response_streamed(env: Env) -> None:
    r = env.get("/big.php")
    assert r.status == 200
    expected = b"".join(bytes([65 + i % 26]) * 4096 for i in range(400))
    assert r.body == expected
    assert r.headers.get("transfer-encoding") == "chunked"


def test_big_response_with_its_length_streamed_plain(env: Env) -> None:
    r = env.get("/bigsized.php")
    assert r.status == 200
    assert r.body == b"".join(bytes([65 + i % 26]) * 4096 for i in range(400))
    assert r.headers["content-length"] == str(400 * 4096)  # the script's, kept
    assert "transfer-encoding" not in r.headers


def test_big_response_to_a_slow_client(env: Env) -> None:
    r = env.get("/big.php", "--limit-rate", "4M")
    assert len(r.body) == 400 * 4096


def test_split_safety_upload_trick(env: Env) -> None:
    # php-fpm's cgi.fix_pathinfo would run upload.jpg as PHP if this reached it
    r = env.get("/upload.jpg/x.php")
    assert r.status == 404
    assert b"PWNED" not in r.body
    r = env.get("/index.php.phpinfo.php")
    assert r.status == 404
    assert b"front controller" not in r.body


def test_except_paths_pass_through(env: Env) -> None:
    r = env.get("/static/raw.php")
    assert r.status == 200 and r.body == SCRIPTS["static/raw.php"].encode()


def test_unix_socket(env: Env) -> None:
    data = env.info("/unix/info.php")
    assert data["pool"] == "unix"


def test_round_robin_over_upstreams(env: Env) -> None:
    pools = [str(env.info("/rr/info.php")["pool"]) for _ in range(6)]
    assert sorted(set(pools)) == ["tcp", "unix"]
    assert pools.count("tcp") == 3


def test_unreachable_is_502_and_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="meshkit.web"):
        r = env.get("/dead/info.php")
    assert r.status == 502
    assert any("127.0.0.1:" in m and "connect" in m for m in caplog.messages), caplog.messages


def test_read_timeout_is_504(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="meshkit.web"):
        r = env.get("/slow.php")
    assert r.status == 504
    assert any(env.fpm.tcp in m and "timed out" in m for m in caplog.messages), caplog.messages


def test_stderr_goes_to_the_error_log(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="meshkit.web"):
        r = env.get("/stderr.php")
    assert r.status == 200 and r.body == b"logged\n"
    assert any("oops on stderr" in m and env.fpm.tcp in m for m in caplog.messages)


def test_php_fpm_restart_redials(env: Env) -> None:
    for _ in range(3):
        assert env.get("/hello.php").body == b"Hello World\n"
        assert env.info("/unix/info.php")["pool"] == "unix"
    env.fpm.restart()
    for _ in range(5):
        r = env.get("/hello.php")
        assert r.status == 200 and r.body == b"Hello World\n"
        assert env.info("/unix/info.php")["pool"] == "unix"


def test_more_requests_in_flight_than_children(env: Env) -> None:
    # 4 children per pool; 12 parallel slow-ish requests must all finish (no kept connection
    # may starve a new one waiting in php-fpm's listen queue)
    urls = [f"http://127.0.0.1:{env.port}/post.php" for _ in range(12)]
    import subprocess

    procs = [
        subprocess.Popen(
            ["curl", "-sS", "--max-time", "20", "--data", "a=x", u], stdout=subprocess.PIPE
        )
        for u in urls
    ]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert all(o.endswith(b" x 3\n") for o in outs), outs


def test_meshkit_web_process(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.php").write_text(SCRIPTS["hello.php"])
    with php_fpm(tmp_path / "fpm") as fpm:
        port = free_port()
        conf = tmp_path / "Caddyfile"
        conf.write_text(f"127.0.0.1:{port}\nroot {root}\nfastcgi / {fpm.tcp} php\n")
        proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)])
        try:
            wait_tcp(port, proc)
            r = curl(port, "/", tmp=tmp_path)
            assert r.status == 200 and r.body == b"Hello World\n"
            r = curl(port, "/index.php", tmp=tmp_path)
            assert r.status == 200 and r.body == b"Hello World\n"
        finally:
            proc.stop()
