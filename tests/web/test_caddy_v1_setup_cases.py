"""Caddy v1's own setup tests, ported case by case: every Caddyfile input of the setup tests of
each core directive meshkit has (caddyhttp/*/setup_test.go, caddyhttp/proxy/upstream_test.go,
caddyhttp/index/index_test.go, caddyhttp/root/root_test.go, caddytls/setup_test.go), with
whether Caddy v1 accepts it, and for accepted ones the values its test reads where meshkit has
the same concept. Each case names the Go test it comes from (`TestName#N`: the N-th input of
its table, from 0, as the Go tests count).

A case whose outcome meshkit changes on purpose is a documented difference: `diff=` says why,
and the test asserts meshkit's (opposite) outcome, so the difference cannot drift unnoticed.
A case that shows a bug in a parser another change owns is `xfail(strict=True)` with the
reason. The inputs are the directive's tokens, as Caddy's NewTestController takes them; here
they sit in a site block (`:2015 { ... }`) and go through meshkit's whole Caddyfile loader.
`@T@` stands for a folder of files the cases need (a template, an htpasswd file, a
certificate and its key, a CA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshkit.web.caddyfile.load import Defaults, load_text
from support.tlscerts import issue, make_ca

Check = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Case:
    go: str  # the Go test and the index of the input in its table
    body: str  # the directive's tokens (`@T@`: the folder of test files)
    ok: bool  # whether Caddy v1 accepts it
    check: Check | None = None  # the parsed values v1's test reads (accepted cases)
    diff: str = ""  # meshkit does the opposite on purpose: why
    xfail: str = ""  # a bug in a parser another change owns: which, and what
    acme: bool = False  # load with automatic HTTPS on (a `tls` block naming no certificate)


NEGATIVE = (
    "a negative duration or count meant the same as 0 (off, or no limit) in v1; meshkit asks"
    " for the 0"
)
BROWSE_DOT = (
    "a path scope that is not a URL path (`.`) can never match a request: meshkit refuses it"
    " where v1 took it and never used it"
)
NO_UNVERIFIED_CLIENTS = (
    "Python's ssl module cannot ask for a client certificate without verifying it against"
    " CAs: `clients request|require` need CA files in meshkit (v1 took any certificate)"
)


def _rules(name: str) -> Check:
    return lambda d: d[name].rules


# --- gzip (caddyhttp/gzip/setup_test.go) -------------------------------------------------------

GZIP = [
    Case("gzip TestSetup (setup `gzip`)", "gzip", True),
    Case("gzip TestSetup#0", "gzip {", False),
    Case("gzip TestSetup#1", "gzip {}", False),
    Case("gzip TestSetup#2", "gzip a b", False),
    Case("gzip TestSetup#3", "gzip a {", False),
    Case("gzip TestSetup#4", "gzip { not f } ", False),
    Case("gzip TestSetup#5", "gzip { not } ", False),
    Case(
        "gzip TestSetup#6",
        "gzip { not /file\n ext .html\n level 1\n} ",
        True,
        lambda d: _eq(
            [(r.not_paths, r.ext, r.level) for r in d["gzip"].rules], [(["/file"], [".html"], 1)]
        ),
    ),
    Case("gzip TestSetup#7", "gzip { level 9 } ", True, lambda d: _eq(d["gzip"].rules[0].level, 9)),
    Case("gzip TestSetup#8", "gzip { ext } ", False),
    Case("gzip TestSetup#9", "gzip { ext /f\n} ", False),
    Case(
        "gzip TestSetup#10",
        "gzip { not /file\n ext .html\n level 1\n}\ngzip",
        True,
        lambda d: _eq(len(d["gzip"].rules), 2),
    ),
    Case("gzip TestSetup#11", 'gzip {\n ext ""\n}', True),
    Case(
        "gzip TestSetup#12",
        "gzip { not /file\n ext .html\n level 1\n}\ngzip { not /file1\n ext .htm\n level 3\n}\n",
        True,
        lambda d: _eq([r.level for r in d["gzip"].rules], [1, 3]),
    ),
    Case("gzip TestSetup#14", "gzip { not /file\n ext *\n level 1\n}\n", True),
    Case("gzip TestSetup#15", "gzip { not /file\n ext *\n level 1\n min_length ab\n}\n", False),
    Case(
        "gzip TestSetup#16",
        "gzip { not /file\n ext *\n level 1\n min_length 1000\n}\n",
        True,
        lambda d: _eq(d["gzip"].rules[0].min_length, 1000),
    ),
    Case(
        "gzip TestShouldAddResponseFilters",
        "gzip { min_length 654 }",
        True,
        lambda d: _eq(d["gzip"].rules[0].min_length, 654),
    ),
]

# --- header (caddyhttp/header/setup_test.go) ---------------------------------------------------

HEADER = [
    Case("header TestSetup", "header / Foo Bar", True),
    Case(
        "header TestHeadersParse#0",
        'header /foo Foo "Bar Baz"',
        True,
        lambda d: _eq(
            [(r.path, [(h.name, h.value) for h in r.headers]) for r in d["header"].rules],
            [("/foo", [("Foo", "Bar Baz")])],
        ),
    ),
    Case(
        "header TestHeadersParse#1",
        'header /bar {\n Foo "Bar Baz"\n Baz Qux\n Foobar\n}',
        True,
        lambda d: _eq(
            [(h.name, h.value) for h in d["header"].rules[0].headers],
            [("Foo", "Bar Baz"), ("Baz", "Qux"), ("Foobar", "")],
        ),
        xfail="header.py (another change, issue 22): a field name with no value is refused;"
        " v1 sets it to the empty value",
    ),
    Case("header TestHeadersParse#2", "header /foo {\n Foo Bar Baz\n}", False),
    Case("header TestHeadersParse#3", 'header /foo {\n Test "max-age=1814400";\n}', False),
]

# --- basicauth (caddyhttp/basicauth/setup_test.go) ---------------------------------------------


def _auth(*want: tuple[str, list[str], str]) -> Check:
    # v1's empty resource list (the whole site) is meshkit's ["/"]: the same scope
    return lambda d: _eq(
        [
            (r.username, [] if r.resources == ["/"] else r.resources, r.realm)
            for r in d["basicauth"].rules
        ],
        list(want),
    )


BASICAUTH = [
    Case("basicauth TestSetup", "basicauth user pwd", True),
    Case("basicauth TestBasicAuthParse#0", "basicauth user pwd", True, _auth(("user", [], ""))),
    Case(
        "basicauth TestBasicAuthParse#1", "basicauth user pwd {\n}", True, _auth(("user", [], ""))
    ),
    Case(
        "basicauth TestBasicAuthParse#2",
        "basicauth /resource1 user pwd {\n}",
        True,
        _auth(("user", ["/resource1"], "")),
    ),
    Case(
        "basicauth TestBasicAuthParse#3",
        "basicauth /resource1 user pwd {\n realm Resources\n}",
        True,
        _auth(("user", ["/resource1"], "Resources")),
    ),
    Case(
        "basicauth TestBasicAuthParse#4",
        "basicauth user pwd {\n /resource1\n /resource2\n}",
        True,
        _auth(("user", ["/resource1", "/resource2"], "")),
    ),
    Case(
        "basicauth TestBasicAuthParse#5",
        'basicauth user pwd {\n /resource1\n /resource2\n realm "Secure resources"\n}',
        True,
        _auth(("user", ["/resource1", "/resource2"], "Secure resources")),
    ),
    Case(
        "basicauth TestBasicAuthParse#6",
        'basicauth user pwd {\n /resource1\n realm "Secure resources"\n realm Extra\n'
        " /resource2\n}",
        False,
    ),
    Case(
        "basicauth TestBasicAuthParse#7",
        'basicauth user pwd {\n /resource1\n foo "Resources"\n /resource2\n}',
        False,
    ),
    Case(
        "basicauth TestBasicAuthParse#8",
        "basicauth /resource user pwd",
        True,
        _auth(("user", ["/resource"], "")),
    ),
    Case(
        "basicauth TestBasicAuthParse#9",
        "basicauth /res1 user1 pwd1\nbasicauth /res2 user2 pwd2",
        True,
        _auth(("user1", ["/res1"], ""), ("user2", ["/res2"], "")),
    ),
    Case("basicauth TestBasicAuthParse#10", "basicauth user", False),
    Case("basicauth TestBasicAuthParse#11", "basicauth", False),
    Case("basicauth TestBasicAuthParse#12", "basicauth /resource user pwd asdf", False),
    Case(
        "basicauth TestBasicAuthParse#13",
        "basicauth sha1 htpasswd=@T@/htpasswd",
        True,
        _auth(("sha1", [], "")),
    ),
]

# --- browse (caddyhttp/browse/setup_test.go) ---------------------------------------------------

BROWSE = [
    Case(
        "browse TestSetup#0",
        "browse @T@\nbrowse .",
        True,
        diff=BROWSE_DOT,
    ),
    Case("browse TestSetup#1", "browse /", True),
    Case("browse TestSetup#2", "browse . @T@/template.html", True, diff=BROWSE_DOT),
    Case("browse TestSetup#2 (with a / scope)", "browse / @T@/template.html", True),
    Case("browse TestSetup#3", "browse . @T@/no-such-template.html", False),
    Case("browse TestSetup#4", "browse @T@\nbrowse @T@", False),
    Case("browse TestSetup#6 (root missing)", "root @T@/no-such-dir\nbrowse", True),
]

# --- errors (caddyhttp/errors/setup_test.go) ---------------------------------------------------

ERRORS = [
    Case("errors TestSetup", "errors", True),
    Case("errors TestErrorsParse#0", "errors", True, lambda d: _eq(d["errors"].pages, {})),
    Case(
        "errors TestErrorsParse#1",
        "errors errors.txt",
        True,
        lambda d: _eq((d["errors"].log, d["errors"].pages), ("errors.txt", {})),
    ),
    Case(
        "errors TestErrorsParse#2", "errors visible", True, lambda d: _eq(d["errors"].visible, True)
    ),
    Case(
        "errors TestErrorsParse#3",
        "errors errors.txt {\n 404 404.html\n 500 500.html\n}",
        True,
        lambda d: _eq(d["errors"].pages, {"404": "404.html", "500": "500.html"}),
    ),
    Case(
        "errors TestErrorsParse#4",
        "errors errors.txt {\n rotate_size 2\n rotate_age 10\n rotate_keep 3\n rotate_compress\n}",
        True,
        lambda d: _eq(
            (d["errors"].roller.size_mb, d["errors"].roller.age_days, d["errors"].roller.keep),
            (2, 10, 3),
        ),
    ),
    Case(
        "errors TestErrorsParse#5",
        "errors errors.txt {\n rotate_size 3\n rotate_age 11\n rotate_keep 5\n 404 404.html\n"
        " 503 503.html\n}",
        True,
        lambda d: _eq(d["errors"].pages, {"404": "404.html", "503": "503.html"}),
    ),
    Case(
        "errors TestErrorsParse#6",
        "errors errors.txt {\n * generic_error.html\n 404 404.html\n 503 503.html\n}",
        True,
        lambda d: _eq(
            d["errors"].pages, {"*": "generic_error.html", "404": "404.html", "503": "503.html"}
        ),
    ),
    Case(
        "errors TestErrorsParse#7",
        "errors {\n 404 @T@/404.html\n}",
        True,
        lambda d: _eq(d["errors"].pages, {"404": "@T@/404.html"}),
    ),
    Case(
        "errors TestErrorsParse#8",
        "errors errors.txt { rotate_size 2 rotate_age 10 rotate_keep 3 rotate_compress }",
        False,  # each rotate_* reads the rest of its line (v1's RemainingArgs)
    ),
    Case("errors TestErrorsParse#9", "errors errors.txt {\n rotate_compress invalid\n}", False),
    Case(
        "errors TestErrorsParse#10",
        "errors {\n 503 503.html\n 503 503.html\n}",
        False,
        xfail="errors.py (another change, issue 22): duplicate status codes are accepted",
    ),
    Case(
        "errors TestErrorsParse#11",
        "errors {\n * generic_error.html\n * generic_error.html\n}",
        False,
        xfail="errors.py (another change, issue 22): a duplicate `*` page is accepted",
    ),
    Case("errors TestErrorsParse#12", "errors /path error.txt {\n 404 \n}", False),
    Case("errors TestErrorsParse#13", "errors /path error.txt", False),
    Case(
        "errors setup.go (Atoi, no range check)",
        "errors {\n 99 x.html\n}",
        True,
        diff="a status code outside 100-599 can never select an error page: meshkit refuses it"
        " where v1 took it and never used it",
    ),
]

# --- ext (caddyhttp/extensions/setup_test.go) --------------------------------------------------

EXT = [
    Case(
        "ext TestSetup",
        "ext .html .htm .php",
        True,
        lambda d: _eq(d["ext"], [".html", ".htm", ".php"]),
    ),
    Case(
        "ext TestExtParse#0",
        "ext .html .htm .php",
        True,
        lambda d: _eq(d["ext"], [".html", ".htm", ".php"]),
    ),
    Case(
        "ext TestExtParse#1",
        "ext .php .html .xml",
        True,
        lambda d: _eq(d["ext"], [".php", ".html", ".xml"]),
    ),
    Case(
        "ext TestExtParse#2",
        "ext .txt .php .xml",
        True,
        lambda d: _eq(d["ext"], [".txt", ".php", ".xml"]),
    ),
]

# --- fastcgi (caddyhttp/fastcgi/setup_test.go) -------------------------------------------------


def _fcgi(**want: Any) -> Check:
    def check(d: dict[str, Any]) -> None:
        rule = d["fastcgi"].rules[0]
        _eq({k: getattr(rule, k) for k in want}, want)

    return check


FASTCGI = [
    Case(
        "fastcgi TestSetup",
        "fastcgi / 127.0.0.1:9000",
        True,
        _fcgi(
            path="/",
            endpoints=["127.0.0.1:9000"],
            connect_timeout=60.0,
            read_timeout=60.0,
            send_timeout=60.0,
        ),
    ),
    Case(
        "fastcgi TestFastcgiParse#0",
        "fastcgi /blog 127.0.0.1:9000 php",
        True,
        _fcgi(path="/blog", ext=".php", split=[".php"], index=["index.php"], send_timeout=60.0),
    ),
    Case(
        "fastcgi TestFastcgiParse#1",
        "fastcgi / 127.0.0.1:9001 {\n split .html\n}",
        True,
        _fcgi(path="/", ext="", split=[".html"], index=[]),
    ),
    Case(
        "fastcgi TestFastcgiParse#2",
        "fastcgi / 127.0.0.1:9001 {\n split .html\n except /admin /user\n}",
        True,
        _fcgi(split=[".html"], except_paths=["/admin", "/user"]),
    ),
    Case(
        "fastcgi TestFastcgiParse#3",
        "fastcgi / 127.0.0.1:9001 {\n send_timeout 30s\n}",
        True,
        _fcgi(send_timeout=30.0),
    ),
    Case(
        "fastcgi TestFastCGIResolveSRV#0",
        "fastcgi / srv://fpm.tcp.service.consul {\n upstream yolo\n}",
        False,
    ),
    Case(
        "fastcgi TestFastCGIResolveSRV#1",
        "fastcgi / srv://fpm.tcp.service.consul",
        True,
        diff="meshkit's fastcgi has no SRV locators (the proxy has; fastcgi endpoints are"
        " host:port or unix sockets): refused at the line that names one",
    ),
]

# --- internal (caddyhttp/internalsrv/setup_test.go) --------------------------------------------

INTERNAL = [
    Case(
        "internal TestSetup",
        "internal /internal",
        True,
        lambda d: _eq(d["internal"], ["/internal"]),
    ),
    Case(
        "internal TestInternalParse#0",
        "internal",
        True,
        xfail="internal.py (another change, issue 22): `internal` with no path is refused",
    ),
    Case("internal TestInternalParse#1", "internal /internal", True),
    Case(
        "internal TestInternalParse#2",
        "internal /internal1\ninternal /internal2",
        True,
        lambda d: _eq(d["internal"], ["/internal1", "/internal2"]),
    ),
    Case(
        "internal TestInternalParse#3",
        "internal /internal1 /internal2",
        False,
        xfail="internal.py (another change, issue 22): several paths on one line are accepted;"
        " v1 takes one path per line",
    ),
]

# --- index (caddyhttp/index/index_test.go) -----------------------------------------------------

INDEX = [
    Case("index TestIndexIncompleteParams", "index", False),
    Case(
        "index TestIndex",
        "index a.html b.html c.html",
        True,
        lambda d: _eq(d["index"], ["a.html", "b.html", "c.html"]),
    ),
    Case("index TestPerSiteIndexPageIsolation", "index first.html", True),
]

# --- limits (caddyhttp/limits/setup_test.go) ---------------------------------------------------

KB = 1024

LIMITS = [
    Case(
        "limits TestParseLimits/catchAll",
        "limits 2kb",
        True,
        lambda d: _eq(
            (d["limits"].header, [(p.path, p.size) for p in d["limits"].body]),
            (2 * KB, [("/", 2 * KB)]),
        ),
    ),
    Case(
        "limits TestParseLimits/onlyHeader",
        "limits {\n header 2kb\n}",
        True,
        lambda d: _eq((d["limits"].header, d["limits"].body), (2 * KB, [])),
    ),
    Case(
        "limits TestParseLimits/onlyBody",
        "limits {\n body 2kb\n}",
        True,
        lambda d: _eq([(p.path, p.size) for p in d["limits"].body], [("/", 2 * KB)]),
    ),
    Case(
        "limits TestParseLimits/onlyBodyWithPath",
        "limits {\n body /test 2kb\n}",
        True,
        lambda d: _eq([(p.path, p.size) for p in d["limits"].body], [("/test", 2 * KB)]),
    ),
    Case(
        "limits TestParseLimits/mixture",
        "limits {\n header 1kb\n body 2kb\n body /bar 3kb\n}",
        True,
        lambda d: _eq(
            (d["limits"].header, [(p.path, p.size) for p in d["limits"].body]),
            (1 * KB, [("/bar", 3 * KB), ("/", 2 * KB)]),
        ),
    ),
    Case("limits TestParseLimits/invalidFormat", "limits a b", False),
    Case("limits TestParseLimits/invalidHeaderFormat", "limits {\n header / 100\n}", False),
    Case("limits TestParseLimits/invalidBodyFormat", "limits {\n body / 100 200\n}", False),
    Case("limits TestParseLimits/invalidKind", "limits {\n head 100\n}", False),
    Case("limits TestParseLimits/invalidLimitSize", "limits 10bk", False),
    # TestParseArguments: the sizes, each as `limits { body PATH SIZE }`
    Case("limits TestParseArguments#0", "limits {\n body / 123.5\n}", False),
    Case("limits TestParseArguments#1", "limits {\n body / 200LB\n}", False),
    Case("limits TestParseArguments#2", "limits {\n body / path:999MB\n}", False),
    Case("limits TestParseArguments#3", "limits {\n body / 1_234_567\n}", False),
    Case("limits TestParseArguments#4", "limits {\n body / 0MB\n}", False),
    Case(
        "limits TestParseArguments#6",
        "limits {\n body / 100\n}",
        True,
        lambda d: _eq([(p.path, p.size) for p in d["limits"].body], [("/", 100)]),
    ),
    Case(
        "limits TestParseArguments#9",
        "limits {\n body / 100GB\n}",
        True,
        lambda d: _eq([(p.path, p.size) for p in d["limits"].body], [("/", 100 * 1024**3)]),
    ),
    Case(
        "limits TestParseArguments#10",
        "limits {\n body index 100\n}",
        True,
        lambda d: _eq([(p.path, p.size) for p in d["limits"].body], [("/index", 100)]),
    ),
    Case(
        "limits TestParseArguments#13 (duplicates: the last wins)",
        "limits {\n body /home 999\n body /home 12345MB\n}",
        True,
        lambda d: _eq([(p.path, p.size) for p in d["limits"].body], [("/home", 12345 * 1024**2)]),
    ),
]

# --- log (caddyhttp/log/setup_test.go) ---------------------------------------------------------

COMMON = '{remote} - {user} [{when}] "{method} {uri} {proto}" {status} {size}'
COMBINED = COMMON + ' "{>Referer}" "{>User-Agent}"'


def _log(*want: tuple[str, str, str]) -> Check:
    return lambda d: _eq([(e.path, e.output, e.format) for e in d["log"].entries], list(want))


LOG = [
    Case("log TestSetup", "log", True, _log(("/", "access.log", COMMON))),
    Case("log TestLogParse#0", "log", True, _log(("/", "access.log", COMMON))),
    Case("log TestLogParse#1", "log log.txt", True, _log(("/", "log.txt", COMMON))),
    Case(
        "log TestLogParse#2",
        "log syslog://127.0.0.1:5000",
        True,
        _log(("/", "syslog://127.0.0.1:5000", COMMON)),
    ),
    Case(
        "log TestLogParse#3",
        "log syslog+tcp://127.0.0.1:5000",
        True,
        _log(("/", "syslog+tcp://127.0.0.1:5000", COMMON)),
    ),
    Case("log TestLogParse#4", "log /api log.txt", True, _log(("/api", "log.txt", COMMON))),
    Case("log TestLogParse#5", "log /serve stdout", True, _log(("/serve", "stdout", COMMON))),
    Case(
        "log TestLogParse#6",
        "log /myapi log.txt {common}",
        True,
        _log(("/myapi", "log.txt", COMMON)),
    ),
    Case(
        "log TestLogParse#7",
        'log /myapi log.txt "prefix {common} suffix"',
        True,
        _log(("/myapi", "log.txt", f"prefix {COMMON} suffix")),
    ),
    Case(
        "log TestLogParse#8",
        "log /test accesslog.txt {combined}",
        True,
        _log(("/test", "accesslog.txt", COMBINED)),
    ),
    Case(
        "log TestLogParse#9",
        'log /test accesslog.txt "prefix {combined} suffix"',
        True,
        _log(("/test", "accesslog.txt", f"prefix {COMBINED} suffix")),
    ),
    Case(
        "log TestLogParse#10",
        "log /api1 log.txt\nlog /api2 accesslog.txt {combined}",
        True,
        _log(("/api1", "log.txt", COMMON), ("/api2", "accesslog.txt", COMBINED)),
    ),
    Case(
        "log TestLogParse#11",
        "log /api3 stdout {host}\nlog /api4 log.txt {when}",
        True,
        _log(("/api3", "stdout", "{host}"), ("/api4", "log.txt", "{when}")),
    ),
    Case(
        "log TestLogParse#12",
        "log access.log {\n rotate_size 2\n rotate_age 10\n rotate_keep 3\n rotate_compress\n}",
        True,
        lambda d: _eq(
            (d["log"].entries[0].roller.size_mb, d["log"].entries[0].roller.keep), (2, 3)
        ),
    ),
    Case("log TestLogParse#13", "log access0.log {\n ipmask 255.255.255.0\n}", True),
    Case(
        "log TestLogParse#14",
        'log access1.log {\n ipmask "" ffff:ffff:ffff:ff00::\n}',
        True,
        xfail="log.py (another change, issue 22): an empty IPv4 ipmask is refused",
    ),
    Case(
        "log TestLogParse#15",
        "log access2.log {\n ipmask 255.255.255.0 ffff:ffff:ffff:ff00::\n}",
        True,
    ),
    Case(
        "log TestLogParse#16",
        "log / stdout {host}\nlog / log.txt {when}",
        True,
        _log(("/", "stdout", "{host}"), ("/", "log.txt", "{when}")),
    ),
    Case(
        "log TestLogParse#17",
        "log access.log { rotate_size 2 rotate_age 10 rotate_keep 3 }",
        False,  # each rotate_* reads the rest of its line (v1's RemainingArgs)
    ),
    Case("log TestLogParse#18", "log access.log { rotate_compress invalid }", False),
    Case("log TestLogParse#19", "log access.log { rotate_size }", False),
    Case("log TestLogParse#20", "log access.log { ipmask }", False),
    Case("log TestLogParse#21", "log access.log { invalid_option 1 }", False),
    Case(
        "log TestLogParse#22",
        'log / acccess.log "{remote} - [{when}] "{method} {port}" {scheme} {mitm} "',
        False,
    ),
]

# --- mime (caddyhttp/mime/setup_test.go) -------------------------------------------------------

MIME = [
    Case(
        "mime TestSetup",
        "mime .txt text/plain",
        True,
        lambda d: _eq(d["mime"], {".txt": "text/plain"}),
    ),
    Case("mime TestSetup#0", "mime {", False),
    Case("mime TestSetup#1", "mime {}", False),
    Case("mime TestSetup#2", "mime a b", False),
    Case("mime TestSetup#3", "mime a {", False),
    Case("mime TestSetup#4", "mime { txt f } ", False),
    Case("mime TestSetup#5", "mime { html } ", False),
    Case(
        "mime TestSetup#6",
        "mime {\n .html text/html\n .txt text/plain\n} ",
        True,
        lambda d: _eq(d["mime"], {".html": "text/html", ".txt": "text/plain"}),
    ),
    Case(
        "mime TestSetup#7", "mime {\n .foo text/foo\n .bar text/bar\n .foo text/foobar\n} ", False
    ),
    Case(
        "mime TestSetup#8",
        "mime { .html text/html } ",
        True,
        lambda d: _eq(d["mime"], {".html": "text/html"}),
    ),
    Case("mime TestSetup#9", "mime { .html\n} ", False),
    Case("mime TestSetup#10", "mime .txt text/plain", True),
]

# --- proxy (caddyhttp/proxy/setup_test.go, upstream_test.go) -----------------------------------


def _hosts(*names: str) -> Check:
    return lambda d: _eq(sorted(u.name for u in d["proxy"].rules[0].upstreams), sorted(names))


PROXY = [
    Case("proxy TestSetup#0", "proxy / localhost:80", True, _hosts("localhost:80")),
    Case(
        "proxy TestSetup#1",
        "proxy / localhost:8080-8082",
        True,
        _hosts("localhost:8080", "localhost:8081", "localhost:8082"),
    ),
    Case(
        "proxy TestSetup#2",
        "proxy / {\n upstream localhost:8080\n}",
        True,
        _hosts("localhost:8080"),
    ),
    Case(
        "proxy TestSetup#3",
        "proxy / {\n upstream localhost:8080-8081\n}",
        True,
        _hosts("localhost:8080", "localhost:8081"),
    ),
    Case(
        "proxy TestSetup#4",
        "proxy / localhost:8080 {\n upstream localhost:8081-8082\n}",
        True,
        _hosts("localhost:8080", "localhost:8081", "localhost:8082"),
    ),
    Case(
        "proxy TestSetup#5",
        "proxy / localhost:8080 {\n upstream unix:/var/foo\n}",
        True,
        _hosts("localhost:8080", "unix:/var/foo"),
    ),
    Case("proxy TestSetup#6", "proxy / localhost:8090-8080", False),
    Case("proxy TestSetup#7", "proxy / {\n upstream localhost:80-A\n}", False),
    Case(
        "proxy TestSetup#8",
        "proxy / http://localhost {\n upstream testendpoint\n}",
        True,
        _hosts("localhost:80", "testendpoint:80"),
    ),
    Case(
        "proxy TestSetup#9",
        "proxy / localhost:8080 {\n upstream localhost:8081-8082\n upstream localhost:8083-8085\n}",
        True,
        _hosts(*(f"localhost:{p}" for p in range(8080, 8086))),
    ),
    Case(
        "proxy TestSetup#10",
        "proxy / http://localhost:8001/a--b",
        True,
        _hosts("localhost:8001/a--b"),
    ),
    Case(
        "proxy TestSetup#11",
        "proxy / http://localhost:8001-8005/a--b",
        True,
        _hosts(*(f"localhost:{p}/a--b" for p in range(8001, 8006))),
    ),
    Case(
        "proxy TestSetup#12",
        "proxy / localhost:1984 {\n header_upstream -server \n}",
        True,
        lambda d: _eq(
            [(h.op, h.name) for h in d["proxy"].rules[0].header_upstream], [("del", "server")]
        ),
    ),
    Case(
        "proxy TestSetup#13",
        "proxy / localhost:1984 {\n header_downstream -server \n}",
        True,
        lambda d: _eq(
            [(h.op, h.name) for h in d["proxy"].rules[0].header_downstream], [("del", "server")]
        ),
    ),
    Case(
        "proxy TestSetup#14",
        "proxy / quic://localhost:443",
        True,
        diff="meshkit has no QUIC (HTTP/3) upstreams: a quic:// upstream is refused by name",
    ),
    Case(
        "proxy TestParseBlockHealthCheck#1",
        "proxy / localhost:8080 {\n health_check /health\n health_check_interval 10s\n"
        " health_check_timeout 20s\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check_interval, d["proxy"].rules[0].health_check_timeout),
            (10.0, 20.0),
        ),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#2",
        "proxy / localhost:8080 {\n health_check_interval 10s\n health_check_timeout 20s\n"
        " health_check /health\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check_interval, d["proxy"].rules[0].health_check_timeout),
            (10.0, 20.0),
        ),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#3",
        "proxy / localhost:8080 {\n health_check /health\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check_interval, d["proxy"].rules[0].health_check_timeout),
            (30.0, 60.0),
        ),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#4",
        "proxy / localhost:8080 {\n health_check /health\n health_check_interval 15s\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].health_check_interval, 15.0),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#5",
        "proxy / localhost:8080 {\n health_check /health\n health_check_timeout 15s\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].health_check_timeout, 15.0),
    ),
    Case(
        # parseBlock returns "unknown property" for the misspelt option (the Go test ignores
        # the error and checks the defaults): v1 refuses the Caddyfile
        "proxy TestParseBlockHealthCheck#6",
        "proxy / localhost:8080 {\n health_check /health health_check_time 15s\n}",
        False,
    ),
    Case(
        "proxy TestParseBlock#1",
        "proxy / localhost:8080 {\n transparent \n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].transparent, True),
    ),
    Case(
        "proxy TestParseBlock#2",
        "proxy / localhost:8080 {\n transparent \nheader_upstream X-Test Tester \n}",
        True,
    ),
    Case(
        "proxy TestParseBlock#3",
        "proxy / localhost:8080 {\n transparent \n} \n"
        "proxy /api localhost:8081 { \ntransparent \n}",
        True,
        lambda d: _eq([r.transparent for r in d["proxy"].rules], [True, True]),
    ),
    Case("proxy TestHealthSetUp#1", "proxy / localhost:8080 {\n health_check / \n}", True),
    Case(
        "proxy TestHealthSetUp#2",
        "proxy / localhost:8080 {\n health_check / \n insecure_skip_verify \n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].insecure_skip_verify, True),
    ),
    Case(
        "proxy TestHealthCheckHost#4",
        "proxy / localhost:8080 {\n health_check / \n header_upstream Host {host} \n}",
        True,
    ),
    Case(
        "proxy TestHealthCheckPort#1",
        "proxy / localhost:8080 {\n health_check / health_check_port 9002\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check, d["proxy"].rules[0].health_check_port), ("/", 9002)
        ),
    ),
    Case(
        "proxy TestHealthCheckPort#2",
        "proxy / localhost {\n health_check / health_check_port 9002\n}",
        True,
    ),
    Case(
        "proxy TestHealthCheckPort/valid_port#1",
        "proxy / localhost {\n health_check / health_check_port\n}",
        False,
    ),
    Case(
        "proxy TestHealthCheckPort/valid_port#2",
        "proxy / localhost {\n health_check / health_check_port abc\n}",
        False,
    ),
    Case(
        "proxy TestHealthCheckPort/valid_port#3",
        "proxy / localhost {\n health_check / health_check_port -1\n}",
        False,
    ),
    Case(
        "proxy TestHealthCheckContentString#1",
        "proxy / localhost:9002 { health_check /testhealth  health_check_contains good\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check, d["proxy"].rules[0].health_check_contains),
            ("/testhealth", "good"),
        ),
    ),
    Case(
        "proxy TestHealthCheckContentString#2",
        "proxy / localhost:9002 {\n health_check /testhealth health_check_port 9002 \n"
        " health_check_contains bad\n}",
        True,
    ),
    Case(
        "proxy TestQuicHost#1",
        "proxy / quic://localhost:8080",
        True,
        diff="meshkit has no QUIC (HTTP/3) upstreams",
    ),
    Case(
        "proxy TestParseSRVBlock#0",
        "proxy / srv://bogus.service",
        True,
        lambda d: _eq(d["proxy"].rules[0].upstreams[0].name, "srv://bogus.service"),
    ),
    Case("proxy TestParseSRVBlock#1", "proxy / srv://bogus.service:80", False),
    Case(
        "proxy TestParseSRVBlock#2",
        "proxy / srv://bogus.service srv://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#3",
        "proxy / srv://bogus.service http://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#4",
        "proxy / http://bogus.service srv://bogus.service.fallback",
        False,
    ),
    Case("proxy TestParseSRVBlock#5", "proxy / srv://bogus.service bogus.service.fallback", False),
    Case(
        "proxy TestParseSRVBlock#6",
        "proxy / srv://bogus.service {\n upstream srv://bogus.service\n}",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#7",
        "proxy / srv+https://bogus.service",
        True,
        lambda d: _eq(d["proxy"].rules[0].upstreams[0].name, "srv+https://bogus.service"),
    ),
    Case("proxy TestParseSRVBlock#8", "proxy / srv+https://bogus.service:80", False),
    Case(
        "proxy TestParseSRVBlock#9",
        "proxy / srv+https://bogus.service srv://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#10",
        "proxy / srv+https://bogus.service http://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#11",
        "proxy / http://bogus.service srv+https://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#12",
        "proxy / srv+https://bogus.service bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#13",
        "proxy / srv+https://bogus.service {\n upstream srv://bogus.service\n}",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#14",
        "proxy / srv+https://bogus.service {\n health_check_port 96\n}",
        False,
    ),
    # parseBlock itself (caddyhttp/proxy/upstream.go), for the options no table covers
    Case(
        "proxy parseBlock policy header (no name)",
        "proxy / localhost:8080 {\n policy header\n}",
        True,
        diff="v1 took `policy header` without a field name and then picked no upstream for any"
        " request (502 always); meshkit refuses it",
    ),
    Case("proxy parseBlock policy cookie", "proxy / localhost:8080 {\n policy cookie\n}", False),
    Case(
        "proxy parseBlock policy uri_hash",
        "proxy / localhost:8080 {\n policy uri_hash\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].policy, "uri_hash"),
    ),
    Case(
        "proxy parseBlock fail_timeout -1s (ParseDuration)",
        "proxy / localhost:8080 {\n fail_timeout -1s\n}",
        True,
        diff=NEGATIVE,
    ),
    Case(
        "proxy parseBlock max_conns -1 (ParseInt)",
        "proxy / localhost:8080 {\n max_conns -1\n}",
        True,
        diff=NEGATIVE,
    ),
    Case(
        "proxy parseBlock health_check_port 0 (n < 0 only)",
        "proxy / localhost:8080 {\n health_check / \n health_check_port 0\n}",
        True,
        diff="port 0 can never be probed (v1 then marked every upstream down); meshkit refuses it",
    ),
    Case(
        "proxy parseBlock policy random extra (one optional argument)",
        "proxy / localhost:8080 {\n policy random extra\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].policy, "random"),
    ),
    Case("proxy parseBlock keepalive -1", "proxy / localhost:8080 {\n keepalive -1\n}", False),
    Case(
        "proxy parseBlock keepalive 0",
        "proxy / localhost:8080 {\n keepalive 0\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].keepalive, 0),
    ),
    Case("proxy parseBlock timeout", "proxy / localhost:8080 {\n timeout 5x\n}", False),
    Case(
        "proxy parseBlock timeout 5s",
        "proxy / localhost:8080 {\n timeout 5s\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].timeout, 5.0),
    ),
    Case(
        "proxy parseBlock fallback_delay",
        "proxy / localhost:8080 {\n fallback_delay 150ms\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].fallback_delay, 0.15),
    ),
    Case(
        "proxy parseBlock fallback_delay (none)",
        "proxy / localhost:8080 {\n fallback_delay\n}",
        False,
    ),
    Case(
        "proxy parseBlock header_upstream replace",
        'proxy / localhost:8080 {\n header_upstream X-A "^(.*)$" "v=$1"\n}',
        True,
        lambda d: _eq(
            [(h.op, h.name, h.regex, h.value) for h in d["proxy"].rules[0].header_upstream],
            [("replace", "X-A", "^(.*)$", "v=$1")],
        ),
    ),
    Case(
        "proxy parseBlock header_upstream replace +",
        "proxy / localhost:8080 {\n header_upstream +X a b\n}",
        False,
    ),
    Case(
        "proxy parseBlock header_downstream bad regexp",
        "proxy / localhost:8080 {\n header_downstream X ( b\n}",
        False,
    ),
    Case(
        "proxy parseBlock header_upstream -NAME VALUE",
        "proxy / localhost:8080 {\n header_upstream -X ignored\n}",
        True,
        lambda d: _eq(
            [(h.op, h.name) for h in d["proxy"].rules[0].header_upstream], [("del", "X")]
        ),
    ),
    Case(
        "proxy parseBlock ca_certificates",
        "proxy / https://localhost {\n ca_certificates @T@/ca.crt\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].ca_certificates, ["@T@/ca.crt"]),
    ),
    Case(
        "proxy parseBlock ca_certificates (none)",
        "proxy / https://localhost {\n ca_certificates\n}",
        False,
    ),
    Case(
        "proxy parseBlock ca_certificates (not PEM)",
        "proxy / https://localhost {\n ca_certificates @T@/404.html\n}",
        False,
    ),
    Case(
        "proxy parseBlock ca_certificates + insecure_skip_verify",
        "proxy / https://localhost {\n insecure_skip_verify\n ca_certificates @T@/ca.crt\n}",
        False,
    ),
    Case("proxy parseBlock upstream (two on a line)", "proxy / {\n upstream a:1 b:2\n}", False),
    Case(
        "proxy parseUpstream range 8080-8080",
        "proxy / localhost:8080-8080",
        False,
        diff="a range of one port is that port: meshkit takes it (v1's `pEnd <= pIni` refused"
        " it); a backwards range is refused by both",
    ),
    Case("proxy parseUpstream range 1-2-3", "proxy / localhost:1-2-3", False),
    Case(
        "proxy TestStop (config)",
        "proxy / http://127.0.0.1:9 {\n health_check /healthcheck \nhealth_check_interval 5ms \n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].health_check_interval, 0.005),
    ),
]

# --- redir (caddyhttp/redirect/setup_test.go) --------------------------------------------------


def _redir(*want: tuple[str, str, int]) -> Check:
    return lambda d: _eq([(r.from_path, r.to, r.code) for r in d["redir"].rules], list(want))


REDIR = [
    Case("redir TestSetup#0", "redir 300 {\n/ /foo\n}", True, _redir(("/", "/foo", 300))),
    Case("redir TestSetup#1", "redir 9000 {\n/ /foo\n}", False),
    Case("redir TestSetup#2", "redir 300 {\n/ /foo 9000\n}", False),
    Case("redir TestSetup#3", "redir 9000 {\n/ /foo 300\n}", False),
    Case("redir TestSetup#4", "redir 302 {\n/foo\n}", True, _redir(("/", "/foo", 302))),
    Case("redir TestSetup#5", "redir {\n/bar /foo 303\n}", True, _redir(("/bar", "/foo", 303))),
    Case("redir TestSetup#6", "redir /foo", True, _redir(("/", "/foo", 301))),
    Case("redir TestSetup#7", "redir /bar /foo 303", True, _redir(("/bar", "/foo", 303))),
    Case(
        "redir TestSetup#8",
        "redir {\n / /foo 304 \n} \n redir {\n /bar /foobar 305 \n}",
        True,
        _redir(("/", "/foo", 304), ("/bar", "/foobar", 305)),
    ),
    Case("redir TestSetup#9", "redir {\n /bar /foo 304 \n} redir {\n /bar /foo 304 \n}", False),
    Case("redir TestSetup#10", "redir 300 {\n/ /foo 301\n}", True, _redir(("/", "/foo", 301))),
    Case(
        "redir TestSetup#11",
        "redir {\n if {port} is 80\n/ /foo\n}",
        True,
        _redir(("/", "/foo", 301)),
    ),
    Case(
        "redir TestSetup#12",
        "redir 300 {\n if {port} is 80\n/ /foo\n}",
        True,
        _redir(("/", "/foo", 300)),
    ),
]

# --- rewrite (caddyhttp/rewrite/setup_test.go) -------------------------------------------------


def _rw(**want: Any) -> Check:
    def check(d: dict[str, Any]) -> None:
        rules = d["rewrite"].rules
        _eq([{k: getattr(r, k) for k in want} for r in rules][:1], [want])

    return check


REWRITE = [
    Case("rewrite TestSetup", "rewrite /from /to", True, lambda d: _eq(len(d["rewrite"].rules), 1)),
    Case(
        "rewrite TestRewriteParse/simple#0",
        "rewrite /from /to",
        True,
        _rw(regexp="/from", to=["/to"]),
    ),
    Case(
        "rewrite TestRewriteParse/simple#1",
        "rewrite /from /to\nrewrite a b",
        True,
        lambda d: _eq(
            [(r.regexp, r.to) for r in d["rewrite"].rules], [("/from", ["/to"]), ("a", ["b"])]
        ),
    ),
    Case("rewrite TestRewriteParse/simple#2", "rewrite a", False),
    Case("rewrite TestRewriteParse/simple#3", "rewrite", False),
    Case(
        "rewrite TestRewriteParse/simple#4", "rewrite a b c", True, _rw(regexp="a", to=["b", "c"])
    ),
    Case(
        "rewrite TestRewriteParse/simple#5",
        "rewrite not a b c",
        True,
        _rw(regexp="a", to=["b", "c"], negate=True),
    ),
    Case(
        "rewrite TestRewriteParse/regexp#0",
        "rewrite {\n r .*\n to /to /index.php?\n}",
        True,
        _rw(base="/", regexp=".*", to=["/to", "/index.php?"]),
    ),
    Case(
        "rewrite TestRewriteParse/regexp#1",
        "rewrite {\n regexp .*\n to /to\n ext / html txt\n}",
        True,
        _rw(base="/", regexp=".*", to=["/to"], ext=["/", "html", "txt"]),
        diff="an extension without its dot can never match in v1 (Go's path.Ext keeps the"
        " dot), so v1 took `ext html` and ignored it in effect; meshkit refuses it by name",
    ),
    Case(
        "rewrite TestRewriteParse/regexp#1 (with dots)",
        "rewrite {\n regexp .*\n to /to\n ext / .html .txt\n}",
        True,
        _rw(base="/", regexp=".*", to=["/to"], ext=["/", ".html", ".txt"]),
    ),
    Case(
        "rewrite TestRewriteParse/regexp#2",
        "rewrite /path {\n r rr\n to /dest\n}\nrewrite / {\n regexp [a-z]+\n to /to /to2\n}\n",
        True,
        lambda d: _eq(
            [(r.base, r.regexp, r.to) for r in d["rewrite"].rules],
            [("/path", "rr", ["/dest"]), ("/", "[a-z]+", ["/to", "/to2"])],
        ),
    ),
    Case("rewrite TestRewriteParse/regexp#3", "rewrite {\n r .*\n}", False),
    Case("rewrite TestRewriteParse/regexp#4", "rewrite {\n\n}", False),
    Case("rewrite TestRewriteParse/regexp#5", "rewrite /", False),
    Case(
        "rewrite TestRewriteParse/regexp#6",
        "rewrite {\n if {path} match /\n to /to\n}",
        True,
        _rw(base="/", to=["/to"]),
    ),
]

# --- root (caddyhttp/root/root_test.go) --------------------------------------------------------

ROOT = [
    Case("root TestRoot#0", "root @T@/highly_unlikely_to_exist_dir", True),
    Case("root TestRoot#1", "root @T@", True),
    Case("root TestRoot#2", "root ", False),
    Case("root TestRoot#4", "root {\n @T@\n}", False),
]

# --- status (caddyhttp/status/setup_test.go) ---------------------------------------------------

STATUS = [
    Case("status TestSetup", "status 404 /foo", True, lambda d: _eq(len(d["status"].rules), 1)),
    Case("status TestStatusParse#0", "status", False),
    Case("status TestStatusParse#1", "status /foo", False),
    Case("status TestStatusParse#2", "status bar /foo", False),
    Case("status TestStatusParse#3", "status 404 /foo bar", False),
    Case(
        "status TestStatusParse#4",
        "status 404 /foo",
        True,
        lambda d: _eq([(r.path, r.code) for r in d["status"].rules], [("/foo", 404)]),
    ),
    Case("status TestStatusParse#5", "status {\n}", False),
    Case("status TestStatusParse#6", "status 404 {\n}", False),
    Case("status TestStatusParse#7", "status 404 {\n /foo\n /foo\n}", False),
    Case("status TestStatusParse#8", "status 404 {\n 404 /foo\n}", False),
    Case(
        "status TestStatusParse#9",
        "status 404 {\n /foo\n /bar\n}",
        True,
        lambda d: _eq(
            sorted((r.path, r.code) for r in d["status"].rules), [("/bar", 404), ("/foo", 404)]
        ),
    ),
]

# --- tls (caddytls/setup_test.go) --------------------------------------------------------------

TLS = [
    Case(
        "tls TestSetupParseBasic",
        "tls @T@/cert.pem @T@/key.pem",
        True,
        lambda d: _eq((d["tls"].cert, d["tls"].key), ("@T@/cert.pem", "@T@/key.pem")),
    ),
    Case("tls TestSetupParseIncompleteParams", "tls", False),
    Case(
        "tls TestSetupParseWithOptionalParams",
        "tls @T@/cert.pem @T@/key.pem {\n protocols tls1.0 tls1.2\n ciphers RSA-AES256-CBC-SHA"
        " ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384\n must_staple\n"
        " alpn http/1.1\n}",
        True,
        diff="meshkit refuses TLS 1.0 and 1.1 (OpenSSL 3 and RFC 8996 deprecate them), and has no"
        " OCSP must-staple: `protocols tls1.0 ...` and `must_staple` are refused by name",
    ),
    Case(
        "tls TestSetupDefaultWithOptionalParams",
        "tls {\n ciphers RSA-3DES-EDE-CBC-SHA\n}",
        True,
        diff="meshkit refuses 3DES cipher suites (SWEET32; OpenSSL 3 has them off), by name",
    ),
    Case(
        "tls TestSetupParseWithWrongOptionalParams#0",
        "tls @T@/cert.pem @T@/key.pem {\n protocols ssl tls\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithWrongOptionalParams#1",
        "tls @T@/cert.pem @T@/key.pem {\n ciphers not-valid-cipher\n}",
        False,
    ),
    Case("tls TestSetupParseWithWrongOptionalParams#2", "tls {\n key_type ab123\n}", False),
    Case(
        "tls TestSetupParseWithWrongOptionalParams#3",
        "tls {\n curves ab123, cd456, ef789\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithClientAuth (no CA)",
        "tls @T@/cert.pem @T@/key.pem {\n clients\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#1",
        "tls @T@/cert.pem @T@/key.pem {\n clients @T@/ca.crt @T@/ca.crt\n}",
        True,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#2",
        "tls @T@/cert.pem @T@/key.pem {\n clients request\n}",
        True,
        diff=NO_UNVERIFIED_CLIENTS,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#2 (with a CA)",
        "tls @T@/cert.pem @T@/key.pem {\n clients request @T@/ca.crt\n}",
        True,
        lambda d: _eq(d["tls"].client_mode, "request"),
    ),
    Case(
        "tls TestSetupParseWithClientAuth#3",
        "tls @T@/cert.pem @T@/key.pem {\n clients require\n}",
        True,
        diff=NO_UNVERIFIED_CLIENTS,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#4",
        "tls @T@/cert.pem @T@/key.pem {\n clients verify_if_given @T@/ca.crt\n}",
        True,
        lambda d: _eq(d["tls"].client_mode, "verify_if_given"),
    ),
    Case(
        "tls TestSetupParseWithClientAuth#5",
        "tls @T@/cert.pem @T@/key.pem {\n clients verify_if_given\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithCAUrl#0",
        "tls {\n ca https://acme-staging.api.letsencrypt.org/directory\n}",
        True,
        lambda d: _eq(d["tls"].ca, "https://acme-staging.api.letsencrypt.org/directory"),
        acme=True,
    ),
    Case("tls TestSetupParseWithCAUrl#1", "tls {\n ca\n}", False, acme=True),
    Case("tls TestSetupParseWithCAUrl#2", "tls {\n ca 1 2\n}", False, acme=True),
    Case(
        "tls TestSetupParseWithKeyType",
        "tls {\n key_type p384\n}",
        True,
        lambda d: _eq(d["tls"].key_type, "p384"),
        acme=True,
    ),
    Case(
        "tls TestSetupParseWithCurves",
        "tls {\n curves x25519 p256 p384 p521\n}",
        True,
        diff="Python's ssl module sets one ECDH curve, not a list: meshkit takes one curve and"
        " names the limit",
        acme=True,
    ),
    Case(
        "tls TestSetupParseWithCurves (one curve)",
        "tls {\n curves x25519\n}",
        True,
        acme=True,
    ),
    Case(
        "tls TestSetupParseWithOneTLSProtocol",
        "tls {\n protocols tls1.2\n}",
        True,
        lambda d: _eq((d["tls"].min_version, d["tls"].max_version), ("tls1.2", "tls1.2")),
        acme=True,
        xfail="tls.py (another change, issue 22): `protocols X` alone sets only the minimum"
        " (the maximum stays tls1.3); v1 set both to X",
    ),
]

# --- a `}` on an option's line (caddyfile/dispenser.go RemainingArgs) --------------------------
#
# v1's RemainingArgs took a `}` on the same line as one more argument; options read with NextArg
# did not see it. So `gzip { level 9 }` worked in v1 but `header / { X-A a }` failed (the field
# got two values, `a` and `}`), and `rewrite { ... to /b }` rewrote to "/b }". meshkit never
# reads a brace as an argument: the three mean what their multi-line forms mean.

BRACE_ARG = (
    "v1's RemainingArgs read a `}` on the option's line as an argument; meshkit never reads a"
    " brace as an argument, so the one-line block means what the multi-line one does"
)

DISPENSER = [
    Case("dispenser RemainingArgs (header)", "header / { X-A a }", False, diff=BRACE_ARG),
    Case(
        "dispenser RemainingArgs (errors)",
        "errors {\n 404 404.html\n 500 500.html }",
        False,
        diff=BRACE_ARG,
    ),
    Case(
        # accepted by both, but v1 rewrote to "/b }"
        "dispenser RemainingArgs (rewrite)",
        "rewrite { regexp ^/a to /b }",
        True,
        _rw(regexp="^/a", to=["/b"]),
    ),
    Case(
        "dispenser NextArg (gzip)",
        "gzip {\n level 9 }",
        True,
        lambda d: _eq(d["gzip"].rules[0].level, 9),
    ),
    Case("dispenser NextArg (mime)", "mime { .a text/a .b text/b }", True),
]

ALL = (
    DISPENSER
    + GZIP
    + HEADER
    + BASICAUTH
    + BROWSE
    + ERRORS
    + EXT
    + FASTCGI
    + INTERNAL
    + INDEX
    + LIMITS
)
ALL += LOG + MIME + PROXY + REDIR + REWRITE + ROOT + STATUS + TLS


def _eq(got: Any, want: Any) -> None:
    assert got == want, f"{got!r} != {want!r}"


def _browse(d: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = d["browse"]
    return [{"path": r.path} for r in cfg.rules] if hasattr(cfg, "rules") else cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The files the cases name: a browse template, an htpasswd file (v1's test lines), a
    certificate with its key, and a CA."""
    t = tmp_path_factory.mktemp("v1cases")
    (t / "template.html").write_text("<html>{{.Name}}</html>\n")
    (t / "404.html").write_text("not found\n")
    (t / "htpasswd").write_text(
        "sha1:{SHA}dcAUljwz99qFjYR0YLTXx0RqLww=\nmd5:$apr1$l42y8rex$pOA2VJ0x/0TwaFeAF9nX61\n"
    )
    ca = make_ca(t, "v1 cases CA")
    (t / "ca.crt").write_bytes(ca.path.read_bytes())
    cert, key = issue(ca, t, "site", ["localhost"])
    (t / "cert.pem").write_bytes(cert.read_bytes())
    (t / "key.pem").write_bytes(key.read_bytes())
    yield t


