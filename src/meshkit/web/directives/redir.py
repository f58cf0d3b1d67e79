"""redir: answer with a redirect (Caddy v1).

    redir TO                       # every request (FROM "/"), 301
    redir TO CODE                  # CODE 300-308 or `meta` (an HTML page that redirects)
    redir FROM TO [CODE]
    redir [CODE] {
        [FROM] TO [CODE]           # one rule per line; the block's CODE is the lines' default
        if A OP B                  # conditions for every rule of the block
        if_op and|or
    }

FROM matches the path exactly, except `/`, which matches every path. TO may hold
placeholders (`https://{host}{uri}`). A two-argument `redir A B` whose B is not a code is read
as FROM TO (Caddy v1 refused it as an invalid code). The first matching rule, in file order,
answers.
"""

from __future__ import annotations

import html
import posixpath
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.directives.rewrite import parse_condition
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response, status_text
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import CompiledConditions, Conditions, Template, compile_template
from meshkit.web.site import Site

CODES = {"300", "301", "302", "303", "304", "305", "307", "308"}
DEFAULT_CODE = 301

META_PAGE = """<!DOCTYPE html>
<html>
\t<head>
\t\t<script>window.location.replace("{js}");</script>
\t\t<meta http-equiv="refresh" content="0; URL='{url}'">
\t</head>
\t<body>Redirecting...</body>
</html>
"""


@dataclass
class RedirRule:
    from_path: str
    to: str
    code: int = DEFAULT_CODE
    meta: bool = False
    conditions: Conditions = field(default_factory=Conditions)


@dataclass
class RedirConfig:
    rules: list[RedirRule] = field(default_factory=list)

    @property
    def keeps_static(self) -> bool:
        """Which request passes through is decided by the head alone when the conditions
        compare head values only (redirects themselves are never remembered: they carry no
        file validators), so the site may still answer from remembered responses."""
        return all(CompiledConditions.head_only(r.conditions) for r in self.rules)


def _is_code(text: str) -> bool:
    return text == "meta" or text in CODES


def _set_code(d: Dispenser, rule: RedirRule, text: str) -> None:
    if text == "meta":
        rule.meta = True
        rule.code = 200
    elif text in CODES:
        rule.code = int(text)
        rule.meta = False
    else:
        raise d.err(f"invalid redirect code {text!r} (expecting 300-308 or meta)")


def parse(d: Dispenser, site: Site) -> RedirConfig:
    config = RedirConfig()

    def save(rule: RedirRule) -> None:
        if rule.from_path == rule.to:
            raise d.err("'from' and 'to' values of a redirect rule cannot be the same")
        for other in config.rules:
            if other.from_path == rule.from_path and other.conditions == rule.conditions:
                raise d.err(f"rule with duplicate 'from' value: {other.from_path} -> {other.to}")
        config.rules.append(rule)

    while d.next():
        args = d.remaining_args()
        conditions = Conditions()
        lines: list[tuple[list[str], int]] = []  # block rule lines and where they are
        for _ in d.block():
            name = d.val()
            more = d.remaining_args()
            if name in ("if", "if_op"):
                parse_condition(d, conditions, name, more)
                continue
            lines.append(([name, *more], d.cursor))
        if lines:
            if len(args) > 1:
                raise d.arg_err()
            for inside, cursor in lines:
                saved = d.cursor
                d.cursor = cursor  # errors name the block line
                rule = RedirRule("/", "", conditions=conditions)
                if args:
                    _set_code(d, rule, args[0])
                save(_read_rule(d, rule, inside))
                d.cursor = saved
            continue
        save(_read_rule(d, RedirRule("/", "", conditions=conditions), args))
    return config


def _read_rule(d: Dispenser, rule: RedirRule, args: list[str]) -> RedirRule:
    """Fill `rule` from `TO`, `TO CODE`, `FROM TO` or `FROM TO CODE`."""
    if len(args) == 1:
        rule.to = args[0]
    elif len(args) == 2:
        if _is_code(args[1]):
            rule.to = args[0]
            _set_code(d, rule, args[1])
        else:
            rule.from_path, rule.to = args
    elif len(args) == 3:
        rule.from_path, rule.to = args[0], args[1]
        _set_code(d, rule, args[2])
    else:
        raise d.arg_err()
    return rule


def location(request: Request, to: str) -> str:
    """Make a relative target absolute the way Go's http.Redirect does."""
    if "://" in to.split("?", 1)[0] or to.startswith("/"):
        return to
    path, sep, query = to.partition("?")
    base = request.path
    folder = base[: base.rfind("/") + 1] or "/"
    trailing = path.endswith("/")
    full = posixpath.normpath(folder + path)
    if trailing and not full.endswith("/"):
        full += "/"
    if full.startswith("//"):
        full = "/" + full.lstrip("/")
    return full + (sep + query if sep else "")


def redirect_response(request: Request, to: str, code: int) -> Response:
    target = location(request, to)
    if request.method in ("GET", "HEAD") and code != 304:
        return Response(code, Headers(_with_body(target)), _redirect_body(target, code))
    return Response(code, Headers([("Location", target)]), b"")


def _with_body(target: str) -> list[tuple[str, str]]:
    return [("Location", target), ("Content-Type", "text/html; charset=utf-8")]


def _redirect_body(target: str, code: int) -> bytes:
    return f'<a href="{html.escape(target)}">{status_text(code)}</a>.\n\n'.encode()


def meta_response(to: str) -> Response:
    body = META_PAGE.format(js=html.escape(to), url=html.escape(to))
    return Response.text(200, body, "text/html; charset=utf-8")


class _Rule:
    __slots__ = ("body", "code", "conditions", "from_path", "meta", "target", "to")

    def __init__(self, rule: RedirRule) -> None:
        # `/` means every path; any other FROM is matched exactly, on the canonical path
        self.from_path = clamp_path(rule.from_path) if rule.from_path != "/" else "/"
        self.to: Template = compile_template(rule.to)
        self.code = rule.code
        self.meta = rule.meta
        self.conditions = CompiledConditions(rule.conditions)
        # a literal absolute target: the Location and the GET/HEAD body, made once
        to = self.to.static
        self.target: str | None = None
        self.body = b""
        if to is not None and not self.meta and ("://" in to.split("?", 1)[0] or to[:1] == "/"):
            self.target = to
            self.body = _redirect_body(to, self.code)

    def answer(self, request: Request) -> Response:
        target = self.target
        if target is None:
            to = self.to.render(request)
            if self.meta:
                return meta_response(to)
            return redirect_response(request, to, self.code)
        if self.code != 304 and request.method in ("GET", "HEAD"):
            return Response(self.code, Headers(_with_body(target)), self.body)
        return Response(self.code, Headers([("Location", target)]), b"")


def build(config: RedirConfig, next: Handler, site: Site) -> Handler:
    rules = [_Rule(r) for r in config.rules]

    def redir_handler(request: Request) -> HandlerResult:
        path = request.path
        for rule in rules:
            if rule.from_path != "/" and rule.from_path != path:
                continue
            if rule.conditions and not rule.conditions.match(request):
                continue
            return rule.answer(request)
        return next(request)

    return redir_handler


register("redir", parse, build)
