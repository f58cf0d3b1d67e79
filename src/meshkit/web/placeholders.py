"""Caddy v1 placeholders (`{method}`, `{>Referer}`, `{when}`...): compiled once, rendered fast.

A format string is parsed once into a Template: literal pieces and placeholder getters. Rendering
joins them for one request (and, for log lines, its response), which is what keeps access
logging cheap: no scanning for braces per request.

    tpl = compile_template('{remote} - {user} [{when}] "{method} {uri} {proto}"', empty="-")
    line = tpl.render(request, response, size=1234)

Rules (Caddy v1's replacer): an unknown placeholder renders as the empty value, and so does a
known one whose value is empty; `\\{` and `\\}` are literal braces; an unpaired `{` is literal.
Values set by directives live in `request.vars` (`{user}` from basicauth, `{upstream}` from
proxy) and override built-in names; `extra` (rewrite's `{1}`, log's masked `{remote}`) overrides
both.

A template compiled with `escape=True` (the access log's) writes each substituted value with
`log_escape`: control characters, `"` and `\\` become `\\xHH` as nginx's `escape=default`
writes them, so a `%0a` in a path or a `"` in a User-Agent cannot forge a log line or a
field. Other uses (header values, redirects, rewrites) get the values as they are.

This module also holds `if A OP B` conditions (used by redir and rewrite), which compare
rendered placeholders.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, quote_plus, unquote

# go_duration is re-exported: {latency} is the one placeholder that prints a duration.
from meshkit.base.durations import go_duration as go_duration
from meshkit.web.message import Request, Response

# {when}: Go's "02/Jan/2006:15:04:05 -0700" in local time.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(slots=True)
class RenderContext:
    """What a placeholder getter may read besides the request."""

    response: Response | None = None
    size: int | None = None  # body bytes sent
    latency: float | None = None  # seconds
    now: float = 0.0


Getter = Callable[[Request, RenderContext], str]


# --- log escaping ---------------------------------------------------------------------------

# What a value must not bring into a log line as it is: C0 controls and DEL (a newline forges
# a line, ESC drives terminals), `"` and `\\` (they delimit and escape fields in the common
# and combined formats), and the other characters str.splitlines() breaks at (NEL, LS, PS:
# the syslog sink splits lines that way).
_LOG_UNSAFE = re.compile('[\x00-\x1f\x7f"\\\\\x85\u2028\u2029]')


def _hex(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}"


def log_escape(value: str) -> str:
    """`value` safe inside a log line: nginx's escape=default (`\\xHH`, upper case)."""
    if _LOG_UNSAFE.search(value) is None:
        return value  # the usual case: nothing to replace, no new string
    return _LOG_UNSAFE.sub(_hex, value)


# --- time formatting ------------------------------------------------------------------------

_when_cache: tuple[int, str] = (-1, "")


def format_when(now: float) -> str:
    """`02/Jan/2006:15:04:05 -0700` (the common log format's time), local time."""
    global _when_cache
    sec = int(now)
    cached = _when_cache
    if cached[0] == sec:
        return cached[1]
    t = time.localtime(sec)
    off = t.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off) // 60
    text = (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"
    )
    _when_cache = (sec, text)
    return text


def format_when_iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now)))


# --- request values -------------------------------------------------------------------------


def original_path(request: Request) -> str:
    """The decoded path as received, before any rewrite."""
    if request.original_uri == request.uri:
        return request.path
    return unquote(request.original_uri.split("?", 1)[0])


