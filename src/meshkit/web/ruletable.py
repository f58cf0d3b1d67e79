"""The rule table of the compiled lane: which requests of which sites it answers itself.

The compiled lane (meshkit._fastpath.Lane, _lane.pxi and _lanerules.pxi) answers a request
head that the response cache does not hold from this table when the request's site was
compiled into it. The decision is made once per site, when the lane first sees the port's
handler (a Router; again after a reload): a site is compiled when every directive it has is
one the table can express (LANE_DIRECTIVES); `browse` and `markdown` scopes are kept as path
prefixes the lane leaves to the handlers. Anything else (other directives, other methods,
conditional or range requests it cannot decide, Accept-Encoding, percent-escapes, dot
segments, a 404...) goes to the Python chain, which is the lane's twin: the lane's answers are
the bytes the chain would send (tests/web/test_lane_rules.py compares the two).

For a compiled site the lane does the file server's work (meshkit.web.fileserver) for a
request path: the file, or a folder's first index file, with ETag, Last-Modified,
Content-Type, an If-None-Match / If-Modified-Since 304, and the canonical 301s (a folder
without its slash, a file with one, an index file asked for by name). `resolve()` here fills
the lane's per-site path table on a path's first request (and after its file changed): it
asks the site's FileServer for the entries (its FileCache: realpath checks, hidden files)
and serialises the heads with http1.serialize_head around a Date placeholder, so that the
bytes are the chain's by construction; the lane then answers repeats after one stat(2) of
the answer's validator, as nginx's open_file_cache does.

MESHKIT_LANE_RULES=0 turns the table off (the lane then answers only from the response
cache); MESHKIT_LANE=0 or MESHKIT_NO_EXTENSIONS=1 turn the whole lane off.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from meshkit.web import http1
from meshkit.web.filecache import Entry
from meshkit.web.fileserver import FileServer, fileserver_for
from meshkit.web.message import Headers
from meshkit.web.paths import clamp_path
from meshkit.web.router import Router

__all__ = [
    "DATE_MARK",
    "ENABLED",
    "LANE_DIRECTIVES",
    "Answer",
    "SiteRules",
    "compile_router",
    "resolve",
    "site_rules",
]

# Directives a compiled site may have: configuration the file server reads, or handlers
# that leave the requests the lane takes alone (gzip: only with Accept-Encoding, which the
# lane leaves to the chain; browse and markdown: only under their paths, kept as prefixes).
LANE_DIRECTIVES = frozenset(
    {"root", "index", "mime", "gzip", "browse", "markdown", "tls", "bind", "timeouts"}
)

ENABLED = os.environ.get("MESHKIT_LANE_RULES", "").strip().lower() not in ("0", "off", "no")

# stands for the 29 bytes of an IMF-fixdate in a serialised head (same length as one)
DATE_MARK = "\x01" * 29

KIND_FILE = 0
KIND_REDIRECT = 1


class Answer:
    """What the lane sends for one request path of a compiled site, and the file whose
    unchanged stat keeps it valid (the validator the chain's response would carry)."""

    __slots__ = (
        "data",
        "entry",
        "etag",
        "fd",
        "head",
        "head304",
        "kind",
        "last_modified",
        "size",
        "vsig",
    )

    def __init__(
        self,
        kind: int,
        vsig: tuple[str, int, int, int, int, int],
        head: bytes,
        head304: bytes = b"",
        entry: Entry | None = None,
    ) -> None:
        self.kind = kind
        self.vsig = vsig  # (path, ino, dev, size, mtime_ns, ctime_ns): message.Validator
        self.head = head  # the head with DATE_MARK where the Date goes
        self.head304 = head304
        self.entry = entry  # the file's FileCache entry (a reference is held: its fd)
        self.fd = entry.fd if entry is not None else -1
        self.size = entry.size if entry is not None else 0
        self.data = entry.data if entry is not None else None
        self.etag = entry.etag.encode("latin-1") if entry is not None else b""
        self.last_modified = entry.last_modified.encode("latin-1") if entry is not None else b""
        if entry is not None:
            entry.acquire()

    def release(self) -> None:
        """Drop the reference on the file's entry (the lane no longer keeps this answer)."""
        e, self.entry = self.entry, None
        if e is not None:
            e.release()


class SiteRules:
    """One compiled site: its file server and the path prefixes left to the chain."""

    __slots__ = ("files", "python_prefixes")

    def __init__(self, files: FileServer, python_prefixes: tuple[str, ...]) -> None:
        self.files = files
        self.python_prefixes = python_prefixes


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
        out.extend({path, clamp_path(path)})
    return out


def site_rules(site: Any) -> SiteRules | None:
    """The site compiled for the lane, or None when the chain must answer all of it."""
    if site is None or not ENABLED:
        return None
    directives = getattr(site, "directives", None)
    if not isinstance(directives, dict) or not set(directives) <= LANE_DIRECTIVES:
        return None
    prefixes: list[str] = []
    for name, attr in (("browse", None), ("markdown", "path")):
        config = directives.get(name)
        if config is None:
            continue
        scopes = _scopes(config, attr)
        if scopes is None:
            return None
        prefixes.extend(scopes)
    files = fileserver_for(site)
    if not files.index_files:
        return None
    return SiteRules(files, tuple(dict.fromkeys(prefixes)))


def compile_router(handler: Any) -> dict[int, SiteRules] | None:
    """id(route) -> the route's compiled site, for a port whose handler is a Router (None:
    the lane answers nothing of this port from the table)."""
    if not ENABLED or type(handler) is not Router:
        return None
    out: dict[int, SiteRules] = {}
    for route in handler.routes:
        rules = site_rules(getattr(route, "site", None))
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


def _head(status: int, headers: Headers, length: int) -> bytes | None:
    try:
        return http1.serialize_head(
            status,
            headers,
            content_length=length,
            keep_alive=True,
            version="1.1",
            date=DATE_MARK,
        )
    except ValueError:
        return None  # CR/LF in a value: the chain answers (with its 500)


def _redirect(location: str, e: Entry) -> Answer | None:
    head = _head(301, Headers([("Location", location)]), 0)
    return None if head is None else Answer(KIND_REDIRECT, e.sig, head)


def _file(files: FileServer, e: Entry) -> Answer | None:
    ctype = e.ctype or files.content_type(e)
    h = Headers(
        [
            ("Content-Type", ctype),
            ("ETag", e.etag),
            ("Last-Modified", e.last_modified),
            ("Accept-Ranges", "bytes"),
        ]
    )
    head = _head(200, h, e.size)
    head304 = _head(304, Headers([("ETag", e.etag), ("Last-Modified", e.last_modified)]), 0)
    if head is None or head304 is None:
        return None
    return Answer(KIND_FILE, e.sig, head, head304, e)


def resolve(rules: SiteRules, path: str) -> Answer | None:
    """The lane's answer to GET/HEAD of `path` (clean: no `%`, dot segment, `//`, `\\`),
    as meshkit.web.fileserver.FileServer.__call__ decides it; None when that answer is one
    the lane leaves to the chain (404, 403, the welcome page, an index file other than the
    first name, an internal path)."""
    files = rules.files
    if files.internal and files.is_internal(path):
        return None
    fs = (files.prefix or "/") if path == "/" else files.prefix + path.rstrip("/")
    e = files.cache.lookup(fs)
    if not isinstance(e, Entry) or e.real in files.hidden:
        return None
    if e.is_dir:
        if not path.endswith("/"):
            return _redirect(path + "/", e)
        ie = files.cache.lookup(("" if fs == "/" else fs) + files.first_index)
        if not isinstance(ie, Entry) or ie.is_dir or ie.real in files.hidden:
            return None  # another index name, the welcome page or a 404: the chain's
        return _file(files, ie)
    if path.endswith("/"):
        return _redirect(path.rstrip("/") or "/", e)
    name = path[path.rfind("/") + 1 :]
    if name in files.index_set:
        return _redirect(path[: len(path) - len(name)], e)
    return _file(files, e)
