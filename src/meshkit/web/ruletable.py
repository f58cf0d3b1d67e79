"""The rule table of the compiled lane: which requests of which sites it answers itself.

The compiled lane (meshkit._fastpath.Lane, _lane.pxi and _lanerules.pxi) answers a request
head that the response cache does not hold from this table when the request's site was
compiled into it. The decision is made once per site, when the lane first sees the port's
handler (a Router; again after a reload): a site is compiled when every directive it has is
one the table can express (LANE_DIRECTIVES) in a form it can express (`header` values,
`redir` and `rewrite` destinations and their `if`s whose placeholders are all functions of
the key: the target's, the Host's, regexp groups, {user}; see _KEY_BUILTINS; `log` formats
whose placeholders are all in LOG_NAMES, no ipmask; `basicauth` with passwords or htpasswd
files, `ext` and `errors` as they are);
`browse` and `markdown` scopes are kept as path prefixes the lane leaves to the chain.

For such a site the answer to a request is a function of a few things the lane reads from
the head in C, and of files: the method, the request-target, the Host value and the fields
its directives read (the file server's conditional and range fields, Authorization, and
Accept-Encoding: gzip's answer is a function of it and of the response, and keeps the file
server's validators, as the response cache relies on too). That is the table's key
(anything else in the head, such as User-Agent or cookies, reads nothing here). The first
request with a key runs the site's own handler chain once (`fill`, in Python), and the
answer is kept as a respcache.CachedResponse with the validators the file server put on it
(an access log's lines replayed per client and second, as the response cache does); later
requests with the key are answered in C. Whether the answer is still current is known from
inotify watches on what its validators' paths resolve through (meshkit.web.filewatch; `arm`
sets them, then the lane stats each validator once): the lane looks for queued events
before each answer, and an event that touches one of them sends it back to a stat and a new
arming; where watches cannot be set or trusted, one stat(2) per validator per request as
before (MESHKIT_FILE_WATCH=0 forces that). A response without
validators is kept only when it is a `redir` 301 (a function of the path alone, and not
behind an htpasswd file); anything else (a 401, an awaitable) is the chain's every time.

What the validators pin besides the file served (meshkit.web.lanedeps): a 404 of a missing
file is pinned by the deepest folder on its way (kept here, _ERROR_CODES, though respcache
keeps none); `ext` adds the extensions it tried and missed; an `errors` page adds the page;
a `basicauth` pass by an htpasswd entry adds the file as last read (htpasswd.HtpasswdFile:
so a bcrypt check, which the chain runs in a thread, is never run here: the key's answer is
kept once basicauth remembers the credentials, a second later at the soonest). An answer
whose run would write an error-log line (a missing errors page, a failure) is never kept:
`fill` marks its request (lanedeps.LANE_FILL), the errors handler then writes nothing, and
the chain runs the request again and writes the line. The chain stays the twin:
tests/web/test_lane_rules.py and test_rule_coverage.py compare the two over generated
requests, sites and file changes.

MESHKIT_LANE_RULES=0 turns the table off (the lane then answers only from the response
cache); MESHKIT_LANE=0 or MESHKIT_NO_EXTENSIONS=1 turn the whole lane off.
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from typing import Any

from meshkit.web import filewatch, http1
from meshkit.web.directives.basicauth import HTPASSWD_PREFIX
from meshkit.web.directives.redir import location
from meshkit.web.lanedeps import LANE_FILL, LANE_FILL_TRYING
from meshkit.web.message import EmptyBody, FileBody, Headers, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import HEAD_BUILTINS, Conditions, Template, compile_template
from meshkit.web.respcache import CachedResponse, ResponseCache
from meshkit.web.router import Router

__all__ = [
    "ENABLED",
    "LANE_DIRECTIVES",
    "LOG_NAMES",
    "SiteRules",
    "arm",
    "compile_router",
    "fill",
    "forget",
    "retire",
    "rules_for",
    "site_rules",
]

# Directives a compiled site may have (each in the form _expressible accepts): configuration
# the file server reads, or handlers whose answer is a function of the table's key and of
# the files the file server validates (gzip: a function of Accept-Encoding, in the key, and
# of the response; browse and markdown: only under their paths, kept as prefixes).
LANE_DIRECTIVES = frozenset(
    {
        "root",
        "index",
        "mime",
        "gzip",
        "browse",
        "markdown",
        "tls",
        "bind",
        "timeouts",
        "header",
        "redir",
        "rewrite",
        "basicauth",
        "log",
        "status",  # its answers carry no validators: never kept
        "internal",  # its 404s are never kept; a file answer has no X-Accel-Redirect
        "ext",  # pins the extensions it tried and missed (lanedeps)
        "errors",  # a page replacing a pinned 404 is pinned to the page too; error log
        # lines are never replayed (an answer that wrote one is never kept)
    }
)

# log placeholders a replayed line may hold: the key's, the client's, the response's and
# the second's (never another request field, which the key does not hold)
LOG_NAMES = frozenset(
    {
        "remote",
        "user",
        "when",
        "method",
        "uri",
        "proto",
        "status",
        "size",
        "path",
        "query",
        "host",
        "port",
        "scheme",
    }
)

ENABLED = os.environ.get("MESHKIT_LANE_RULES", "").strip().lower() not in ("0", "off", "no")

_REDIR_CODES = frozenset({301})  # what respcache keeps besides 200/206/304
# error answers kept here (respcache keeps none): the file server's 404 of a missing file,
# pinned by lanedeps.missing, or the errors page that replaced it (pinned to the page too)
_ERROR_CODES = frozenset({404})
_MAX_ERROR_BODY = 256 << 10  # an errors page kept in memory (a larger one: the chain's)
_MAX_ENTRIES = 512  # per site (respcache.ResponseCache's bounds)
_SLACK = 64  # tickets of answers gone kept before a sweep (SiteRules.tickets)


class SiteRules:
    """One compiled site: its chain, the path prefixes left to the chain, the answers made
    so far (key bytes -> respcache.CachedResponse, bounded as the response cache) and how
    each is known to be current (key -> (the answer, its filewatch.Ticket or None: a stat
    per request))."""

    __slots__ = (
        "answers",
        "handler",
        "python_prefixes",
        "redirect_templates",
        "redirects",
        "redirects_kept",
        "tickets",
    )

    def __init__(
        self,
        handler: Any,
        python_prefixes: tuple[str, ...],
        redirects: frozenset[str],
        redirect_templates: tuple[Template, ...] = (),
        redirects_kept: bool = True,
    ) -> None:
        self.handler = handler
        self.python_prefixes = python_prefixes
        self.redirects = redirects  # the Location values of the site's literal redir rules
        self.redirect_templates = redirect_templates  # and of those with placeholders
        # whether a redir answer (no validators) is a function of the key and config alone:
        # not behind a basicauth whose htpasswd file may change
        self.redirects_kept = redirects_kept
        self.answers = ResponseCache(max_entries=_MAX_ENTRIES)
        self.tickets: dict[bytes, tuple[CachedResponse, filewatch.Ticket | None]] = {}


def _scopes(config: Any, attr: str | None) -> list[str] | None:
    """The path scopes of a browse (list of dicts) or markdown (rules) config; None when the
    config has a shape this table does not know."""
    out: list[str] = []
    items = config if isinstance(config, list) else getattr(config, "rules", None)
    if not isinstance(items, list):
        return None
    for item in items:
        path = item.get("path") if isinstance(item, dict) else getattr(item, attr or "", None)
        if not isinstance(path, str):
            return None
        out.extend(dict.fromkeys((path, clamp_path(path))))
    return out


# Placeholders whose value is a function of the table's key (the request line's method and
# target, the Host value, the fields read: see the module doc) and of the site's config, so
# an answer rendered with them once is the answer for every request with that key, as nginx
# evaluates `add_header $uri` per request to the same result. Not {scheme} or {proto} (the
# key holds neither: fill renders one request's), {server_port}, {remote}, {port}, times,
# ids, other request fields ({>Name}, {~cookie}) or response fields ({<Name}).
_KEY_BUILTINS = (HEAD_BUILTINS - {"scheme", "proto"}) | {"user"}  # {user}: Authorization


def _key_name(name: str) -> bool:
    if name in _KEY_BUILTINS or name.isdigit():  # digits: a rewrite's regexp groups (path)
        return True
    if name.startswith("?") and len(name) > 1:  # a query argument: the target
        return True
    return name.startswith("label") and name[5:].isdigit() and name[5:6] != "0"  # Host


def _keyed(text: str) -> bool:
    """Whether `text` renders the same for every request with one key (see _KEY_BUILTINS)."""
    return all(_key_name(n) for n in compile_template(text).names)


def _keyed_ifs(conditions: Conditions) -> bool:
    """Whether each `if` compares values of the key alone (`match`'s B is a regexp)."""
    return all(_keyed(c.a) and (c.op.endswith("match") or _keyed(c.b)) for c in conditions.ifs)


def _expressible(name: str, config: Any) -> bool:
    """Whether the table can take this directive's config (see the module doc)."""
    rules = getattr(config, "rules", None)
    if name == "header":
        return all(_keyed(op.value) for r in rules or () for op in r.headers)
    if name == "redir":
        return all(
            not r.meta and _keyed_ifs(r.conditions) and _keyed(r.to) and r.to.startswith("/")
            for r in rules or ()
        )
    if name == "rewrite":
        return all(
            _keyed_ifs(r.conditions) and len(r.to) == 1 and _keyed(r.to[0]) for r in rules or ()
        )
    if name == "log":
        for entry in getattr(config, "entries", None) or ():
            if entry.ipmask_v4 or entry.ipmask_v6:
                return False
            names = compile_template(entry.format).names
            if not set(names) <= LOG_NAMES:
                return False
        return True
    return True


def site_rules(site: Any, handler: Any) -> SiteRules | None:
    """The site compiled for the lane, or None when the chain must answer all of it."""
    if site is None or not ENABLED:
        return None
    directives = getattr(site, "directives", None)
    if not isinstance(directives, dict) or not set(directives) <= LANE_DIRECTIVES:
        return None
    try:
        if not all(_expressible(n, c) for n, c in directives.items() if c is not None):
            return None
    except (AttributeError, TypeError):
        return None  # a config of a shape this table does not know
    prefixes: list[str] = []
    for name, attr in (("browse", None), ("markdown", "path")):
        config = directives.get(name)
        if config is None:
            continue
        scopes = _scopes(config, attr)
        if scopes is None:
            return None
        prefixes.extend(scopes)
    redir = directives.get("redir")
    tos = [compile_template(r.to) for r in getattr(redir, "rules", None) or ()]
    targets = frozenset(t.static for t in tos if t.static is not None)
    templated = tuple(t for t in tos if t.static is None)
    auth = directives.get("basicauth")
    files = any(r.password.startswith(HTPASSWD_PREFIX) for r in getattr(auth, "rules", None) or ())
    return SiteRules(handler, tuple(dict.fromkeys(prefixes)), targets, templated, not files)


def _is_redirect(rules: SiteRules, request: Request, response: Response) -> bool:
    """Whether `response` is a `redir` rule's 301 (a function of the key and the config)."""
    if not rules.redirects_kept:
        return False
    if response.status not in _REDIR_CODES or isinstance(response.body, FileBody):
        return False
    got = response.headers.get("Location")
    if got in rules.redirects:
        return True
    return any(got == location(request, t.render(request)) for t in rules.redirect_templates)


def compile_router(handler: Any) -> dict[int, SiteRules] | None:
    """id(route) -> the route's compiled site, for a port whose handler is a Router (None:
    the lane answers nothing of this port from the table)."""
    if not ENABLED or type(handler) is not Router:
        return None
    out: dict[int, SiteRules] = {}
    for route in handler.routes:
        rules = site_rules(getattr(route, "site", None), route.handler)
        if rules is not None:
            out[id(route)] = rules
    return out or None


_COMPILED: weakref.WeakKeyDictionary[Any, dict[int, SiteRules] | None] = weakref.WeakKeyDictionary()


def rules_for(handler: Any) -> dict[int, SiteRules] | None:
    """compile_router(handler), once per handler."""
    try:
        return _COMPILED[handler]
    except KeyError:
        pass
    except TypeError:
        return None  # not weak-referenceable: not a Router
    table = _COMPILED[handler] = compile_router(handler)
    return table


def retire(handler: Any) -> None:
    """Forget the answers kept for a handler the server no longer uses (a reload): their
    files close now rather than when the old chain is collected (and their watches go)."""
    for rules in (_COMPILED.get(handler) or {}).values():
        rules.answers.clear()
        for key in list(rules.tickets):
            forget(rules, key)


def forget(rules: SiteRules, key: bytes) -> None:
    """Let go of how the answer under `key` was known to be current (it went, or changed)."""
    old = rules.tickets.pop(key, None)
    if old is not None and old[1] is not None:
        watch = filewatch.shared()
        if watch is not None:
            watch.release(old[1])


def arm(rules: SiteRules, key: bytes, entry: CachedResponse) -> filewatch.Ticket | None:
    """Watch the files `entry` (the answer under `key`) depends on (filewatch): its ticket,
    or None when they cannot be watched exactly (the lane then stats them per request). The
    caller stats each validator once after this: a change before the watches were set is
    seen by that stat, any later one by the watches."""
    forget(rules, key)
    watch = filewatch.shared()
    ticket = None
    if watch is not None:
        ticket = watch.arm([v[0] for v in entry.validators])
    tickets = rules.tickets
    tickets[key] = (entry, ticket)
    if len(tickets) > len(rules.answers.entries) + _SLACK:
        # answers the bounded cache let go of meanwhile: their watches go too
        entries = rules.answers.entries
        for k in [k for k, (e, _) in tickets.items() if entries.get(k) is not e]:
            forget(rules, k)
    return ticket


def _release(body: Any) -> None:
    if isinstance(body, FileBody) and body.release is not None:
        release, body.release = body.release, None
        release()


def _error_entry(
    response: Response, method: str, request: Request, version: str = "1.1"
) -> CachedResponse | None:
    """A kept error answer (_ERROR_CODES; an in-memory body, the default page or the errors
    directive's), as ResponseCache.make keeps the statuses it takes."""
    body = response.body
    if type(body) is not bytes or response.close or response.validators is None:
        return None
    if len(body) > _MAX_ERROR_BODY:
        return None
    send = http1.body_allowed(response.status, method)
    headers = Headers(response.headers.items())
    entry = CachedResponse(
        response.status, headers, version, body if send else b"", len(body), response.validators
    )
    if request.on_complete:
        entry.attach(request, response)
    return entry


def fill(
    rules: SiteRules,
    key: bytes,
    method: str,
    url: bytes,
    items: list[tuple[str, str]],
    host: str,
    conn: Any,
    version: str = "1.1",
    scheme: str = "http",
) -> CachedResponse | None:
    """Run the site's chain for a request (GET or HEAD, HTTP/1.1, keep-alive, no body; or
    an HTTP/2 stream without a body: version "2.0", web/h2rules.py) and keep its answer
    under `key` when the answer may be kept (see the module doc); the entry, or None (the
    connection then reads the head as before: the chain answers it)."""
    try:
        target = http1.parse_target(url, method)
    except http1.HttpError:
        return None
    request = Request(
        method,
        url.decode("latin-1"),
        target.path,
        target.query,
        version,
        Headers(items),
        EmptyBody(),
        scheme,
        host,
        conn._remote_addr,
        conn._remote_port,
        conn._local_addr,
        conn._local_port,
        time.time(),
    )
    request.vars[LANE_FILL] = LANE_FILL_TRYING  # (an error log line is not written: see errors)
    try:
        result = rules.handler(request)
    except Exception:  # the chain runs it again and answers (and logs) its failure
        return None
    if not isinstance(result, Response):
        close = getattr(result, "close", None)
        if close is not None:
            # a coroutine never awaited: the chain runs it again for real. Closing it frees
            # the inner ones a wrapper was handed (basicauth's bcrypt check) unstarted, which
            # Python reports as "never awaited": expected here, so not shown
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                close()
        return None
    if request.vars.pop(LANE_FILL, None) != LANE_FILL_TRYING:
        _release(result.body)
        return None  # an error log line to write: the chain's run writes it
    if result.validators is None:
        # a redir answer is a function of the key alone: valid as long as the config is
        if not _is_redirect(rules, request, result):
            _release(result.body)
            return None
        result.validators = ()
    if result.status in _ERROR_CODES:
        entry = _error_entry(result, method, request, version)
    else:
        entry = ResponseCache.make(result, version, method, request)
    _release(result.body)  # the entry holds its own reference
    if entry is None:
        return None
    if entry.callbacks and entry.replay is None:
        entry.close()
        return None  # callbacks that need the request itself: the chain's
    rules.answers.put(key, entry)
    return entry
