"""The static file server at the end of every `meshkit web` handler chain.

`build_fileserver(site)` returns a synchronous handler. Per request it does one stat (through
the site's FileCache) for a file, one more per index name tried for a folder, and answers:

- 405 for anything but GET and HEAD (with `Allow: GET, HEAD`);
- 404 for anything that could reach outside the root: a `.` or `..` segment, a backslash or
  NUL in the path, `%2f` / `%5c` / `%00` in the raw request-target, symlinks whose real path
  leaves the root, the Caddyfile and the site's hidden files, `internal` paths asked for from
  outside; also for FIFOs, sockets and devices;
- 403 when the file exists but cannot be opened;
- 301 to add a folder's trailing slash, to remove a file's, and from `/dir/index.html` to
  `/dir/` (only the exact index names: `test-index.html` is an ordinary file); remembered
  like the files (validator: that folder or file), so repeats skip the handlers;
- the welcome page at `/` when the site has no index file there and no `browse`;
- 200 / 206 / 304 / 412 / 416 with ETag, Last-Modified, Accept-Ranges, Content-Range, and
  `.br` / `.gz` siblings (Content-Encoding, Vary: Accept-Encoding) when the client accepts them.

Multi-range requests: ranges that overlap or touch are merged; if one range is left it is
answered with a single-part 206, otherwise the whole file is sent with 200 (RFC 9110 lets a
server ignore Range). No multipart/byteranges.

Dotfiles are served like any other file (Caddy v1 did the same; `.well-known/` needs it);
hide them with `internal` or `status 404 /.git` if needed.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
import weakref
from urllib.parse import urlsplit

from meshkit.web import lanedeps
from meshkit.web.filecache import Entry, FileCache, Forbidden
from meshkit.web.message import FileBody, Headers, Request, Response, Validator
from meshkit.web.mimetypes import DEFAULT_TYPE, sniff, type_by_extension, with_charset
from meshkit.web.site import Site
from meshkit.web.welcome import render_welcome

log = logging.getLogger("meshkit.web")

#: Request.vars key set on requests re-run by an internal redirect (X-Accel-Redirect); such
#: requests may reach `internal` paths.
INTERNAL_VAR = "internal_redirect"

_MAX_RANGES = 64
_RACY_NS = 1_000_000_000  # folder changes more recent than this are not remembered

# request fields the file server reads (exact spellings first, then lower-cased)
_FIELDS: dict[str, int] = {}
for _i, _name in enumerate(
    [
        "Accept-Encoding",
        "If-None-Match",
        "If-Modified-Since",
        "Range",
        "If-Range",
        "If-Match",
        "If-Unmodified-Since",
    ]
):
    _FIELDS[_name] = _i
    _FIELDS[_name.lower()] = _i


def clean_path(path: str) -> str | None:
    """The request path made safe to append to a root, or None when it must be refused.

    Refused: not starting with `/`, a NUL or a backslash anywhere, a `.` or `..` segment.
    Runs of slashes collapse into one; a trailing slash is kept."""
    if not path.startswith("/") or "\x00" in path or "\\" in path:
        return None
    if "/." in path:
        for seg in path.split("/"):
            if seg == ".." or seg == ".":
                return None
    if "//" in path:
        trailing = path.endswith("/")
        path = "/" + "/".join(s for s in path.split("/") if s)
        if trailing and path != "/":
            path += "/"
    return path


def bad_escapes(uri: str) -> bool:
    """Does the raw request-target hide a slash, backslash or NUL behind percent-encoding?"""
    if "%" not in uri:
        return False
    raw = uri.split("?", 1)[0].lower()
    return "%2f" in raw or "%5c" in raw or "%00" in raw


def hidden_paths(site: Site) -> frozenset[str]:
    """Real paths never served: the Caddyfile and the site's hidden files."""
    out: set[str] = set()
    for p in [*site.hidden, *([site.config_path] if site.config_path else [])]:
        full = os.path.abspath(p)
        out.add(full)
        out.add(os.path.realpath(full))
    return frozenset(out)


def _orig_raw(req: Request) -> tuple[str, str]:
    """The path and query of the request-target as the client sent it (still encoded)."""
    u = req.original_uri or req.uri
    if u.startswith("/"):
        p, _, q = u.partition("?")
        return p, q
    parts = urlsplit(u)
    return parts.path or "/", parts.query


def _moved(path: str, query: str, e: Entry) -> Response:
    """The canonical 301 for entry `e` (a folder without its slash, a file with one, an index
    file asked for by name). Its Location is a function of the request head; whether it is
    sent at all, of `e` being there as the same file or folder: so `e` is its validator
    (Response.validators), and a repeat of the same head is answered from the server's copy
    until `e` changes or goes (a deleted index.html must stop redirecting at once)."""
    if path.startswith("//"):
        path = "/" + path.lstrip("/")  # never a protocol-relative redirect to another host
    loc = path + "?" + query if query else path
    return Response(301, Headers([("Location", loc)]), b"", validators=(e.sig,))


