"""Which requests the fastcgi directive takes, how paths split (safely), the CGI environment
it builds, and its Caddyfile parsing with errors naming file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.base.durations import DurationError, parse_duration
from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives.fastcgi import FastCGIConfig, FastCGIRule
from meshkit.web.fastcgi.client import Endpoint, parse_endpoint
from meshkit.web.fastcgi.env import Target, build_env, route, split_script
from meshkit.web.message import EmptyBody, Headers, Request

FILES = {"/index.php", "/info.php", "/upload.jpg", "/blog/index.php", "/a.php.txt", "/x.PHP"}


def is_file(path: str) -> bool:
    return path in FILES


def php_route(path: str, *, except_paths: tuple[str, ...] = (), base: str = "/") -> Target | None:
    return route(
        path,
        base=base,
        ext=".php",
        splits=[".php"],
        index_files=["index.php"],
        except_paths=except_paths,
        is_file=is_file,
    )


def test_split_only_at_segment_ends() -> None:
    assert split_script("/index.php", [".php"]) == ("/index.php", "")
    assert split_script("/index.php/a/b", [".php"]) == ("/index.php", "/a/b")
    # Caddy #758: the first ".php" anywhere is not a split point
    assert split_script("/index.php.phpinfo.php", [".php"]) == ("/index.php.phpinfo.php", "")
    assert split_script("/a.php/b.php/c", [".php"]) == ("/a.php", "/b.php/c")
    assert split_script("/a.phpx", [".php"]) is None
    assert split_script("/static/app.js", [".php"]) is None
    assert split_script("/X.PHP/y", [".php"]) == ("/X.PHP", "/y")
    # the earliest of several split extensions wins
    assert split_script("/a.php5/b.php", [".php", ".php5"]) == ("/a.php5", "/b.php")


def test_route_php_files_and_path_info() -> None:
    assert php_route("/info.php") == Target("/info.php", "")
    assert php_route("/info.php/more/path") == Target("/info.php", "/more/path")
    assert php_route("/x.PHP/y") == Target("/x.PHP", "/y")


def test_route_index_for_folders() -> None:
    assert php_route("/") == Target("/index.php", "")
    assert php_route("/blog/") == Target("/blog/index.php", "")
    assert php_route("/nothing/") is None  # a folder without index.php: the file server's


def test_route_split_safety() -> None:
    # never reaches php-fpm, whose fix_pathinfo would run upload.jpg as PHP
    assert php_route("/upload.jpg/x.php") is None
    assert php_route("/index.php.phpinfo.php") is None
    assert php_route("/missing.php") is None
    assert php_route("/missing.php/x") is None
    assert php_route("/a.php.txt") is None
    assert php_route("/upload.jpg") is None


def test_route_base_and_except() -> None:
    assert php_route("/info.php", base="/blog") is None
    assert php_route("/blog/", base="/blog") == Target("/blog/index.php", "")
    assert php_route("/info.php", except_paths=("/info",)) is None
    assert php_route("/index.php", except_paths=("/info",)) == Target("/index.php", "")


def test_route_ext_gate() -> None:
    # split .php but ext .html: a script without PATH_INFO must end in ext
    args = dict(base="/", splits=[".php"], index_files=[], except_paths=[], is_file=is_file)
    assert route("/info.php", ext=".html", **args) is None  # type: ignore[arg-type]
    assert route("/info.php/x", ext=".html", **args) == Target("/info.php", "/x")  # type: ignore[arg-type]


def test_route_without_split_takes_everything() -> None:
    t = route(
        "/app/x",
        base="/app",
        ext="",
        splits=[],
        index_files=[],
        except_paths=["/app/static"],
        is_file=lambda p: False,
    )
    assert t == Target("", "/app/x")
    assert (
        route(
            "/app/static/a.css",
            base="/app",
            ext="",
            splits=[],
            index_files=[],
            except_paths=["/app/static"],
            is_file=lambda p: False,
        )
        is None
    )


def make_request(**kw: object) -> Request:
    headers = Headers(
        [
            ("Host", "example.test:8080"),
            ("User-Agent", "ua"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "3"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("Accept", "x"),
            ("accept", "y"),
            ("Proxy", "http://198.51.100.1"),
            ("X_Forged", "1"),
        ]
    )
    base: dict[str, object] = dict(
        method="POST",
        uri="/index.php/a%20b?q=1",
        path="/index.php/a b",
        query="q=1",
        headers=headers,
        body=EmptyBody(b"abc"),
        host="example.test:8080",
        remote_addr="192.0.2.7",
        remote_port=51000,
        server_addr="127.0.0.1",
        server_port=8080,
    )
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def env_dict(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        out[k.decode()] = v.decode()
    return out


def test_build_env_cgi_variables() -> None:
    req = make_request()
    req.vars["user"] = "alice"
    e = env_dict(
        build_env(
            req,
            Target("/index.php", "/a b"),
            document_root="/srv/www",
            content_length=3,
            extra=[(b"APP_ENV", b"prod"), (b"SERVER_SOFTWARE", b"override")],
        )
    )
    assert e["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert e["REQUEST_METHOD"] == "POST"
    assert e["REQUEST_URI"] == "/index.php/a%20b?q=1"
    assert e["QUERY_STRING"] == "q=1"
    assert e["SCRIPT_NAME"] == e["DOCUMENT_URI"] == "/index.php"
    assert e["SCRIPT_FILENAME"] == "/srv/www/index.php"
    assert e["PATH_INFO"] == "/a b"
    assert e["PATH_TRANSLATED"] == "/srv/www/a b"
    assert e["DOCUMENT_ROOT"] == "/srv/www"
    assert e["SERVER_NAME"] == "example.test"
    assert e["SERVER_PORT"] == "8080"
    assert e["REMOTE_ADDR"] == "192.0.2.7" and e["REMOTE_PORT"] == "51000"
    assert e["REMOTE_USER"] == "alice"
    assert e["CONTENT_LENGTH"] == "3" and e["CONTENT_TYPE"] == "text/plain"
    assert e["HTTP_HOST"] == "example.test:8080"
    assert e["HTTP_USER_AGENT"] == "ua"
    assert e["HTTP_COOKIE"] == "a=1; b=2"
    assert e["HTTP_ACCEPT"] == "x, y"
    assert "HTTP_CONTENT_TYPE" not in e and "HTTP_CONTENT_LENGTH" not in e
    assert "HTTP_PROXY" not in e  # httpoxy
    assert "HTTP_X_FORGED" not in e
    assert e["APP_ENV"] == "prod"
    assert e["SERVER_SOFTWARE"] == "override"  # env lines come last and win
    assert "HTTPS" not in e


def test_build_env_original_uri_and_no_path_info() -> None:
    req = make_request(uri="/index.php", path="/index.php", query="", original_uri="/blog/x?y=1")
    e = env_dict(build_env(req, Target("/index.php", ""), document_root="/r", content_length=None))
    assert e["REQUEST_URI"] == "/blog/x?y=1"
    assert e["PATH_INFO"] == ""
    assert "PATH_TRANSLATED" not in e
    assert "CONTENT_LENGTH" not in e


# --- endpoints and durations ------------------------------------------------------------------


def test_parse_endpoint() -> None:
    assert parse_endpoint("127.0.0.1:9000") == Endpoint("127.0.0.1:9000", "127.0.0.1", 9000)
    assert parse_endpoint("[::1]:9000").host == "::1"
    assert parse_endpoint("unix:/run/php.sock").path == "/run/php.sock"
    assert parse_endpoint("fastcgi://localhost:9001").port == 9001
    for bad in ("127.0.0.1", "unix:", "[::1]9000", "host:0", "host:x", "::1:9000"):
        with pytest.raises(ValueError, match="endpoint"):
            parse_endpoint(bad)


def test_parse_duration() -> None:
    # fastcgi's timeouts take the one duration grammar (meshkit.base.durations) since issue 17.
    assert parse_duration("60s") == 60
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("0") == 0
    for bad in ("", "60", "1x", "s", "1.5.s"):
        with pytest.raises(DurationError):
            parse_duration(bad)


# --- the Caddyfile --------------------------------------------------------------------------


def rules_of(text: str) -> list[FastCGIRule]:
    config = load_text(text)
    assert not config.errors, config.errors
    cfg = config.sites[0].directives["fastcgi"]
    assert isinstance(cfg, FastCGIConfig)
    return cfg.rules


def test_caddyfile_php_preset_and_block(tmp_path: Path) -> None:
    rules = rules_of(
        f"127.0.0.1:2015\nroot {tmp_path}\n"
        "fastcgi / 127.0.0.1:9000 php {\n"
        "    root /srv/php\n"
        "    env APP_ENV prod\n"
        "    env HOST {host}\n"
        "    except /static /assets\n"
        "    upstream unix:/run/php.sock\n"
        "    upstream 127.0.0.2:9000\n"
        "    connect_timeout 5s\n"
        "    read_timeout 2m\n"
        "    send_timeout 1m30s\n"
        "    index index.php app.php\n"
        "}\n"
        "fastcgi /cgi 127.0.0.1:9001\n"
    )
    php, plain = rules
    assert php.ext == ".php" and php.split == [".php"] and php.index == ["index.php", "app.php"]
    assert php.root == "/srv/php"
    assert php.env == [("APP_ENV", "prod"), ("HOST", "{host}")]
    assert php.except_paths == ["/static", "/assets"]
    assert php.endpoints == ["127.0.0.1:9000", "unix:/run/php.sock", "127.0.0.2:9000"]
    assert (php.connect_timeout, php.read_timeout, php.send_timeout) == (5, 120, 90)
    assert plain.path == "/cgi" and plain.ext == "" and plain.split == []
    assert plain.read_timeout == 60 and plain.connect_timeout == 60 and plain.send_timeout == 60


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("fastcgi /\n", 2, "wrong argument count"),
        ("fastcgi / 127.0.0.1:9000 php extra\n", 2, "wrong argument count"),
        ("fastcgi / 127.0.0.1:9000 python\n", 2, "unknown fastcgi preset 'python'"),
        ("fastcgi / 127.0.0.1\n", 2, "endpoint '127.0.0.1'"),
        ("fastcgi php 127.0.0.1:9000\n", 2, "must start with '/'"),
        ("fastcgi / 127.0.0.1:9000 {\n  bogus 1\n}\n", 3, "unknown fastcgi option 'bogus'"),
        ("fastcgi / 127.0.0.1:9000 {\n  ext php\n}\n", 3, "invalid ext 'php'"),
        ("fastcgi / 127.0.0.1:9000 {\n\n  split\n}\n", 4, "wrong argument count"),
        ("fastcgi / 127.0.0.1:9000 {\n  env ONLY\n}\n", 3, "wrong argument count"),
        (
            "fastcgi / 127.0.0.1:9000 {\n  read_timeout 60\n}\n",
            3,
            'invalid duration "60" for read_timeout: a number needs a unit',
        ),
        ("fastcgi / 127.0.0.1:9000 {\n  send_timeout 0\n}\n", 3, "must be more than 0"),
        ("fastcgi / 127.0.0.1:9000 {\n  upstream nowhere\n}\n", 3, "endpoint 'nowhere'"),
        ("fastcgi / 127.0.0.1:9000 {\n  except static\n}\n", 3, "must start with '/'"),
        ("fastcgi / 127.0.0.1:9000 {\n  index a/b.php\n}\n", 3, "must be a file name"),
    ],
)
def test_caddyfile_errors_name_file_and_line(body: str, line: int, message: str) -> None:
    config = load_text("127.0.0.1:2015\n" + body, "Sitefile")
    assert config.errors, body
    text = str(config.errors[0])
    assert text.startswith(f"Sitefile:{line} - "), text
    assert message in text, text
