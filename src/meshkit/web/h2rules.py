"""HTTP/2 streams answered from the rule table of compiled sites (meshkit.web.ruletable), for
both engines of meshkit.web.h2conn, as the HTTP/1 lane (_lanerules.pxi) answers a head.

A stream without a body (GET or HEAD) whose Host and path pick a compiled site is looked up
in that site's table by a key made as the lane makes it: the method and request-target, the
Host (here :authority and a `host` field, both), and the fields the site's answers may read
(lane_field_kind's: the file server's conditional and range fields, Authorization,
Accept-Encoding), in their order. A kept answer still current (its file watches not
cleared; where they cannot be set, one stat per validator, as the lane) is sent the way a
remembered answer is (H2Remembering._answer_hit: its fields, bytes or file range, the access
log's lines by its callbacks); a key seen first runs the site's chain once
(ruletable.fill, as an HTTP/2 request: version 2.0, this connection's scheme) and the answer
is kept when the table may keep it; one it may not (a 401, an error log line, an awaitable)
is the chain's, run again on the stream, and that key is not filled again within the same
second (the lane's rule). Anything else returns False: the stream takes its usual path.
Static routes (meshkit.web.router) are left to the response cache, whose remembered answers
are found in C before this module is asked (the `h2` bench case).

HTTP/2 answers are kept apart from the lane's (their own SiteRules per site: an HTTP/2 entry
is made for version 2.0, its log lines say HTTP/2.0, and the lane's C memo never sees the
entries this module adds or drops). MESHKIT_LANE_RULES=0 turns this off with the table.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from meshkit.web import filewatch, ruletable
from meshkit.web.h2push import MAX_STREAMS
from meshkit.web.respcache import CachedResponse

__all__ = ["KEY_PREFIX", "answer", "compiled", "plain_path", "rule_key"]

KEY_PREFIX = b"h2r\0"  # (h2remember's keys start with b"h2\0": never one of these)
MAX_HEADER_LIST = 65536  # h2conn's SETTINGS_MAX_HEADER_LIST_SIZE
_KEY_FIELDS = frozenset(
    {
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "authorization",
        "accept-encoding",
        "if-modified-since",
        "if-unmodified-since",
    }
)
_MAX_MISSES = 4096
_MAX_HOSTS = 1024


class _Site:
    """A compiled site's HTTP/2 answers: a SiteRules of its own (answers, tickets) and the
    keys whose answer could not be kept, by the second that was found."""

    __slots__ = ("misses", "rules")

    def __init__(self, rules: ruletable.SiteRules) -> None:
        self.rules = ruletable.SiteRules(
            rules.handler,
            rules.python_prefixes,
            rules.redirects,
            rules.redirect_templates,
            rules.redirects_kept,
        )
        self.misses: dict[bytes, int] = {}


class _Table:
    """A handler's compiled sites for HTTP/2 (by route) and its routes by Host value. (It
    holds no reference to the handler: _TABLES is keyed by it weakly.)"""

    __slots__ = ("by_host", "by_route")

    def __init__(self, compiled: dict[int, ruletable.SiteRules]) -> None:
        self.by_route = {k: _Site(v) for k, v in compiled.items()}
        self.by_host: dict[str, list[tuple[bytes, _Site | None]]] = {}

    def routes(self, handler: Any, host: str) -> list[tuple[bytes, _Site | None]]:
        found = self.by_host.get(host)
        if found is None:
            if len(self.by_host) >= _MAX_HOSTS:
                self.by_host.clear()
            # a static route's answers are remembered by the response cache (h2remember),
            # whose hits are found in C before this table is asked: left to it
            found = [
                (r.address.path.encode("utf-8"), None if r.static else self.by_route.get(id(r)))
                for r in handler._candidates(host)
            ]
            self.by_host[host] = found
        return found


_TABLES: weakref.WeakKeyDictionary[Any, _Table | None] = weakref.WeakKeyDictionary()


def _retire(sites: list[_Site]) -> None:
    """A handler the server no longer uses is gone (a reload): its answers' files close and
    their watches go now, as ruletable.retire does for the lane's."""
    for site in sites:
        site.rules.answers.clear()
        for key in list(site.rules.tickets):
            ruletable.forget(site.rules, key)


def _table(handler: Any) -> _Table | None:
    try:
        return _TABLES[handler]
    except KeyError:
        pass
    except TypeError:
        return None
    compiled = ruletable.rules_for(handler)
    table = _TABLES[handler] = _Table(compiled) if compiled else None
    if table is not None:
        weakref.finalize(handler, _retire, list(table.by_route.values()))
    return table