def _cookie(request: Request, name: str) -> str:
    for raw in request.headers.get_all("Cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            # fall back to a plain split for cookies SimpleCookie refuses
            for piece in raw.split(";"):
                key, _, value = piece.strip().partition("=")
                if key == name:
                    return value.strip('"')
            continue
        morsel = jar.get(name)
        if morsel is not None:
            return morsel.value
    return ""


def _query_arg(request: Request, name: str) -> str:
    values = parse_qs(request.query, keep_blank_values=True).get(name)
    return values[0] if values else ""


def _response_header(ctx: RenderContext, name: str) -> str:
    if ctx.response is None:
        return ""
    return ",".join(ctx.response.headers.get_all(name))


def _latency(request: Request, ctx: RenderContext) -> float | None:
    if ctx.latency is not None:
        return ctx.latency
    if request.start_time:
        return max(0.0, (ctx.now or time.time()) - request.start_time)
    return None


def _request_id(request: Request, ctx: RenderContext) -> str:
    rid = request.vars.get("request_id")
    if not rid:
        rid = str(uuid.uuid4())
        request.vars["request_id"] = rid
    return rid


def _file(request: Request, ctx: RenderContext) -> str:
    return request.path.rsplit("/", 1)[-1]


def _dir(request: Request, ctx: RenderContext) -> str:
    return request.path[: request.path.rfind("/") + 1]


def _status(request: Request, ctx: RenderContext) -> str:
    return str(ctx.response.status) if ctx.response is not None else ""


def _size(request: Request, ctx: RenderContext) -> str:
    return str(ctx.size) if ctx.size is not None else ""


def _latency_text(request: Request, ctx: RenderContext) -> str:
    lat = _latency(request, ctx)
    return go_duration(lat) if lat is not None else ""


def _latency_ms(request: Request, ctx: RenderContext) -> str:
    lat = _latency(request, ctx)
    return str(int(lat * 1000)) if lat is not None else ""


def _now(ctx: RenderContext) -> float:
    return ctx.now or time.time()


@lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


BUILTINS: dict[str, Getter] = {
    "method": lambda r, c: r.method,
    "scheme": lambda r, c: r.scheme,
    "host": lambda r, c: r.host,
    "hostonly": lambda r, c: r.hostonly,
    "hostname": lambda r, c: _hostname(),
    "path": lambda r, c: original_path(r),
    "path_escaped": lambda r, c: quote_plus(original_path(r), safe=""),
    "rewrite_path": lambda r, c: r.path,
    "rewrite_path_escaped": lambda r, c: quote_plus(r.path, safe=""),
    "query": lambda r, c: r.query,
    "query_escaped": lambda r, c: quote_plus(r.query, safe=""),
    "fragment": lambda r, c: "",
    "uri": lambda r, c: r.original_uri,
    "uri_escaped": lambda r, c: quote_plus(r.original_uri, safe=""),
    "rewrite_uri": lambda r, c: r.uri,
    "rewrite_uri_escaped": lambda r, c: quote_plus(r.uri, safe=""),
    "proto": lambda r, c: f"HTTP/{r.version}",
    "remote": lambda r, c: r.remote_addr,
    "port": lambda r, c: str(r.remote_port) if r.remote_port else "",
    "server_port": lambda r, c: str(r.server_port) if r.server_port else "",
    "file": _file,
    "dir": _dir,
    "request_id": _request_id,
    "when": lambda r, c: format_when(_now(c)),
    "when_iso": lambda r, c: format_when_iso(_now(c)),
    "when_unix": lambda r, c: str(int(_now(c))),
    "status": _status,
    "size": _size,
    "latency": _latency_text,
    "latency_ms": _latency_ms,
}

_LABEL = re.compile(r"label([1-9][0-9]*)")

# Built-ins whose value is a function of the request head bytes alone (plus the server's
# configuration): a response that depends on nothing else may be answered again from a copy
# for the same head (meshkit.web.respcache). Not here: the client's address and port, the
# time, a fresh request id, the response, and values directives set in request.vars.
HEAD_BUILTINS = frozenset(
    {
        "method",
        "scheme",
        "host",
        "hostonly",
        "hostname",
        "path",
        "path_escaped",
        "rewrite_path",
        "rewrite_path_escaped",
        "query",
        "query_escaped",
        "fragment",
        "uri",
        "uri_escaped",
        "rewrite_uri",
        "rewrite_uri_escaped",
        "proto",
        "file",
        "dir",
    }
)


def head_only(name: str) -> bool:
    """Whether `{name}` renders from the request head alone (see HEAD_BUILTINS): request
    headers, cookies, query arguments, host labels, regexp groups and head built-ins; a
    name a directive may set in request.vars ({user}, {upstream}...) is not."""
    if name in HEAD_BUILTINS or name.isdigit() or bool(_LABEL.fullmatch(name)):
        return True
    return len(name) > 1 and name[0] in ">~?"


def _label_getter(n: int) -> Getter:
    def get(r: Request, c: RenderContext) -> str:
        labels = r.hostonly.split(".")
        return labels[n - 1] if n <= len(labels) else ""

    return get


def getter_for(name: str) -> Getter:
    """The getter of the placeholder `{name}` (name without braces)."""
    if len(name) > 1:
        head, rest = name[0], name[1:]
        if head == ">":
            return lambda r, c: ",".join(r.headers.get_all(rest))
        if head == "<":
            return lambda r, c: _response_header(c, rest)
        if head == "~":
            return lambda r, c: _cookie(r, rest)
        if head == "?":
            return lambda r, c: _query_arg(r, rest)
    builtin = BUILTINS.get(name)
    if builtin is not None:
        return builtin
    m = _LABEL.fullmatch(name)
    if m:
        return _label_getter(int(m.group(1)))
    # {user}, {upstream} and anything else a directive may set
    return lambda r, c: r.vars.get(name, "")


# --- templates ------------------------------------------------------------------------------

# A part is a literal string or (name, getter, overridable by request.vars, escape its value)
Part = str | tuple[str, Getter, bool, bool]

# Built-ins whose own values are digits, a formatted time or a duration: never anything
# log_escape would change, so a log line does not scan them (a value a directive put in
# request.vars, or an `extra`, under the same name is escaped all the same).
LOG_SAFE = frozenset(
    {"status", "size", "when", "when_iso", "when_unix", "latency", "latency_ms", "port"}
    | {"server_port"}
)
_VAR_NAMES_FIRST = frozenset(BUILTINS)  # built-ins a directive may still override through vars


def _unescape(text: str) -> str:
    return text.replace("\\{", "{").replace("\\}", "}")


def parse_parts(fmt: str) -> list[tuple[bool, str]]:
    """Split a format into (is_placeholder, text) pieces; placeholder text is the inner name."""
    out: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        ch = fmt[i]
        if ch == "\\" and i + 1 < n and fmt[i + 1] in "{}":
            literal.append(fmt[i + 1])
            i += 2
            continue
        if ch == "{":
            end = fmt.find("}", i + 1)
            if end < 0:
                literal.append(_unescape(fmt[i:]))
                break
            if literal:
                out.append((False, "".join(literal)))
                literal = []
            out.append((True, fmt[i + 1 : end]))
            i = end + 1
            continue
        literal.append(ch)
        i += 1
    if literal:
        out.append((False, "".join(literal)))
    return out


class Template:
    """A format string compiled into literal and placeholder parts."""

    __slots__ = ("empty", "escape", "fmt", "head_only", "names", "overridable", "parts", "static")

    def __init__(self, fmt: str, empty: str = "", escape: bool = False) -> None:
        self.fmt = fmt
        self.empty = empty
        self.escape = escape  # log_escape each substituted value (log lines)
        parts: list[Part] = []
        names: list[str] = []
        for is_ph, text in parse_parts(fmt):
            if is_ph:
                names.append(text)
                esc = escape and text not in LOG_SAFE
                parts.append((text, getter_for(text), text in _VAR_NAMES_FIRST, esc))
            elif parts and isinstance(parts[-1], str):
                parts[-1] = parts[-1] + text
            else:
                parts.append(text)
        self.parts: tuple[Part, ...] = tuple(parts)
        self.names: tuple[str, ...] = tuple(names)
        # the built-in names of this template that request.vars may override
        self.overridable = frozenset(n for n in names if n in _VAR_NAMES_FIRST)
        self.static: str | None = None
        if not names:
            self.static = "".join(p for p in parts if isinstance(p, str))
        # every placeholder renders from the request head alone (see head_only)
        self.head_only = all(head_only(n) for n in names)

    def render(
        self,
        request: Request,
        response: Response | None = None,
        *,
        size: int | None = None,
        latency: float | None = None,
        now: float | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        if self.static is not None:
            return self.static
        ctx = RenderContext(response, size, latency, now if now is not None else time.time())
        empty = self.empty
        escape = self.escape
        variables = request.vars
        out: list[str] = []
        append = out.append
        if extra is None and (not variables or variables.keys().isdisjoint(self.overridable)):
            # the usual case: nothing overrides a getter, so no per-part lookups
            for part in self.parts:
                if isinstance(part, str):
                    append(part)
                    continue
                _, get, _, esc = part
                value = get(request, ctx)
                if not value:
                    append(empty)
                elif esc:
                    append(log_escape(value))
                else:
                    append(value)
            return "".join(out)
        for part in self.parts:
            if isinstance(part, str):
                append(part)
                continue
            name, get, overridable, esc = part
            if extra is not None and name in extra:
                value = extra[name]
                esc = escape
            elif overridable and variables and name in variables:
                value = variables[name]
                esc = escape
            else:
                value = get(request, ctx)
            if not value:
                append(empty)
            elif esc:
                append(log_escape(value))
            else:
                append(value)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.fmt!r}, empty={self.empty!r}, escape={self.escape!r})"


