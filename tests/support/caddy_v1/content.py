"""v1 setup cases: templates, markdown, websocket, expvar, request_id (caddyhttp/*/setup_test.go;
a case named `setup.go` is an input v1's parser decides that its tests do not list)."""

from __future__ import annotations

from typing import Any

from support.caddy_v1 import Case, Check, _eq

# --- templates (caddyhttp/templates/setup_test.go) ---------------------------------------------

TEMPLATE_EXTS = [".html", ".htm", ".tmpl", ".tpl", ".txt"]  # v1's defaultTemplateExtensions


def _templates(*want: tuple[str, list[str], list[str]]) -> Check:
    """(path, extensions, delimiters) of each rule; v1's empty Delims is meshkit's []."""
    return lambda d: _eq(
        [(r.path, r.extensions, r.delims) for r in d["templates"].rules], list(want)
    )


def _templates_defaults(d: dict[str, Any]) -> None:
    rule = d["templates"].rules[0]
    _eq((rule.path, rule.extensions, rule.delims), ("/", TEMPLATE_EXTS, []))
    _eq(rule.index_files, ["index" + e for e in TEMPLATE_EXTS])


TEMPLATES = [
    Case("templates TestSetup", "templates", True, _templates_defaults),
    Case(
        "templates TestTemplatesParse#0",
        "templates /api1",
        True,
        _templates(("/api1", TEMPLATE_EXTS, [])),
    ),
    Case(
        "templates TestTemplatesParse#1",
        "templates /api2 .txt .htm",
        True,
        _templates(("/api2", [".txt", ".htm"], [])),
    ),
    Case(
        "templates TestTemplatesParse#2",
        "templates /api3 .htm .html\n  templates /api4 .txt .tpl ",
        True,
        _templates(("/api3", [".htm", ".html"], []), ("/api4", [".txt", ".tpl"], [])),
    ),
    Case(
        "templates TestTemplatesParse#3",
        "templates {\n path /api5\n ext .html\n between {% %}\n}",
        True,
        _templates(("/api5", [".html"], ["{%", "%}"])),
    ),
    Case("templates setup.go (path takes one value)", "templates {\n path /a /b\n}", False),
    Case("templates setup.go (ext needs a value)", "templates {\n ext\n}", False),
    Case("templates setup.go (between takes two)", "templates {\n between {%\n}", False),
    Case(
        "templates setup.go (unknown options ignored)",
        "templates {\n pth /api\n}",
        True,
        diff="v1 skipped an unknown option in the block without a word, so a typo (`pth`)"
        " silently kept the default path /: meshkit refuses it at file:line",
    ),
]

# --- markdown (caddyhttp/markdown/setup_test.go) -----------------------------------------------


def _markdown(*want: tuple[str, list[str], list[str], list[str], dict[str, str]]) -> Check:
    """(scope, extensions (sorted: a set in v1), styles, scripts, template files) per rule."""
    return lambda d: _eq(
        [
            (r.path, sorted(r.extensions), r.styles, r.scripts, r.templates)
            for r in d["markdown"].rules
        ],
        list(want),
    )


MARKDOWN = [
    Case(
        "markdown TestSetup",
        "markdown /blog",
        True,
        _markdown(("/blog", [".markdown", ".md", ".mdown"], [], [], {})),
    ),
    Case(
        "markdown TestMarkdownParse#0",
        "markdown /blog {\n\text .md .txt\n\tcss /resources/css/blog.css\n"
        "\tjs  /resources/js/blog.js\n}",
        True,
        _markdown(
            ("/blog", [".md", ".txt"], ["/resources/css/blog.css"], ["/resources/js/blog.js"], {})
        ),
    ),
    Case(
        "markdown TestMarkdownParse#1",
        "markdown /blog {\n\text .md\n\ttemplate tpl_with_include.html\n}",
        True,
        # v1's root was ./testdata; here the site root is the test folder
        _markdown(("/blog", [".md"], [], [], {"": "@T@/tpl_with_include.html"})),
    ),
    Case("markdown setup.go (one path scope)", "markdown /a /b", False),
    Case("markdown setup.go (css needs a value)", "markdown {\n css\n}", False),
    Case("markdown setup.go (template takes 1 or 2)", "markdown {\n template a b c\n}", False),
    Case("markdown setup.go (unknown option)", "markdown {\n style x.css\n}", False),
]

# --- websocket (caddyhttp/websocket/setup_test.go) ---------------------------------------------


def _sockets(*want: tuple[str, str, list[str]]) -> Check:
    return lambda d: _eq(
        [(s.path, s.command, s.arguments) for s in d["websocket"].sockets], list(want)
    )


WEBSOCKET = [
    Case("websocket TestWebSocket", "websocket cat", True, _sockets(("/", "cat", []))),
    Case(
        "websocket TestWebSocketParse#0",
        "websocket /api1 cat",
        True,
        _sockets(("/api1", "cat", [])),
    ),
    Case(
        "websocket TestWebSocketParse#1",
        "websocket /api3 cat  \n  websocket /api4 cat ",
        True,
        _sockets(("/api3", "cat", []), ("/api4", "cat", [])),
    ),
    Case(
        "websocket TestWebSocketParse#2",
        'websocket /api5 "cmd arg1 arg2 arg3"',
        True,
        _sockets(("/api5", "cmd", ["arg1", "arg2", "arg3"])),
    ),
    Case(
        "websocket TestWebSocketParse#3",
        "websocket /api6 cat {\n respawn\n}",
        True,
        _sockets(("/api6", "cat", [])),
    ),
    Case("websocket TestWebSocketParse#4", "websocket /api7 cat {\n invalid\n}", False),
    Case("websocket setup.go (a command is needed)", "websocket", False),
]