def compiled(handler: Any) -> bool:
    """Whether a port with this handler has sites this module may answer."""
    return _table(handler) is not None


def plain_path(target: bytes) -> int:
    """lane_plain_path (csrc/lane.c): the length of the path of a target the table may
    answer (printable ASCII, no '%', '\\\\' or '#', no "/." or "//" in the path), or -1."""
    if not target or target[0] != 0x2F:
        return -1
    end = len(target)
    prev = 0
    for i, c in enumerate(target):
        if c <= 0x20 or c >= 0x7F or c in b"%\\#":
            return -1
        if end == len(target):
            if c == 0x3F:
                end = i
            elif prev == 0x2F and c in b"./":
                return -1
        prev = c
    return end


def rule_key(
    method: bytes, target: bytes, authority: bytes, host_field: str | None, items: list[Any]
) -> bytes:
    """The table key of an HTTP/2 request (see the module)."""
    parts = [KEY_PREFIX, method, b" ", target, b"\n", authority, b"\n"]
    parts.append(b"\0" if host_field is None else host_field.encode("latin-1"))
    for name, value in items:
        if name.lower() in _KEY_FIELDS:
            parts.append(b"\n" + name.encode("latin-1") + b": " + value.encode("latin-1"))
    return b"".join(parts)


class _Addrs:
    """The connection fields ruletable.fill reads."""

    __slots__ = ("_local_addr", "_local_port", "_remote_addr", "_remote_port")

    def __init__(self, addrs: tuple[str, int, str, int]) -> None:
        self._remote_addr, self._remote_port, self._local_addr, self._local_port = addrs


def _checked(rules: ruletable.SiteRules, key: bytes, hit: CachedResponse) -> bool:
    """Arm hit's watches, then stat its validators once (_lr_checked): False (dropped) when
    it changed already."""
    ruletable.arm(rules, key, hit)
    if hit.valid():
        return True
    ruletable.forget(rules, key)
    rules.answers.drop(key)
    return False


def _current(rules: ruletable.SiteRules, key: bytes) -> CachedResponse | None:
    """The answer kept under key when it is current (_lr_current), else None."""
    watch = filewatch.shared()
    if watch is not None:
        watch.poll()  # clear the tickets whatever changed before this request
    hit = rules.answers.entries.get(key)
    if hit is None:
        return None
    got = rules.tickets.get(key)
    if got is not None and got[0] is hit:
        ticket = got[1]
        if ticket is None:
            if hit.valid():
                return hit
        elif ticket.ok:
            return hit
    return hit if _checked(rules, key, hit) else None


def answer(conn: Any, sid: int, parts: tuple[Any, ...]) -> bool:
    """Answer stream sid (its END_STREAM came with its header list, split as split_request
    does: parts) from the rule table; False: the stream takes its usual path."""
    server = conn._server
    table = _table(server._handler)
    if table is None or conn._goaway_at is not None or len(conn._streams) >= MAX_STREAMS:
        return False
    method, path, authority, items, size, long_line, host_field, _cl = parts
    if method != b"GET" and method != b"HEAD":
        return False
    if long_line or len(items) > server._max_fields:
        return False
    if size > min(MAX_HEADER_LIST, server._header_limit):
        return False
    host = authority.decode("latin-1") or host_field or ""
    if not host:
        return False
    plen = plain_path(path)
    if plen < 0:
        return False
    site = None
    for prefix, s in table.routes(server._handler, host):
        if path[:plen].startswith(prefix):
            site = s
            break
    if site is None:
        return False
    rules = site.rules
    for scope in rules.python_prefixes:  # browse, markdown: the chain's
        if path[:plen].startswith(scope.encode("utf-8")):
            return False
    key = rule_key(method, path, authority, host_field, items)
    hit = _current(rules, key)
    if hit is None:
        second = int(time.time())
        if site.misses.get(key) == second:
            return False
        fields = list(items)
        if authority and host_field is None:
            fields.append(("host", host))  # as the stream's Request gets it
        hit = ruletable.fill(
            rules,
            key,
            method.decode("latin-1"),
            path,
            fields,
            host,
            _Addrs(conn._addrs),
            version="2.0",
            scheme=conn._scheme,
        )
        if hit is None:
            if len(site.misses) >= _MAX_MISSES:
                site.misses.clear()
            site.misses[key] = second
            return False
        if not _checked(rules, key, hit):
            return False
    conn._answer_hit(sid, key, hit)
    return True