@lru_cache(maxsize=1024)
def compile_template(fmt: str, empty: str = "", escape: bool = False) -> Template:
    """The compiled Template of `fmt` (cached: the same format compiles once); `escape`
    for a log line's (see log_escape)."""
    return Template(fmt, empty, escape)


def replace(
    fmt: str,
    request: Request,
    response: Response | None = None,
    *,
    empty: str = "",
    extra: Mapping[str, str] | None = None,
) -> str:
    """Render `fmt` once (compiled templates are cached)."""
    if "{" not in fmt and "}" not in fmt:
        return fmt
    return compile_template(fmt, empty).render(request, response, extra=extra)


def known(name: str) -> bool:
    """Is `{name}` a placeholder meshkit knows (for warnings)?"""
    return (
        name in BUILTINS
        or name in ("user", "upstream")
        or (len(name) > 1 and name[0] in "<>~?")
        or bool(_LABEL.fullmatch(name))
        or name.isdigit()
    )


# --- `if A OP B` conditions ------------------------------------------------------------------

IF_OPS = ("is", "not", "has", "starts_with", "ends_with", "match")


@dataclass
class Condition:
    """`if A OP B` (placeholders in A and B; `match` takes B as a regular expression)."""

    a: str
    op: str
    b: str


@dataclass
class Conditions:
    """The `if` lines of a block and its `if_op` (and: all must hold; or: any)."""

    ifs: list[Condition] = field(default_factory=list)
    op: str = "and"


