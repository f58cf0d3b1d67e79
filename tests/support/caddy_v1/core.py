"""v1 setup cases: gzip, header, basicauth, browse, errors, ext, fastcgi, internal, index,
limits."""

from __future__ import annotations

from typing import Any

from support.caddy_v1 import (
    BROWSE_DOT,
    Case,
    Check,
    _eq,
)

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
    ),
    Case(
        "errors TestErrorsParse#11",
        "errors {\n * generic_error.html\n * generic_error.html\n}",
        False,
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
        lambda d: _eq(d["internal"], []),
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