# --- expvar (caddyhttp/expvar/setup_test.go) ---------------------------------------------------

EXPVAR = [
    Case(
        "expvar TestSetup (`expvar`)",
        "expvar",
        True,
        lambda d: _eq(d["expvar"].path, "/debug/vars"),  # v1's defaultExpvarPath
    ),
    Case(
        "expvar TestSetup (`expvar /d/v`)",
        "expvar /d/v",
        True,
        lambda d: _eq(d["expvar"].path, "/d/v"),
    ),
    Case("expvar setup.go (one path)", "expvar /a /b", False),
]

# --- request_id (caddyhttp/requestid/setup_test.go; its tests name it `requestid`, which
# NewTestController does not check: the directive is registered as request_id) ----------------

REQUEST_ID = [
    Case("request_id TestSetup", "request_id", True, lambda d: _eq(d["request_id"].header, "")),
    Case(
        "request_id TestSetupWithArg",
        "request_id X-Request-ID",
        True,
        lambda d: _eq(d["request_id"].header, "X-Request-ID"),
    ),
    Case("request_id TestSetupWithTooManyArgs", "request_id foo bar", False),
]

# --- push (caddyhttp/push/setup_test.go; TestConfigParse's cases by name) -------------------


def _push(*want: tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]) -> Check:
    """(path, [(resource, method, fields)]) per rule. v1's X-Push field marks a pushed
    request inside the server; meshkit marks it out of band, so it is not among the fields.
    Field names compare lowercased (v1 wrote them canonical, meshkit as given)."""
    return lambda d: _eq(
        [
            (
                r.path,
                [(x.path, x.method, [(k.lower(), v) for k, v in x.headers]) for x in r.resources],
            )
            for r in d["push"].rules
        ],
        list(want),
    )


_BLOCK = "push /index.html /index.css {\n\t\t\t\t%s\n\t\t\t}"
_TWO = [("/style.css", "GET", []), ("/style2.css", "GET", [])]
PUSH = [
    Case("push TestPushAvailable", "push /index.html /available.css", True),
    Case("push TestConfigParse#ParseInvalidEmptyConfig", "push", True, _push(("/", []))),
    Case(
        "push TestConfigParse#ParseInvalidConfig",
        "push /index.html",
        True,
        _push(("/index.html", [])),
    ),
    Case("push TestConfigParse#ParseInvalidConfigBlock", _BLOCK % "method", False),
    Case("push TestConfigParse#ParseInvalidHeaderFormat", _BLOCK % "header :invalid value", False),
    Case("push TestConfigParse#ParseForbiddenHeader", _BLOCK % "header Content-Length 1000", False),
    Case("push TestConfigParse#ParseInvalidMethod", _BLOCK % "method POST", False),
    Case("push TestConfigParse#ParseInvalidHeaderBlock", _BLOCK % "header", False),
    Case("push TestConfigParse#ParseInvalidHeaderBlock2", _BLOCK % "header name", False),
    Case(
        "push TestConfigParse#ParseProperConfig",
        "push /index.html /style.css /style2.css",
        True,
        _push(("/index.html", _TWO)),
    ),
    Case(
        "push TestConfigParse#ParseSimpleInlinePush",
        "push /index.html {\n\t\t\t\t/style.css\n\t\t\t\t/style2.css\n\t\t\t}",
        True,
        _push(("/index.html", _TWO)),
    ),
    Case(
        "push TestConfigParse#ParseSimpleInlinePushWithOps",
        "push /index.html {\n\t\t\t\t/style.css\n\t\t\t\t/style2.css\n"
        "\t\t\t\theader Test Value\n\t\t\t}",
        True,
        _push(("/index.html", [(p, m, [("test", "Value")]) for p, m, _ in _TWO])),
    ),
    Case(
        "push TestConfigParse#ParseProperConfigWithBlock",
        "push /index.html /style.css /style2.css {\n\t\t\t\tmethod HEAD\n"
        "\t\t\t\theader Own-Header Value\n\t\t\t\theader Own-Header2 Value2\n\t\t\t}",
        True,
        _push(
            (
                "/index.html",
                [
                    (p, "HEAD", [("own-header", "Value"), ("own-header2", "Value2")])
                    for p, _, _ in _TWO
                ],
            )
        ),
    ),
    Case(
        "push TestConfigParse#ParseMergesRules",
        "push /index.html /index.css {\n\t\t\t\theader name value\n\t\t\t}\n\n"
        "\t\t\tpush /index.html /index2.css {\n\t\t\t\theader name2 value2\n"
        "\t\t\t\tmethod HEAD\n\t\t\t}\n\t\t\t",
        True,
        _push(
            (
                "/index.html",
                [
                    ("/index.css", "GET", [("name", "value")]),
                    ("/index2.css", "HEAD", [("name2", "value2")]),
                ],
            )
        ),
    ),
    Case("push TestSetupInstalledMiddleware", "push /index.html /test.js", True),
    Case("push TestSetupWithError", "push {\nmethod\n}", False),
]