def _params() -> list[Any]:
    out = []
    for c in ALL:
        marks = []
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        out.append(pytest.param(c, id=c.go, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_v1_setup_case(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    body = case.body.replace("@T@", str(folder))
    if case.acme:  # a tls block that names no certificate asks for automatic HTTPS
        config = load_text(
            f"example.test:2015 {{\n{body}\n}}\n", defaults=Defaults(auto_https=True)
        )
    else:
        config = load_text(f":2015 {{\n{body}\n}}\n")
    errors = [str(e) for e in config.errors]
    accepted = not errors
    want = case.ok if not case.diff else not case.ok
    if case.diff:
        why = f"a documented difference ({case.diff})"
    else:
        why = "Caddy v1 " + ("accepts" if case.ok else "rejects")
    assert accepted == want, f"{case.go}: {why} {body!r}; meshkit: {errors or 'accepted'}"
    if not accepted:
        # a rejection names the file and line, never a traceback
        assert all(e.startswith("Caddyfile:") for e in errors), errors
        return
    if case.check is not None and not case.diff:
        case.check(_scrub(config.sites[0].directives, str(folder)))


def _scrub(value: Any, real: str) -> Any:
    """The parsed configuration with the test folder written `@T@` again (for the checks)."""
    if isinstance(value, str):
        return value.replace(real, "@T@")
    if isinstance(value, list):
        return [_scrub(v, real) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, real) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(
            value,
            **{
                f.name: _scrub(getattr(value, f.name), real)
                for f in dataclasses.fields(value)
                if f.init
            },
        )
    return value


def test_every_core_directive_meshkit_has_is_covered() -> None:
    """Each v1 core directive meshkit registers has ported cases here (new ones must come
    with theirs)."""
    from meshkit.web.directives import REGISTRY

    covered = {c.body.split()[0] for c in ALL if c.body.split()}
    not_v1 = {"git"}  # a plugin in v1 (http.git), with no setup tests in caddyserver/caddy
    missing = set(REGISTRY) - covered - not_v1
    assert not missing, f"directives without ported v1 setup cases: {sorted(missing)}"


# --- site addresses (caddyhttp/httpserver/plugin_test.go TestStandardizeAddress) ---------------

# (input, scheme, host, port, path) as v1's test expects them, or None where v1 refuses it;
# v1's "" scheme, port and path are meshkit's http, the default port (2015) and "/"
ADDRESSES: list[tuple[str, tuple[str, str, str, str] | None]] = [
    ("localhost", ("", "localhost", "", "")),
    ("localhost:1234", ("", "localhost", "1234", "")),
    ("localhost:", ("", "localhost", "", "")),
    ("0.0.0.0", ("", "0.0.0.0", "", "")),
    ("127.0.0.1:1234", ("", "127.0.0.1", "1234", "")),
    (":1234", ("", "", "1234", "")),
    ("[::1]", ("", "::1", "", "")),
    ("[::1]:1234", ("", "::1", "1234", "")),
    (":", ("", "", "", "")),
    ("localhost:http", ("http", "localhost", "80", "")),
    ("localhost:https", ("https", "localhost", "443", "")),
    (":http", ("http", "", "80", "")),
    (":https", ("https", "", "443", "")),
    ("http://localhost:https", None),
    ("http://localhost:http", None),
    ("http://localhost:443", None),
    ("https://localhost:80", None),
    ("http://localhost", ("http", "localhost", "80", "")),
    ("https://localhost", ("https", "localhost", "443", "")),
    ("http://127.0.0.1", ("http", "127.0.0.1", "80", "")),
    ("https://127.0.0.1", ("https", "127.0.0.1", "443", "")),
    ("http://[::1]", ("http", "::1", "80", "")),
    ("http://localhost:1234", ("http", "localhost", "1234", "")),
    ("https://127.0.0.1:1234", ("https", "127.0.0.1", "1234", "")),
    ("http://[::1]:1234", ("http", "::1", "1234", "")),
    ("", ("", "", "", "")),
    ("::1", None),
    ("localhost::", None),
    ("#$%@", None),
    ("host/path", ("", "host", "", "/path")),
    ("http://host/", ("http", "host", "80", "/")),
    ("//asdf", ("", "asdf", "", "")),
    (":1234/asdf", ("", "", "1234", "/asdf")),
    ("http://host/path", ("http", "host", "80", "/path")),
    ("https://host:443/path/foo", ("https", "host", "443", "/path/foo")),
    ("host:80/path", ("", "host", "80", "/path")),
    ("host:https/path", ("https", "host", "443", "/path")),
]


@pytest.mark.parametrize(
    ("text", "want"),
    ADDRESSES,
    ids=[f"TestStandardizeAddress#{i} {t!r}" for i, (t, _) in enumerate(ADDRESSES)],
)
def test_v1_standardize_address(text: str, want: tuple[str, str, str, str] | None) -> None:
    from meshkit.web.caddyfile.address import AddressError, parse_address

    if want is None:
        with pytest.raises(AddressError):
            parse_address(text)
        return
    got = parse_address(text)
    scheme, host, port, path = want
    default = {"http": 80, "https": 443}.get(scheme, 2015)
    v1_scheme = scheme or ("https" if port == "443" else "http")
    assert (got.scheme, got.host, got.port, got.path) == (
        v1_scheme,
        host,
        int(port) if port else default,
        path or "/",
    )


# --- tokens (caddyfile/lexer_test.go TestLexer) ------------------------------------------------

LEXER: list[tuple[str, list[tuple[int, str]]]] = [
    ("host:123", [(1, "host:123")]),
    ("host:123\n\n\t\t\t\t\tdirective", [(1, "host:123"), (3, "directive")]),
    ("host:123 {\n\tdirective\n}", [(1, "host:123"), (1, "{"), (2, "directive"), (3, "}")]),
    ("host:123 { directive }", [(1, "host:123"), (1, "{"), (1, "directive"), (1, "}")]),
    (
        "host:123 {\n\t#comment\n\tdirective\n\t# comment\n\tfoobar # another comment\n}",
        [(1, "host:123"), (1, "{"), (3, "directive"), (5, "foobar"), (6, "}")],
    ),
    ('a "quoted value" b\n\tfoobar', [(1, "a"), (1, "quoted value"), (1, "b"), (2, "foobar")]),
    ('A "quoted \\"value\\" inside" B', [(1, "A"), (1, 'quoted "value" inside'), (1, "B")]),
    ('"don\'t\\escape"', [(1, "don't\\escape")]),
    ('"don\'t\\\\escape"', [(1, "don't\\\\escape")]),
    (
        'A "quoted value with line\n\t\t\t\t\tbreak inside" {\n\tfoobar\n}',
        [
            (1, "A"),
            (1, "quoted value with line\n\t\t\t\t\tbreak inside"),
            (2, "{"),
            (3, "foobar"),
            (4, "}"),
        ],
    ),
    ('"C:\\php\\php-cgi.exe"', [(1, "C:\\php\\php-cgi.exe")]),
    ('empty "" string', [(1, "empty"), (1, ""), (1, "string")]),
    ("skip those\r\nCR characters", [(1, "skip"), (1, "those"), (2, "CR"), (2, "characters")]),
]


@pytest.mark.parametrize(("text", "want"), LEXER, ids=[f"TestLexer#{i}" for i in range(len(LEXER))])
def test_v1_lexer(text: str, want: list[tuple[int, str]]) -> None:
    from meshkit.web.caddyfile.lexer import lex

    assert [(t.line, t.text) for t in lex(text, "Testfile")] == want


# --- server blocks (caddyfile/parse_test.go) ---------------------------------------------------

# (input, accepted, keys per block, tokens per directive of the first block)
PARSE_ONE: list[tuple[str, bool, list[str], dict[str, int]]] = [
    ("localhost", True, ["localhost"], {}),
    ("localhost\n  dir1", True, ["localhost"], {"dir1": 1}),
    ("localhost:1234\n  dir1 foo bar", True, ["localhost:1234"], {"dir1": 3}),
    ("localhost {\n    dir1\n  }", True, ["localhost"], {"dir1": 1}),
    (
        "localhost:1234 {\n    dir1 foo bar\n    dir2\n  }",
        True,
        ["localhost:1234"],
        {"dir1": 3, "dir2": 1},
    ),
    (
        "http://localhost https://localhost\n  dir1 foo bar",
        True,
        ["http://localhost", "https://localhost"],
        {"dir1": 3},
    ),
    (
        "http://localhost https://localhost {\n    dir1 foo bar\n  }",
        True,
        ["http://localhost", "https://localhost"],
        {"dir1": 3},
    ),
    (
        "http://localhost, https://localhost {\n    dir1 foo bar\n  }",
        True,
        ["http://localhost", "https://localhost"],
        {"dir1": 3},
    ),
    ("http://localhost, {\n  }", False, [], {}),
    (
        "host1:80, http://host2.com\n  dir1 foo bar\n  dir2 baz",
        True,
        ["host1:80", "http://host2.com"],
        {"dir1": 3, "dir2": 2},
    ),
    (
        "http://host1.com,\n  http://host2.com,\n  https://host3.com",
        True,
        ["http://host1.com", "http://host2.com", "https://host3.com"],
        {},
    ),
    (
        "http://host1.com:1234, https://host2.com\n  dir1 foo {\n    bar baz\n  }\n  dir2",
        True,
        ["http://host1.com:1234", "https://host2.com"],
        {"dir1": 6, "dir2": 1},
    ),
    (
        "127.0.0.1\n  dir1 {\n    bar baz\n  }\n  dir2 {\n    foo bar\n  }",
        True,
        ["127.0.0.1"],
        {"dir1": 5, "dir2": 5},
    ),
    ("localhost\n  dir1 {\n    foo", False, [], {}),
    ("localhost\n  dir1 {\n  }", True, ["localhost"], {"dir1": 3}),
    ("localhost\n  dir1 {\n  } }", False, [], {}),
    (
        "localhost\n  dir1 {\n    nested {\n      foo\n    }\n  }\n  dir2 foo bar",
        True,
        ["localhost"],
        {"dir1": 7, "dir2": 3},
    ),
    ("", True, [], {}),
    ("import testdata/not_found.txt", False, [], {}),
    # TestParseAll
    ("localhost:1234, http://host2", True, ["localhost:1234", "http://host2"], {}),
    ("localhost:1234, http://host2,", False, [], {}),
    ("import notfound/*", True, [], {}),
    ("import notfound/file.conf", False, [], {}),
]


@pytest.mark.parametrize(
    ("text", "ok", "keys", "tokens"),
    PARSE_ONE,
    ids=[f"TestParseOneAndImport/TestParseAll {t!r}" for t, *_ in PARSE_ONE],
)
def test_v1_parse_one(
    text: str, ok: bool, keys: list[str], tokens: dict[str, int], tmp_path: Path
) -> None:
    from meshkit.web.caddyfile.parser import parse_text

    result = parse_text(text, path=str(tmp_path / "Caddyfile"))
    assert (not result.errors) == ok, result.errors
    if not ok:
        return
    got_keys = [k.text for k in result.blocks[0].keys] if result.blocks else []
    assert got_keys == keys
    if result.blocks:
        assert {k: len(v) for k, v in result.blocks[0].tokens.items()} == tokens


def test_v1_parse_all_blocks() -> None:
    """TestParseAll#2 and #5: several blocks, each with its keys."""
    from meshkit.web.caddyfile.parser import parse_text

    for text, want in [
        (
            "localhost:1234 {\n  }\n  localhost:2015 {\n  }",
            [["localhost:1234"], ["localhost:2015"]],
        ),
        (
            "http://host1.com, http://host2.com {\n  }\n"
            "  https://host3.com, https://host4.com {\n  }",
            [["http://host1.com", "http://host2.com"], ["https://host3.com", "https://host4.com"]],
        ),
    ]:
        result = parse_text(text)
        assert not result.errors
        assert [[k.text for k in b.keys] for b in result.blocks] == want


def test_v1_environment_replacement() -> None:
    """TestEnvironmentReplacement, each of its inputs."""
    from meshkit.web.caddyfile.parser import parse_text

    env = {"PORT": "8080", "ADDRESS": "servername.com", "FOOBAR": "foobar"}

    def key(text: str) -> str:
        return parse_text(text, environ=env).blocks[0].keys[0].text

    def arg(text: str) -> str:
        return parse_text(text, environ=env).blocks[0].tokens["dir1"][1].text

    assert key("{$ADDRESS}") == "servername.com"
    assert key("{$ADDRESS}:{$PORT}") == "servername.com:8080"
    assert key("{%ADDRESS%}:{$PORT}") == "servername.com:8080"
    assert key("{$ADDRESS}:{%PORT%}") == "servername.com:8080"
    assert key(":{%PORT%}\ndir1 {$FOOBAR}") == ":8080"
    assert arg(":{%PORT%}\ndir1 {$FOOBAR}") == "foobar"
    assert arg(":{%PORT%}\ndir1 {%ADDRESS%}/{%FOOBAR%}") == "servername.com/foobar"
    assert arg(":1234\ndir1 {%ADDRESS}") == "{%ADDRESS}"
    assert key(":{$PORT$}") == ":"
    assert arg(':1234\ndir1 "Test {$FOOBAR} test"') == "Test foobar test"


def test_v1_macro() -> None:
    """TestMacro: a snippet imported into a site brings its directives."""
    from meshkit.web.caddyfile.parser import parse_text

    result = parse_text(
        "(common) {\n\tgzip foo\n\terrors stderr\n\n}\t\nhttp://example.com {\n\timport common\n}\n"
    )
    assert not result.errors
    assert [[k.text for k in b.keys] for b in result.blocks] == [["http://example.com"]]
    tokens = result.blocks[0].tokens
    assert sorted(tokens) == ["errors", "gzip"]
    assert (tokens["gzip"][0].text, tokens["errors"][1].text) == ("gzip", "stderr")


def test_v1_parse_one_empty_quoted_key_is_a_documented_difference() -> None:
    """TestParseOneAndImport `""`: v1 dropped an empty quoted address, leaving a block with no
    address that served nothing. Documented difference: meshkit takes `""` as the catch-all
    address (any host, the default port), which is what the empty address means elsewhere."""
    from meshkit.web.caddyfile.parser import parse_text

    result = parse_text('""')
    assert not result.errors
    assert [[k.text for k in b.keys] for b in result.blocks] == [[""]]