def _etag_match(header: str, etag: str, weak: bool) -> bool:
    """Does an If-Match / If-None-Match list match `etag`? Weak comparison ignores `W/`."""
    header = header.strip()
    if header == "*":
        return True
    if header == etag:
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _http_time(value: str) -> int | None:
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    try:
        return int(dt.timestamp())
    except (OverflowError, ValueError, OSError):
        return None


def parse_range(header: str, size: int) -> list[tuple[int, int]] | None:
    """Byte ranges (start, end inclusive) satisfiable within `size`.

    None: ignore the header (not bytes, malformed, too many ranges). []: nothing satisfiable
    (416). Otherwise the ranges, sorted and with overlapping or adjacent ones merged."""
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) > _MAX_RANGES:
        return None
    out: list[tuple[int, int]] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        first, last = first.strip(), last.strip()
        if not dash:
            return None
        if not first:
            if not last.isdigit():
                return None
            n = int(last)
            if n == 0 or size == 0:
                continue
            out.append((max(0, size - n), size - 1))
            continue
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        if last and int(last) < start:
            return None
        if start >= size:
            continue
        end = int(last) if last else size - 1
        out.append((start, min(end, size - 1)))
    if len(out) <= 1:
        return out
    out.sort()
    merged = [out[0]]
    for start, end in out[1:]:
        ps, pe = merged[-1]
        if start <= pe + 1:
            merged[-1] = (ps, max(pe, end))
        else:
            merged.append((start, end))
    return merged