def condition_error(op: str, b: str) -> str | None:
    """Why `if A op B` cannot be used, or None."""
    base = op[4:] if op.startswith("not_") else op
    if base not in IF_OPS:
        return f"invalid operator {op!r} (expecting one of {', '.join(IF_OPS)}, or not_ forms)"
    if base == "match":
        try:
            re.compile(b)
        except re.error as e:
            return f"invalid regular expression {b!r}: {e}"
    return None


class CompiledConditions:
    """Conditions ready to evaluate against a request."""

    __slots__ = ("checks", "is_or")

    def __init__(self, conditions: Conditions) -> None:
        self.is_or = conditions.op == "or"
        self.checks: list[Callable[[Request], bool]] = [_compile_if(c) for c in conditions.ifs]

    def __bool__(self) -> bool:
        return bool(self.checks)

    @staticmethod
    def head_only(conditions: Conditions) -> bool:
        """Whether each `if` of `conditions` compares values of the request head alone."""
        return all(
            compile_template(c.a).head_only
            and (c.op.endswith("match") or compile_template(c.b).head_only)
            for c in conditions.ifs
        )

    def match(self, request: Request) -> bool:
        if not self.checks:
            return True
        if self.is_or:
            return any(check(request) for check in self.checks)
        return all(check(request) for check in self.checks)


def _compile_if(cond: Condition) -> Callable[[Request], bool]:
    neg = cond.op.startswith("not_")
    op = cond.op[4:] if neg else cond.op
    a = compile_template(cond.a)
    if op == "match":
        rx = re.compile(cond.b)

        def test(req: Request) -> bool:
            return (rx.search(a.render(req)) is not None) != neg

        return test
    b = compile_template(cond.b)
    fn: Callable[[str, str], bool] = {
        "is": lambda x, y: x == y,
        "not": lambda x, y: x != y,
        "has": lambda x, y: y in x,
        "starts_with": lambda x, y: x.startswith(y),
        "ends_with": lambda x, y: x.endswith(y),
    }[op]

    def check(req: Request) -> bool:
        return fn(a.render(req), b.render(req)) != neg

    return check
