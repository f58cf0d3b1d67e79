"""rewrite: change the path a request is served from, inside the server (Caddy v1).

    rewrite [not] FROM TO...           # FROM a regular expression searched in the path
    rewrite [BASE] {
        regexp PATTERN                 # (or r) searched in the path after BASE; groups {1} {2}...
        ext EXT...                     # only these extensions (.html, / = none); !EXT excludes
        to DEST...                     # the first DEST that exists as a file (DEST/ as a
                                       # folder) under the root wins, else the last one
        if A OP B                      # is not has starts_with ends_with match, and not_ forms
        if_op and|or
    }

Placeholders work in TO/DEST ({path} and {uri} are the request's original ones). One rule
applies per request: the matching one with the longest base (simple rules count as `/` and
come first). A destination is always an absolute, cleaned path: `to index.php` means
`/index.php` and can never climb out of the root with `..` (Caddy #1610 served PHP source
from such a rewrite). A destination's query string replaces the request's.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat as stat_mod
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import (
    CompiledConditions,
    Condition,
    Conditions,
    Template,
    compile_template,
    condition_error,
)
from meshkit.web.site import Site


@dataclass
class RewriteRule:
    base: str = "/"
    regexp: str | None = None
    to: list[str] = field(default_factory=list)
    ext: list[str] = field(default_factory=list)
    conditions: Conditions = field(default_factory=Conditions)
    negate: bool = False  # simple form `rewrite not FROM TO`
    simple: bool = False


@dataclass
class RewriteConfig:
    rules: list[RewriteRule] = field(default_factory=list)

    @property
    def keeps_static(self) -> bool:
        """A rewrite decided by the request head alone (one destination per rule, so no
        file is tried; placeholders and conditions of the head only) leaves the file
        response a function of the head and of the file it names, which the file server
        validates: the site may still answer from remembered responses."""
        return all(
            len(r.to) == 1
            and compile_template(r.to[0]).head_only
            and CompiledConditions.head_only(r.conditions)
            for r in self.rules
        )


def parse_condition(d: Dispenser, conditions: Conditions, name: str, more: list[str]) -> None:
    """Read an `if A OP B` or `if_op and|or` block line into `conditions`."""
    if name == "if":
        if len(more) != 3:
            raise d.arg_err()
        problem = condition_error(more[1], more[2])
        if problem:
            raise d.err(problem)
        conditions.ifs.append(Condition(more[0], more[1], more[2]))
        return
    if len(more) != 1 or more[0] not in ("and", "or"):
        raise d.err("if_op takes `and` or `or`")
    conditions.op = more[0]


def _regexp(d: Dispenser, pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise d.err(f"invalid regular expression {pattern!r}: {e}") from None
    return pattern


def parse(d: Dispenser, site: Site) -> RewriteConfig:
    simple: list[RewriteRule] = []
    complex_: list[RewriteRule] = []
    while d.next():
        args = d.remaining_args()
        if len(args) >= 2:
            negate = args[0] == "not" and len(args) >= 3
            if negate:
                args = args[1:]
            rule = RewriteRule(regexp=_regexp(d, args[0]), to=args[1:], negate=negate, simple=True)
            for _ in d.block():
                raise d.err("the simple rewrite form takes no block")
            simple.append(rule)
            continue
        rule = RewriteRule(base=args[0] if args else "/")
        for _ in d.block():
            name = d.val()
            one = name in ("r", "regexp", "if_op")  # one value (Caddy: NextArg)
            more = [d.arg()] if one else d.remaining_args()
            if name in ("r", "regexp"):
                rule.regexp = _regexp(d, more[0])
            elif name == "to":
                if not more:
                    raise d.arg_err()
                rule.to = more
            elif name == "ext":
                if not more:
                    raise d.arg_err()
                for ext in more:
                    bare = ext[1:] if ext.startswith("!") else ext
                    if bare != "/" and (len(bare) < 2 or not bare.startswith(".")):
                        raise d.err(f"invalid extension {ext!r} (.ext, !.ext, / or !/)")
                rule.ext = more
            elif name in ("if", "if_op"):
                parse_condition(d, rule.conditions, name, more)
            else:
                raise d.err(
                    f"unknown rewrite option {name!r} (expecting regexp, ext, to, if or if_op)"
                )
        if not rule.to:
            raise d.err("rewrite block needs a `to` line")
        complex_.append(rule)
    return RewriteConfig(simple + complex_)


# --- the handler ----------------------------------------------------------------------------


def _ext_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:] if dot > 0 or (dot == 0 and len(name) > 1) else "/"


class _Compiled:
    __slots__ = (
        "base",
        "conditions",
        "exts",
        "fixed",
        "must_use",
        "negate",
        "regexp",
        "start",
        "to",
    )

    def __init__(self, rule: RewriteRule) -> None:
        self.base = clamp_path(rule.base)
        self.regexp = re.compile(rule.regexp) if rule.regexp else None
        self.negate = rule.negate
        self.to: list[tuple[Template, bool]] = [
            (compile_template(t), t.endswith("/")) for t in rule.to
        ]
        self.conditions = CompiledConditions(rule.conditions)
        # one literal destination: where it points is worked out once, at load time
        self.fixed: tuple[str, str, str | None] | None = None
        if len(self.to) == 1 and self.to[0][0].static is not None:
            path, query = clean_destination(self.to[0][0].static, self.to[0][1])
            self.fixed = (*_canonical(path), query)
        self.exts: list[tuple[str, bool]] = [
            (e[1:], False) if e.startswith("!") else (e, True) for e in rule.ext
        ]
        self.must_use = any(use for _, use in self.exts)
        # the regexp sees the path from the base on, keeping the base's trailing slash
        self.start = len(self.base) - 1 if self.base.endswith("/") else len(self.base)

    def ext_ok(self, path: str) -> bool:
        if not self.exts:
            return True
        ext = _ext_of(path)
        for value, use in self.exts:
            if ext == value:
                return use
        return not self.must_use

    def match(self, request: Request) -> re.Match[str] | bool:
        """False when the rule does not apply; else the regexp match (or True)."""
        path = request.path
        if not path.startswith(self.base):
            return False
        if not self.ext_ok(path):
            return False
        if self.conditions and not self.conditions.match(request):
            return False
        if self.regexp is None:
            return True
        m = self.regexp.search(path[self.start :])
        if self.negate:
            return m is None
        return m if m is not None else False


def clean_destination(dest: str, keep_slash: bool) -> tuple[str, str | None]:
    """(absolute cleaned path, query or None) of a rendered destination."""
    path, sep, query = dest.partition("?")
    path = path.split("#", 1)[0]
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if (keep_slash or path.endswith("/")) and not cleaned.endswith("/"):
        cleaned += "/"
    return cleaned, (query if sep else None)


def _exists(root: str, path: str, folder: bool) -> bool:
    full = os.path.join(root, unquote(path).lstrip("/"))
    try:
        st = os.stat(full)
    except (OSError, ValueError):
        return False
    return stat_mod.S_ISDIR(st.st_mode) if folder else not stat_mod.S_ISDIR(st.st_mode)


def _canonical(path: str) -> tuple[str, str]:
    """(decoded canonical path, its encoded form) of a rendered destination path."""
    # decoding may reveal `%2e%2e` or `%2f`: fold again so that later matchers and the file
    # server see the canonical path (meshkit.web.paths)
    decoded = clamp_path(unquote(path))
    return decoded, quote(decoded, safe="/:@!$&'()*+,;=-._~")


def apply_rewrite(request: Request, path: str, query: str | None) -> None:
    """Point `request` at `path` (encoded form, as rendered) and maybe a new query."""
    _point(request, *_canonical(path), query)


def _point(request: Request, decoded: str, encoded: str, query: str | None) -> None:
    request.path = decoded
    if query is not None:
        request.query = query
    request.uri = encoded + ("?" + request.query if request.query else "")


def _escape_group(text: str) -> str:
    # a decoded ? or # in the path must not start a query or fragment in the destination
    return text.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def build(config: RewriteConfig, next: Handler, site: Site) -> Handler:
    rules = [(_Compiled(r), len(r.base)) for r in config.rules]
    root = site.root

    def rewrite_handler(request: Request) -> HandlerResult:
        best: _Compiled | None = None
        best_match: re.Match[str] | bool = False
        best_len = 0
        for rule, base_len in rules:
            if base_len <= best_len:
                continue
            m = rule.match(request)
            if m is False:
                continue
            best, best_match, best_len = rule, m, base_len
        if best is not None:
            fixed = best.fixed
            if fixed is not None:
                _point(request, *fixed)
                return next(request)
            extra: dict[str, str] | None = None
            if isinstance(best_match, re.Match):
                extra = {
                    str(i): _escape_group(g or "") for i, g in enumerate(best_match.groups(), 1)
                }
                extra["0"] = _escape_group(best_match.group(0))
            dest: tuple[str, str | None] | None = None
            last = len(best.to) - 1
            for i, (template, slash) in enumerate(best.to):
                dest = clean_destination(template.render(request, extra=extra), slash)
                # the last destination is taken whether it exists or not: no stat for it
                if i == last or _exists(root, dest[0], dest[0].endswith("/")):
                    break
            if dest is not None:
                apply_rewrite(request, dest[0], dest[1])
        return next(request)

    return rewrite_handler


register("rewrite", parse, build)