def _accepts(header: str, coding: str) -> bool:
    """Does Accept-Encoding accept `coding` (named, not refused with q=0)?"""
    for item in header.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() != coding:
            continue
        params = params.strip().replace(" ", "")
        if params.startswith("q="):
            try:
                return float(params[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class FileServer:
    """The handler; also the site's shared view of its files for browse and ext."""

    # Its responses carry validators only when they depend on nothing but the request head
    # and those files (see Response.validators): the server may answer repeats from a copy.
    validated_responses = True

    def __init__(self, site: Site, cache: FileCache | None = None) -> None:
        self.site = site
        self.root = os.path.abspath(site.root)
        self.prefix = self.root.rstrip("/")  # "" when the root is "/"
        self.cache = cache if cache is not None else FileCache(self.root)
        self.index_files = tuple(site.index_files)
        self.index_set = frozenset(site.index_files)
        self.first_index = "/" + self.index_files[0] if self.index_files else "/"
        self.hidden = hidden_paths(site)
        self.internal = tuple(site.internal)
        self.mime = {k.lower(): with_charset(v) for k, v in site.mime.items()}
        self.welcome = not site.browse_on
        self.precompressed = True

    # --- shared helpers (browse, ext) -----------------------------------------------------
    def fs_path(self, req: Request, path: str | None = None) -> str | None:
        """The file system path for a request path (default: req.path) without its trailing
        slash, or None when the path is unsafe or internal to an outside request."""
        clean = clean_path(req.path if path is None else path)
        if clean is None or bad_escapes(req.uri):
            return None
        if self.internal and not req.vars.get(INTERNAL_VAR) and self.is_internal(clean):
            return None
        if clean == "/":
            return self.prefix or "/"
        return self.prefix + clean.rstrip("/")

    def is_internal(self, clean_path: str) -> bool:
        return bool(self.internal) and clean_path.startswith(self.internal)

    def lookup(self, fs: str) -> Entry | Forbidden | None:
        """A cache entry that may be served (None: 404, FORBIDDEN: 403)."""
        e = self.cache.lookup(fs)
        if isinstance(e, Entry) and e.real in self.hidden:
            return None
        return e

    def find_index(self, fs_dir: str) -> Entry | Forbidden | None:
        base = "" if fs_dir == "/" else fs_dir
        for name in self.index_files:
            e = self.cache.lookup(base + "/" + name)
            if e is None:
                continue
            if not isinstance(e, Entry):
                return e
            if not e.is_dir and e.real not in self.hidden:
                return e
        return None

    @staticmethod
    def siblings(e: Entry) -> tuple[bool, bool]:
        """Whether `e.path + ".br"` and `+ ".gz"` may exist (see _siblings)."""
        has_br, has_gz, _ = FileServer._siblings(e)
        return has_br, has_gz

    @staticmethod
    def _siblings(e: Entry) -> tuple[bool, bool, Validator | None]:
        """Whether `e.path + ".br"` and `+ ".gz"` may exist (then looked up for real), and
        the folder as a response validator (None while its last change is too recent).

        Remembered per entry against the parent folder's mtime and inode: adding, removing
        or renaming a sibling changes the folder's mtime, so one stat of the folder replaces
        two failing ones. Timestamps are coarse (a clock tick), so a folder changed less than
        a second ago is not trusted to stay unchanged and nothing is remembered."""
        parent = e.path[: e.path.rfind("/")] or "/"
        try:
            st = os.stat(parent)
        except OSError:
            return True, True, None
        # the folder as a response validator: only once its state is old enough to trust
        folder: Validator | None = (
            parent,
            st.st_ino,
            st.st_dev,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        s = e.siblings
        if s is not None and s[0] == st.st_mtime_ns and s[1] == st.st_ino:
            return s[2], s[3], folder
        lexists = os.path.lexists
        has_br = lexists(e.path + ".br")
        has_gz = lexists(e.path + ".gz")
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            e.siblings = (st.st_mtime_ns, st.st_ino, has_br, has_gz)
        else:
            folder = None
        return has_br, has_gz, folder

    def content_type(self, e: Entry) -> str:
        ct = e.ctype
        if ct is None:
            ct = type_by_extension(e.path, self.mime)
            if ct is None:
                head = e.data if e.data is not None else os.pread(e.fd, 512, 0)
                ct = sniff(head) if head else DEFAULT_TYPE
            e.ctype = ct
        return ct

    # --- the handler ----------------------------------------------------------------------
    def __call__(self, req: Request) -> Response:
        method = req.method
        if method != "GET" and method != "HEAD":
            return Response.error(405, Headers([("Allow", "GET, HEAD")]))
        path = req.path
        fs = self.fs_path(req)
        if fs is None:
            return Response.error(404)
        e = self.cache.lookup(fs)
        if e is None:
            missed = Response.error(404)
            if lanedeps.LANE_FILL in req.vars:
                # for the lane's rule table (respcache keeps no 404s): pinned by the folder
                # that would change if the file appeared (lanedeps.missing)
                missed.validators = lanedeps.missing(fs, self.prefix, _RACY_NS)
            return missed
        if not isinstance(e, Entry):
            return Response.error(403)
        if e.real in self.hidden:
            return Response.error(404)
        internal = bool(req.vars.get(INTERNAL_VAR))
        if e.is_dir:
            if not path.endswith("/") and not internal:
                p, q = _orig_raw(req)
                if not p.endswith("/"):
                    return _moved(p + "/", q, e)
            ie = self.find_index(fs)
            if ie is None:
                if self.welcome and fs == (self.prefix or "/"):
                    return self._welcome(req)
                return Response.error(404)
            if not isinstance(ie, Entry):
                return Response.error(403)
            # Which index file answers depends on the folder only when an earlier index name
            # could appear in it; the first name's own stat says everything.
            first = ("" if fs == "/" else fs) + self.first_index
            return self.serve(req, ie, None if ie.path == first else e)
        if not internal:
            if path.endswith("/"):
                p, q = _orig_raw(req)
                if p.endswith("/"):
                    return _moved(p.rstrip("/") or "/", q, e)
            else:
                name = path[path.rfind("/") + 1 :]
                if name in self.index_set:
                    p, q = _orig_raw(req)
                    if p.endswith("/" + name):
                        return _moved(p[: len(p) - len(name)], q, e)
        return self.serve(req, e)

    def serve(self, req: Request, e: Entry, folder: Entry | None = None) -> Response:
        """Answer with the file of entry `e` (conditional and range requests included).

        The 200/206/304 response carries validators (Response.validators): `e` (and the
        precompressed sibling served instead, and their folder when siblings were looked
        for), and `folder` when the caller's choice of `e` depended on it (an index file)."""
        deps: list[Validator] | None = [e.sig]
        if folder is not None:
            # a folder changed within the last clock tick may change again unseen
            racy = time.time_ns() - max(folder.mtime_ns, folder.ctime_ns) <= _RACY_NS
            deps = None if racy else [folder.sig, e.sig]
        ctype = e.ctype or self.content_type(e)
        # one pass over the request's fields for the few that matter here
        ae = im = ius = inm = ims = rng = ir = None
        for k, v in req.headers:
            slot = _FIELDS.get(k) or _FIELDS.get(k.lower())
            if slot is None:
                continue
            if slot == 0:
                ae = v
            elif slot == 1:
                inm = v
            elif slot == 2:
                ims = v
            elif slot == 3:
                # Range and If-Range are singletons: a repeated one is ignored and the first
                # holds, as nginx does (issue 16), never the last one a proxy may have added
                if rng is None:
                    rng = v
            elif slot == 4:
                if ir is None:
                    ir = v
            elif slot == 5:
                im = v
            elif slot == 6:
                ius = v
        encoding = None
        if (
            ae is not None
            and self.precompressed
            and ("br" in ae or "gzip" in ae)
            and not e.path.endswith((".br", ".gz"))
        ):
            has_br, has_gz, parent = self._siblings(e)
            if parent is None:
                deps = None
            elif deps is not None:
                deps.append(parent)
            if has_br and "br" in ae and _accepts(ae, "br"):
                se = self.lookup(e.path + ".br")
                if isinstance(se, Entry) and not se.is_dir:
                    e, encoding = se, "br"
            if encoding is None and has_gz and "gzip" in ae and _accepts(ae, "gzip"):
                se = self.lookup(e.path + ".gz")
                if isinstance(se, Entry) and not se.is_dir:
                    e, encoding = se, "gzip"
            if encoding is not None and deps is not None:
                deps.append(e.sig)

        etag = e.etag
        # --- preconditions (RFC 9110 section 13.2.2) ---
        if im is not None:
            if not _etag_match(im, etag, weak=False):
                return self._precondition_failed(etag)
        elif ius is not None:
            t = _http_time(ius)
            if t is not None and e.mtime > t:
                return self._precondition_failed(etag)
        if inm is not None:
            if _etag_match(inm, etag, weak=True):
                return self._not_modified(e, encoding, deps)
        elif ims is not None:
            if ims == e.last_modified:
                return self._not_modified(e, encoding, deps)
            t = _http_time(ims)
            if t is not None and e.mtime <= t:
                return self._not_modified(e, encoding, deps)

        h = Headers(
            [
                ("Content-Type", ctype),
                ("ETag", etag),
                ("Last-Modified", e.last_modified),
                ("Accept-Ranges", "bytes"),
            ]
        )
        if encoding is not None:
            h.add("Content-Encoding", encoding)
            h.add("Vary", "Accept-Encoding")
        size = e.size
        status = 200
        offset = 0
        length = size
        if rng is not None and req.method == "GET" and (ir is None or self._if_range_ok(ir, e)):
            ranges = parse_range(rng, size)
            if ranges is not None:
                if not ranges:
                    h = Headers([("Content-Range", f"bytes */{size}")])
                    return Response.error(416, h)
                if len(ranges) == 1:
                    start, end = ranges[0]
                    status = 206
                    offset = start
                    length = end - start + 1
                    h.add("Content-Range", f"bytes {start}-{end}/{size}")
        data = e.data
        if data is not None and length != size:
            data = data[offset : offset + length]
        e.acquire()
        body = FileBody(e.fd, offset, length, size, data, e.release, e.acquire)
        return Response(status, h, body, validators=tuple(deps) if deps is not None else None)

    @staticmethod
    def _if_range_ok(value: str, e: Entry) -> bool:
        value = value.strip()
        if value.startswith('"'):
            return value == e.etag  # strong comparison
        if value.startswith("W/"):
            return False
        return value == e.last_modified

    @staticmethod
    def _not_modified(
        e: Entry, encoding: str | None, deps: list[Validator] | None = None
    ) -> Response:
        h = Headers([("ETag", e.etag), ("Last-Modified", e.last_modified)])
        if encoding is not None:
            h.add("Vary", "Accept-Encoding")
        validators = tuple(deps) if deps is not None else None
        return Response(304, h, b"", validators=validators)

    @staticmethod
    def _precondition_failed(etag: str) -> Response:
        return Response.error(412, Headers([("ETag", etag)]))

    def _welcome(self, req: Request) -> Response:
        host = req.host or (
            f"{req.server_addr}:{req.server_port}" if req.server_addr else "localhost"
        )
        body = render_welcome(self.root, f"{req.scheme}://{host}", list(self.index_files))
        h = Headers([("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-cache")])
        return Response(200, h, body)


_SERVERS: weakref.WeakValueDictionary[int, FileServer] = weakref.WeakValueDictionary()


def fileserver_for(site: Site) -> FileServer:
    """The site's file server (shared by browse and ext so they use the same cache); made on
    first use."""
    fs = _SERVERS.get(id(site))
    if fs is None or fs.site is not site:
        fs = FileServer(site)
        _SERVERS[id(site)] = fs
    return fs


def build_fileserver(site: Site) -> FileServer:
    """The handler at the end of the site's chain (a new one each time it is called; browse
    and ext built afterwards for the same site share it)."""
    fs = FileServer(site)
    _SERVERS[id(site)] = fs
    if not os.path.isdir(fs.root):
        what = "is not a folder" if os.path.exists(fs.root) else "does not exist"
        log.warning("site root %s %s: every request will get 404", fs.root, what)
    return fs
