"""browse [PATH [TEMPLATE]]: list folders that have no index file.

PATH is a plain prefix of the request path (`/` when left out; the longest matching `browse`
wins). A folder with an index file is not listed (the file server serves the index), a folder
asked for without its trailing slash is left to the file server's 301, and anything that is
not a folder goes on down the chain.

Query: `?sort=name|namedirfirst|size|time` (default namedirfirst), `?order=asc|desc`
(default asc), `?limit=N`; each one given is remembered in a cookie (Path = the browse PATH)
and used when the query leaves it out. A bad `limit` is a 400.

With `Accept: application/json` the answer is a JSON array of
`{Name, Size, URL, ModTime, Mode, IsDir, IsSymlink}` (Mode is Go's os.FileMode number, ModTime
RFC 3339 in UTC), as Caddy v1 gave. Otherwise HTML: the built-in page, or TEMPLATE, a Go
text/template file read and parsed when the server starts (relative paths: to the working
directory), run with Caddy v1's Listing (meshkit.web.browsectx: .Name, .Path, .CanGoUp,
.Items with .Name .URL .Size .HumanSize .ModTime .HumanModTime .IsDir .IsSymlink .Mode,
.NumDirs, .NumFiles, .Sort, .Order, .ItemsLimitedTo, .BreadcrumbMap, .Breadcrumbs, and the
templates context functions). A template that fails answers 500 and logs its file:line.

Each answer is rendered once per version of the listing: the body is kept under the folder's
entries (name, size, mtime, mode), the sort, order and limit, and the kind of answer, so a
repeat asks only for the folder scan. A custom template that reads the request (.Header...)
is run every time.

Entries the file server would not serve are left out of listings: the Caddyfile and hidden
files, `internal` paths, symlinks whose target is outside the root (or missing).
"""

from __future__ import annotations

import json
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass, replace
from html import escape
from string import Template
from urllib.parse import parse_qs, quote

from meshkit.web import dirsig, gotemplate
from meshkit.web.browsectx import Listing
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.filecache import Entry, is_within
from meshkit.web.fileserver import INTERNAL_VAR, FileServer, clean_path, fileserver_for
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site
from meshkit.web.tmplcache import LRU

log = logging.getLogger("meshkit.web")

SORTS = ("name", "namedirfirst", "size", "time")
ORDERS = ("asc", "desc")
DEFAULT_SORT = "namedirfirst"
DEFAULT_ORDER = "asc"

# Go's os.FileMode bits (what Caddy v1's JSON carried)
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_SETUID = 1 << 23
_GO_SETGID = 1 << 22
_GO_STICKY = 1 << 20


@dataclass
class Item:
    name: str
    size: int
    url: str
    mtime_ns: int
    mode: int  # Go os.FileMode
    is_dir: bool
    is_symlink: bool

    def json(self) -> dict[str, object]:
        return {
            "Name": self.name,
            "Size": self.size,
            "URL": self.url,
            "ModTime": rfc3339(self.mtime_ns),
            "Mode": self.mode,
            "IsDir": self.is_dir,
            "IsSymlink": self.is_symlink,
        }


