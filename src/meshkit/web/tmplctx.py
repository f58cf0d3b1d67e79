"""The data Caddy v1 templates run with (httpserver.Context): the request, the site's files
and helper methods, under Go's names (`.Header "X"`, `.Include "nav.html"`, `.Now "2006"`).

Files are read through the site's file server (meshkit.web.fileserver), so a template sees
only what the file server would serve: paths that climb out of the root are refused, and so
are symlinks leading outside it, the Caddyfile and hidden files.

While a template runs, the context records what its output depends on: `dynamic` turns true
as soon as a request-dependent method is used (the header, the client address, the time...),
and `deps` collects the (path, signature) of every file or folder read. Output with
`dynamic` false is a function of those files alone, and may be kept until one changes.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import string
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from meshkit.web.filecache import Entry
from meshkit.web.fileserver import FileServer
from meshkit.web.gotemplate import FuncError, Template, TemplateError
from meshkit.web.gotemplate.gotime import GoTime
from meshkit.web.mdrender import render_markdown
from meshkit.web.message import Request, Validator
from meshkit.web.tmplcache import ParseCache

MAX_INCLUDE_DEPTH = 16
# included files parsed once per file version (keys hold the file's absolute path), for
# contexts made without a cache of their own (markdown pages, browse templates)
_INCLUDED: ParseCache[Template] = ParseCache()


def _parse_included(name: str, sig: Validator, text: str) -> Template:
    return _INCLUDED.get(name, sig, lambda: Template(name).parse(text))


_RACY_NS = 1_000_000_000
_RANDOM_CHARS = string.ascii_letters + string.digits


def split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort (None where it fails)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None
    host, _, port = hostport.partition(":")
    return host, port


class URLView:
    """r.URL: Path, RawQuery, Fragment (empty), String."""

    def __init__(self, req: Request) -> None:
        self.Path = req.path
        self.RawQuery = req.query
        self.Fragment = ""
        self.Scheme = req.scheme
        self.Host = req.host

    def String(self) -> str:
        return self.Path + ("?" + self.RawQuery if self.RawQuery else "")


class RequestView:
    """r (*http.Request): the fields templates commonly read."""

    def __init__(self, req: Request) -> None:
        self.Method = req.method
        self.Host = req.host
        self.RequestURI = req.original_uri or req.uri
        self.RemoteAddr = f"{req.remote_addr}:{req.remote_port}"
        self.Proto = f"HTTP/{req.version}"
        self.URL = URLView(req)
        header: dict[str, list[str]] = {}
        for k, v in req.headers:
            header.setdefault("-".join(p.capitalize() for p in k.split("-")), []).append(v)
        self.Header = header


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise FuncError(f"{what}: expected a string, got {v!r}")
    return v


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FuncError(f"{what}: expected an integer, got {v!r}")
    return v


class TemplateContext:
    """httpserver.Context. Attributes and methods with upper-case names are what templates
    reach; the rest is bookkeeping."""

    def __init__(
        self,
        req: Request,
        files: FileServer,
        parse_cache: Callable[[str, Validator, str], Template] | None = None,
    ) -> None:
        self._req = req
        self._files = files
        self._parse_cache = parse_cache or _parse_included
        self._include_depth = 0
        self.dynamic = False
        self.deps: list[Validator] = []
        self.Args: list[Any] = []

    # --- request-dependent (mark the output dynamic) --------------------------------------
    def _dyn(self) -> Request:
        self.dynamic = True
        return self._req

    @property
    def Req(self) -> RequestView:
        return RequestView(self._dyn())

    @property
    def URL(self) -> URLView:
        return URLView(self._dyn())

    def Header(self, name: Any) -> str:
        return self._dyn().headers.get(_str(name, "Header")) or ""

    def Cookie(self, name: Any) -> str:
        name = _str(name, "Cookie")
        for header in self._dyn().headers.get_all("Cookie"):
            for part in header.split(";"):
                k, sep, v = part.strip().partition("=")
                if sep and k == name:
                    return v.strip().strip('"')
        return ""

    def IP(self) -> str:
        return self._dyn().remote_addr

    def Hostname(self) -> str:
        # Caddy v1 looked the client's address up in reverse DNS; a blocking lookup would
        # stall every connection of the server, so meshkit gives the address itself
        return self._dyn().remote_addr

    def ServerIP(self) -> str:
        return self._dyn().server_addr

    def URI(self) -> str:
        req = self._dyn()
        return req.original_uri or req.uri

    def Host(self) -> str:
        host = self._dyn().host
        hp = split_host_port(host)
        if hp is None:
            if ":" not in host:
                return host
            raise FuncError(f"address {host}: invalid host")
        return hp[0]

    def Port(self) -> str:
        host = self._dyn().host
        hp = split_host_port(host)
        if hp is None:
            if ":" not in host:
                return "80"
            raise FuncError(f"address {host}: invalid port")
        return hp[1]

    def Method(self) -> str:
        return self._dyn().method

    def PathMatches(self, pattern: Any) -> bool:
        pattern = _str(pattern, "PathMatches")
        return pattern == "/" or self._dyn().path.startswith(pattern)

    def Query(self, key: Any) -> str:
        values = parse_qs(self._dyn().query, keep_blank_values=True).get(_str(key, "Query"))
        return values[0] if values else ""

    def Now(self, layout: Any = "2006-01-02 15:04:05.999999999 -0700 MST") -> str:
        self.dynamic = True
        return GoTime.now().Format(_str(layout, "Now"))

    def NowDate(self) -> GoTime:
        self.dynamic = True
        return GoTime.now()

    def RandomString(self, minlen: Any, maxlen: Any) -> str:
        self.dynamic = True
        lo, hi = _int(minlen, "RandomString"), _int(maxlen, "RandomString")
        if lo < 0 or hi < lo or hi > 1 << 20:
            raise FuncError("RandomString: need 0 <= min <= max <= 1048576")
        n = lo + secrets.randbelow(hi - lo + 1)
        return "".join(secrets.choice(_RANDOM_CHARS) for _ in range(n))

    def Env(self) -> dict[str, str]:
        self.dynamic = True  # the environment can differ between reloads: never kept
        return {k: v for k, v in os.environ.items() if k}

    # --- files under the root -------------------------------------------------------------
    def _entry(self, name: Any, what: str) -> Entry:
        name = _str(name, what)
        clean = _inside_root(name)
        if clean is None:
            raise FuncError(f"{what} {name!r}: refusing a path outside the site root")
        files = self._files
        fs = files.prefix + clean if clean != "/" else (files.prefix or "/")
        e = files.lookup(fs.rstrip("/") or "/")
        if not isinstance(e, Entry):
            raise FuncError(f"{what} {name!r}: no such file")
        if e.is_dir and time.time_ns() - max(e.mtime_ns, e.ctime_ns) <= _RACY_NS:
            self.dynamic = True  # a folder changed within the last tick may change unseen
        self.deps.append(e.sig)
        return e

    def _read(self, name: Any, what: str) -> tuple[str, Entry]:
        e = self._entry(name, what)
        if e.is_dir:
            raise FuncError(f"{what} {name!r}: is a directory")
        data = e.data if e.data is not None else os.pread(e.fd, e.size, 0)
        return data.decode("utf-8", "replace"), e

    def Include(self, filename: Any, *args: Any) -> str:
        text, e = self._read(filename, "Include")
        if self._include_depth >= MAX_INCLUDE_DEPTH:
            raise FuncError(
                f"Include {filename!r}: includes nested more than {MAX_INCLUDE_DEPTH} deep"
            )
        tmpl = self._parse_cache(str(filename), e.sig, text)
        saved = self.Args
        self.Args = list(args)
        self._include_depth += 1
        try:
            return tmpl.execute(self)
        except TemplateError as exc:
            raise FuncError(str(exc)) from None
        finally:
            self._include_depth -= 1
            self.Args = saved

    def Markdown(self, filename: Any) -> str:
        return render_markdown(self.Include(filename))

    def Files(self, name: Any) -> list[str]:
        e = self._entry(name, "Files")
        if not e.is_dir:
            raise FuncError(f"{name} is not a directory")
        hidden = self._files.hidden
        try:
            names = os.listdir(e.path)
        except OSError as exc:
            raise FuncError(f"Files {name!r}: {exc.strerror}") from None
        return sorted(n for n in names if posixpath.join(e.real, n) not in hidden)

    def IsDir(self, name: Any) -> bool:
        try:
            return self._entry(name, "IsDir").is_dir
        except FuncError:
            return False

    # --- pure helpers ---------------------------------------------------------------------
    def Truncate(self, s: Any, length: Any) -> str:
        text, n = _str(s, "Truncate"), _int(length, "Truncate")
        if n < 0 and len(text) + n > 0:
            return text[len(text) + n :]
        if n >= 0 and len(text) > n:
            return text[:n]
        return text

    def StripHTML(self, s: Any) -> str:
        return strip_html(_str(s, "StripHTML"))

    def Ext(self, path: Any) -> str:
        base = _str(path, "Ext").rsplit("/", 1)[-1]
        dot = base.rfind(".")
        return base[dot:] if dot >= 0 else ""

    def StripExt(self, path: Any) -> str:
        p = _str(path, "StripExt")
        for i in range(len(p) - 1, -1, -1):
            if p[i] == "/":
                break
            if p[i] == ".":
                return p[:i]
        return p

    def Replace(self, s: Any, find: Any, repl: Any) -> str:
        text, old, new = _str(s, "Replace"), _str(find, "Replace"), _str(repl, "Replace")
        if old == "":  # Go inserts the replacement around every rune
            return new + new.join(text) + new if text else new
        return text.replace(old, new)

    def ToLower(self, s: Any) -> str:
        return _str(s, "ToLower").lower()

    def ToUpper(self, s: Any) -> str:
        return _str(s, "ToUpper").upper()

    def Split(self, s: Any, sep: Any) -> list[str]:
        text, by = _str(s, "Split"), _str(sep, "Split")
        if by == "":
            return list(text)
        return text.split(by)

    def Join(self, items: Any, sep: Any) -> str:
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise FuncError("Join: expected a list of strings")
        return _str(sep, "Join").join(items)

    def Slice(self, *elems: Any) -> list[Any]:
        return list(elems)

    def Map(self, *values: Any) -> dict[str, Any]:
        if len(values) % 2:
            raise FuncError("Map expects an even number of arguments")
        out: dict[str, Any] = {}
        for i in range(0, len(values), 2):
            if not isinstance(values[i], str):
                raise FuncError("Map keys must be strings")
            out[values[i]] = values[i + 1]
        return out


def _inside_root(name: str) -> str | None:
    """`name` as a clean absolute path under the root, or None when it climbs out."""
    if "\x00" in name or "\\" in name:
        return None
    depth = 0
    parts: list[str] = []
    for seg in name.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            depth -= 1
            if depth < 0:
                return None
            parts.pop()
            continue
        depth += 1
        parts.append(seg)
    return "/" + "/".join(parts)


def strip_html(s: str) -> str:
    """Caddy v1's naive tag stripper (a `<` without a closing `>` is kept as text)."""
    out: list[str] = []
    in_tag = in_quotes = False
    tag_start = 0
    for i, ch in enumerate(s):
        if in_tag:
            if ch == ">" and not in_quotes:
                in_tag = False
            elif ch == "<" and not in_quotes:
                out.append(s[tag_start:i])
                tag_start = i
            elif ch == '"':
                in_quotes = not in_quotes
            continue
        if ch == "<":
            in_tag = True
            tag_start = i
            continue
        out.append(ch)
    if in_tag:
        out.append(s[tag_start:])
    return "".join(out)