def rfc3339(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"


def go_mode(st_mode: int, is_symlink: bool) -> int:
    mode = st_mode & 0o777
    if stat_mod.S_ISDIR(st_mode):
        mode |= _GO_DIR
    if is_symlink:
        mode |= _GO_SYMLINK
    if st_mode & stat_mod.S_ISUID:
        mode |= _GO_SETUID
    if st_mode & stat_mod.S_ISGID:
        mode |= _GO_SETGID
    if st_mode & stat_mod.S_ISVTX:
        mode |= _GO_STICKY
    return mode


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def sort_items(items: list[Item], sort: str, order: str) -> list[Item]:
    if sort == "name":
        items.sort(key=lambda i: (i.name.lower(), i.name))
    elif sort == "size":
        items.sort(key=lambda i: (not i.is_dir, i.size if not i.is_dir else 0, i.name.lower()))
    elif sort == "time":
        items.sort(key=lambda i: (i.mtime_ns, i.name.lower()))
    else:  # namedirfirst
        items.sort(key=lambda i: (not i.is_dir, i.name.lower(), i.name))
    if order == "desc":
        items.reverse()
    return items


def _cookies(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k not in out:
            out[k] = v.strip().strip('"')
    return out


@dataclass
class Rule:
    path: str
    template: str | None  # the template file (relative: to the working directory)


def parse(d: Dispenser, site: Site) -> list[dict[str, str | None]]:
    rules: list[dict[str, str | None]] = []
    while d.next():
        args = d.remaining_args()
        if len(args) > 2:
            raise d.arg_err()
        path = args[0] if args else "/"
        if not path.startswith("/"):
            raise d.err(f"browse path {path!r} must start with '/'")
        template: str | None = None
        if len(args) == 2:
            template = args[1]  # as written (relative to the working directory)
            if not os.path.isfile(template):
                raise d.err(f"browse template {template!r} is not a file")
            try:
                load_template(template)
            except (OSError, UnicodeDecodeError) as exc:
                raise d.err(f"cannot read browse template {args[1]!r}: {exc}") from None
            except gotemplate.TemplateError as exc:
                raise d.err(f"browse template: {exc}") from None
        for _ in d.block():
            raise d.err("browse takes no block")
        if any(r["path"] == path for r in rules):
            raise d.err(f"browse {path} is configured twice")
        rules.append({"path": path, "template": template})
    site.browse_on = True
    return rules


def load_template(path: str) -> gotemplate.Template:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    name = os.path.basename(path)
    return gotemplate.Template(name).parse(text, parse_name=path)


class BrowseHandler:
    def __init__(self, rules: list[Rule], next: Handler, files: FileServer) -> None:
        # longest path first, so the most specific browse wins
        rules = [replace(r, path=clamp_path(r.path)) for r in rules]
        self.rules = sorted(rules, key=lambda r: len(r.path), reverse=True)
        self.next = next
        self.files = files
        self.templates: dict[str, gotemplate.Template] = {}
        for r in rules:
            if r.template is not None:
                self.templates[r.path] = load_template(r.template)
        # rendered bodies, keyed on everything they are made from (see the module doc)
        self.rendered: LRU[bytes] = LRU(256)
        # the same bodies keyed on the folder's signature (meshkit.web.dirsig) instead of
        # its items: a repeat costs a readdir and a stat per entry, no item objects
        self.signature: dirsig.Signature = dirsig.load_signature()
        self.by_signature: LRU[bytes] = LRU(256)

    def __call__(self, req: Request) -> HandlerResult:
        if req.method != "GET" and req.method != "HEAD":
            return self.next(req)
        path = req.path
        for rule in self.rules:
            if path.startswith(rule.path):
                break
        else:
            return self.next(req)
        if not path.endswith("/"):
            return self.next(req)
        files = self.files
        fs = files.fs_path(req)
        if fs is None:
            return self.next(req)
        e = files.lookup(fs)
        if not isinstance(e, Entry) or not e.is_dir:
            return self.next(req)
        if files.find_index(fs) is not None:
            return self.next(req)
        return self.listing(req, rule, fs, e)

    def items(self, req: Request, fs: str, e: Entry) -> list[Item]:
        files = self.files
        root_real = files.cache.root_real
        clean = clean_path(req.path) or "/"
        internal_ok = bool(req.vars.get(INTERNAL_VAR))
        out: list[Item] = []
        with os.scandir(fs) as it:
            for de in it:
                name = de.name
                if "\\" in name:
                    continue  # the file server refuses backslashes
                url_path = clean + name
                if files.internal and not internal_ok and files.is_internal(url_path):
                    continue
                try:
                    is_symlink = de.is_symlink()
                    st = de.stat(follow_symlinks=True)
                except OSError:
                    continue  # broken symlink or gone
                if is_symlink:
                    real = os.path.realpath(de.path)
                    if not is_within(real, root_real):
                        continue
                else:
                    real = e.real + "/" + name if e.real != "/" else "/" + name
                if real in files.hidden:
                    continue
                is_dir = stat_mod.S_ISDIR(st.st_mode)
                if not is_dir and not stat_mod.S_ISREG(st.st_mode):
                    continue
                url = "./" + quote(name) + ("/" if is_dir else "")
                out.append(
                    Item(
                        name=name,
                        size=st.st_size,
                        url=url,
                        mtime_ns=st.st_mtime_ns,
                        mode=go_mode(st.st_mode, is_symlink),
                        is_dir=is_dir,
                        is_symlink=is_symlink,
                    )
                )
        return out

    def listing(self, req: Request, rule: Rule, fs: str, e: Entry) -> Response:
        query = parse_qs(req.query, keep_blank_values=True) if req.query else {}
        cookies = _cookies(req.headers.get("Cookie"))
        set_cookies: list[str] = []
        secure = "; Secure" if req.scheme == "https" else ""

        def choose(key: str, allowed: tuple[str, ...], default: str) -> str:
            given = query.get(key, [""])[0]
            if given in allowed:
                set_cookies.append(f"{key}={given}; Path={rule.path}{secure}")
                return given
            kept = cookies.get(key, "")
            return kept if kept in allowed else default

        sort = choose("sort", SORTS, DEFAULT_SORT)
        order = choose("order", ORDERS, DEFAULT_ORDER)
        limit = -1
        given_limit = query.get("limit", [""])[0]
        if given_limit:
            try:
                limit = int(given_limit)
            except ValueError:
                return Response.error(400)
            set_cookies.append(f"limit={limit}; Path={rule.path}{secure}")
        else:
            kept = cookies.get("limit", "")
            if kept.lstrip("-").isdigit():
                limit = int(kept)

        accept = req.headers.get("Accept") or ""
        as_json = "application/json" in accept
        try:
            sig = self.signature(fs)
        except OSError:
            sig = None  # the scan below answers (403, 404)
        sig_key = None
        if sig is not None:
            internal_ok = bool(req.vars.get(INTERNAL_VAR))
            sig_key = (rule.path, req.path, as_json, sort, order, limit, internal_ok, sig)
            body = self.by_signature.get(sig_key)
            if body is not None:
                return _answer(body, as_json, set_cookies)
        try:
            items = self.items(req, fs, e)
        except PermissionError:
            return Response.error(403)
        except OSError:
            return Response.error(404)
        key = (
            rule.path,
            req.path,
            as_json,
            sort,
            order,
            limit,
            tuple(sorted((i.name, i.size, i.mtime_ns, i.mode) for i in items)),
        )
        body = self.rendered.get(key)
        if body is None:
            sort_items(items, sort, order)
            # the counts are of the whole folder, as Caddy v1 showed them, even when limited
            numdirs = sum(1 for i in items if i.is_dir)
            counts = (numdirs, len(items) - numdirs)
            if limit >= 0:
                items = items[:limit]
            if as_json:
                body = json.dumps([i.json() for i in items]).encode()
                self.rendered.put(key, body)
            else:
                try:
                    body, keep = self.html(req, rule, items, sort, order, limit, counts)
                except gotemplate.TemplateError as exc:
                    log.error("browse: %s (%s %s)", exc, req.method, req.path)
                    return Response.error(500)
                if keep:
                    self.rendered.put(key, body)
        if sig_key is not None and self.rendered.get(key) is body:
            self.by_signature.put(sig_key, body)
        return _answer(body, as_json, set_cookies)

    def html(
        self,
        req: Request,
        rule: Rule,
        items: list[Item],
        sort: str,
        order: str,
        limit: int,
        counts: tuple[int, int],
    ) -> tuple[bytes, bool]:
        """The page, and whether it may be kept (it used nothing from the request but the
        path and the listing options)."""
        path = req.path
        custom = self.templates.get(rule.path)
        if custom is not None:
            listing = Listing(req, self.files, items, sort, order, limit, path != "/", counts)
            out = custom.execute(listing).encode("utf-8")
            return out, not listing.dynamic
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        rows = "\n".join(_row(i) for i in items)
        up = "" if path == "/" else _UP_ROW
        values = {
            "name": escape(name),
            "path": escape(path),
            "rows": rows,
            "up": up,
            "numdirs": str(counts[0]),
            "numfiles": str(counts[1]),
            "sort": sort,
            "order": order,
            "limit": str(limit) if limit >= 0 else "",
        }
        values["head"] = _head_links(sort, order)
        return _DEFAULT.substitute(values).encode("utf-8"), True


_UP_ROW = '<tr class="up"><td><a href="../">../</a></td><td>&mdash;</td><td></td></tr>'


def _answer(body: bytes, as_json: bool, set_cookies: list[str]) -> Response:
    ctype = "application/json" if as_json else "text/html"
    h = Headers([("Content-Type", ctype + "; charset=utf-8")])
    h.add("Vary", "Accept")
    for c in set_cookies:
        h.add("Set-Cookie", c)
    return Response(200, h, body)


def _row(i: Item) -> str:
    shown = i.name + ("/" if i.is_dir else "")
    size = "&mdash;" if i.is_dir else escape(human_size(i.size))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.mtime_ns // 1_000_000_000))
    cls = "dir" if i.is_dir else "file"
    if i.is_symlink:
        cls += " symlink"
    return (
        f'<tr class="{cls}"><td><a href="{escape(i.url)}">{escape(shown)}</a></td>'
        f'<td data-size="{i.size}">{size}</td>'
        f'<td><time datetime="{rfc3339(i.mtime_ns)}">{when} UTC</time></td></tr>'
    )


def _head_links(sort: str, order: str) -> str:
    cells = []
    for key, label in (("name", "Name"), ("size", "Size"), ("time", "Modified")):
        active = sort == key or (key == "name" and sort == "namedirfirst")
        next_order = "desc" if active and order == "asc" else "asc"
        mark = (" &uarr;" if order == "asc" else " &darr;") if active else ""
        cells.append(f'<th><a href="?sort={key}&amp;order={next_order}">{label}</a>{mark}</th>')
    return "".join(cells)


_DEFAULT = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Index of $path</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
  max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; font-weight: 600; word-break: break-all; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #eee; }
th a { color: inherit; }
td:nth-child(2), th:nth-child(2) { text-align: right; white-space: nowrap; }
td:nth-child(3) { white-space: nowrap; color: #666; }
tr.dir a { font-weight: 600; }
footer { margin-top: 1em; color: #777; font-size: .9em; }
</style>
</head>
<body>
<h1>Index of $path</h1>
<table>
<thead><tr>$head</tr></thead>
<tbody>
$up
$rows
</tbody>
</table>
<footer>$numdirs folders, $numfiles files &middot; served by meshkit</footer>
</body>
</html>
"""
)


def build(config: list[dict[str, str | None]], next: Handler, site: Site) -> Handler:
    rules = [Rule(path=str(r["path"]), template=r.get("template")) for r in config]
    return BrowseHandler(rules, next, fileserver_for(site))


register("browse", parse, build)
