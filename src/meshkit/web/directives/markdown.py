"""markdown: serve Markdown files as HTML (Caddy v1's caddyhttp/markdown).

    markdown [PATH] {
        ext .md ...              # default .md .markdown .mdown
        css URL                  # each adds a <link rel="stylesheet"> to the default page
        js URL                   # each adds a <script src>
        template [NAME] FILE     # FILE relative to the site root; no NAME: the default one
        templatedir DIR|GLOB     # every template file there, named by its file name
    }

A GET or HEAD under PATH for a file with one of the extensions (or for a folder whose index
file `index<EXT>` exists) answers with the page rendered by markdown-it-py (CommonMark, GFM
tables, strikethrough) inside a Go template (meshkit.web.gotemplate) run with Caddy v1's data:
.Doc (the front matter's values, plus .Doc.body, .Doc.raw and .Doc.title), .DocFlags (its
booleans), .Styles, .Scripts, .Files (the folder's entries for an index page) and the
templates context functions. Front matter (meshkit.web.frontmatter) is YAML, TOML or JSON;
its `template` value picks a named template. Other methods: 405.

A page that cannot be rendered (broken front matter, a failing template) answers 500 and the
log names the file and line. Pages are parsed once per file version, and a rendered page that
used nothing from the request is kept until the file (or for an index, the folder) changes;
it then also carries validators, so the server may answer repeats from its response cache.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.filecache import Entry, http_date
from meshkit.web.fileserver import FileServer, fileserver_for
from meshkit.web.frontmatter import FrontMatterError, Page, parse_page
from meshkit.web.gotemplate import Template, TemplateError
from meshkit.web.gotemplate.gotime import GoTime
from meshkit.web.mdrender import render_markdown
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response, Validator
from meshkit.web.site import Site
from meshkit.web.tmplcache import OutputCache, ParseCache
from meshkit.web.tmplctx import TemplateContext, strip_html

log = logging.getLogger("meshkit.web")

RACY_NS = 1_000_000_000
DEFAULT_EXTENSIONS = [".md", ".markdown", ".mdown"]

DEFAULT_TEMPLATE = """<!DOCTYPE html>
<html>
	<head>
		<title>{{.Doc.title}}</title>
		<meta charset="utf-8">
		{{- range .Styles}}
		<link rel="stylesheet" href="{{.}}">
		{{- end}}
		{{- range .Scripts}}
		<script src="{{.}}"></script>
		{{- end}}
	</head>
	<body>
		{{.Doc.body}}
	</body>
</html>"""


@dataclass
class MarkdownRule:
    path: str = "/"
    extensions: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)  # name ("" default) -> file
    template_set: Template | None = field(default=None, metadata={"json": False})

    @property
    def index_files(self) -> list[str]:
        return ["index" + e for e in self.extensions]


@dataclass
class MarkdownConfig:
    rules: list[MarkdownRule] = field(default_factory=list)
    # pages that use nothing from the request carry validators (see the module doc)
    keeps_static: ClassVar[bool] = True


def _load(d: Dispenser, t: Template, name: str, path: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise d.err(f"cannot read markdown template {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise d.err(f"markdown template {path!r} is not UTF-8 text") from None
    try:
        t.parse(text, name=name, parse_name=path)
    except TemplateError as exc:
        raise d.err(f"markdown template: {exc}") from None


def parse(d: Dispenser, site: Site) -> MarkdownConfig:
    config = MarkdownConfig()
    while d.next():
        rule = MarkdownRule()
        args = d.remaining_args()
        if len(args) > 1:
            raise d.arg_err()
        if args:
            rule.path = args[0]
            if not rule.path.startswith("/"):
                raise d.err(f"markdown path {rule.path!r} must start with '/'")
        t = Template("").parse(DEFAULT_TEMPLATE)
        for _ in d.block():
            option = d.val()
            if option == "ext":
                for ext in d.remaining_args():
                    if not ext.startswith("."):
                        raise d.err(f"markdown extension {ext!r} must start with '.'")
                    if ext not in rule.extensions:
                        rule.extensions.append(ext)
            elif option in ("css", "js"):
                (rule.styles if option == "css" else rule.scripts).append(d.arg())
            elif option == "template":
                targs = d.remaining_args()
                if len(targs) not in (1, 2):
                    raise d.arg_err()
                name = targs[0] if len(targs) == 2 else ""
                # relative to the site root, as Caddy v1 did
                path = os.path.normpath(os.path.join(os.path.abspath(site.root), targs[-1]))
                _load(d, t, name, path)
                rule.templates[name] = path
            elif option == "templatedir":
                pattern = d.arg()
                if d.next_arg():
                    raise d.arg_err()
                paths = sorted(
                    glob.glob(os.path.join(pattern, "*") if os.path.isdir(pattern) else pattern)
                )
                if not paths:
                    raise d.err(f"markdown templatedir {pattern!r} matches no file")
                for p in paths:
                    if os.path.isfile(p):
                        _load(d, t, os.path.basename(p), p)
                        rule.templates[os.path.basename(p)] = p
            else:
                raise d.err(
                    f"unknown markdown option {option!r} (ext, css, js, template, templatedir)"
                )
        if not rule.extensions:
            rule.extensions = list(DEFAULT_EXTENSIONS)
        rule.template_set = t
        config.rules.append(rule)
    return config


class DirEntry:
    """An os.FileInfo of the folder of an index page (.Files), with v1's .Summarize N."""

    def __init__(self, path: str, name: str, st: os.stat_result) -> None:
        self._path = path
        self._sig: Validator = (
            path,
            st.st_ino,
            st.st_dev,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        self._deps: list[Validator] | None = None  # the page's, once it is being rendered
        self.Name = name
        self.Size = st.st_size
        self.ModTime = GoTime(dt.datetime.fromtimestamp(st.st_mtime, tz=dt.timezone.utc))
        self.IsDir = stat_mod.S_ISDIR(st.st_mode)
        self.Mode = st.st_mode

    def Summarize(self, words: Any) -> str:
        """The first `words` words of the page's text (its Markdown without front matter,
        rendered, tags stripped)."""
        if self.IsDir or isinstance(words, bool) or not isinstance(words, int):
            return ""
        if self._deps is not None:
            self._deps.append(self._sig)  # the page now depends on this file too
        with open(self._path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
        try:
            body = parse_page(text).body
        except FrontMatterError:
            body = text
        return " ".join(strip_html(render_markdown(body)).split()[: max(words, 0)])


class MarkdownData(TemplateContext):
    """markdown.Data: the templates context plus the page."""

    def __init__(
        self,
        req: Request,
        files: FileServer,
        rule: MarkdownRule,
        page: Page,
        html: str,
        title: str,
        entries: list[DirEntry],
    ) -> None:
        super().__init__(req, files)
        doc: dict[str, Any] = dict(page.meta)
        doc["raw"] = page.body
        doc["body"] = html
        t = page.meta.get("title")
        doc["title"] = t if isinstance(t, str) and t else title
        self.Doc = doc
        self.DocFlags = {k: v for k, v in page.meta.items() if isinstance(v, bool)}
        self.Styles = list(rule.styles)
        self.Scripts = list(rule.scripts)
        # the folder's entries shadow the context's Files method, as Go's embedding does
        self.__dict__["Files"] = entries


class MarkdownHandler:
    def __init__(self, config: MarkdownConfig, next: Handler, files: FileServer) -> None:
        self.rules = config.rules
        self.next = next
        self.files = files
        self.pages: ParseCache[tuple[Page, str]] = ParseCache()
        self.outputs = OutputCache(files.cache)

    def __call__(self, req: Request) -> HandlerResult:
        path = req.path
        rule = next((r for r in self.rules if path.startswith(r.path)), None)
        if rule is None:
            return self.next(req)
        files = self.files
        folder: Entry | None = None
        fpath = path
        if path.endswith("/"):
            fs_dir = files.fs_path(req)
            d = files.lookup(fs_dir) if fs_dir is not None else None
            if not isinstance(d, Entry) or not d.is_dir:
                return self.next(req)
            base = "" if fs_dir == "/" else fs_dir
            for name in rule.index_files:
                e = files.lookup(f"{base}/{name}")
                if isinstance(e, Entry) and not e.is_dir:
                    folder, fpath = d, path + name
                    break
            else:
                return self.next(req)
        dot = fpath.rfind(".")
        if dot < fpath.rfind("/") or fpath[dot:] not in rule.extensions:
            return self.next(req)
        if req.method not in ("GET", "HEAD"):
            return Response.error(405, Headers([("Allow", "GET, HEAD")]))
        fs = files.fs_path(req, fpath)
        e = files.lookup(fs) if fs is not None else None
        if not isinstance(e, Entry) or e.is_dir:
            return self.next(req)  # the file server's 404 / 403 / redirect
        return self.render(req, rule, fpath, e, folder)

    def _page(self, e: Entry) -> tuple[Page, str]:
        def make() -> tuple[Page, str]:
            e.acquire()
            try:
                data = e.data if e.data is not None else os.pread(e.fd, e.size, 0)
            finally:
                e.release()
            page = parse_page(data.decode("utf-8", "replace"))
            return page, render_markdown(page.body)

        return self.pages.get(e.path, e.sig, make)

    def render(
        self, req: Request, rule: MarkdownRule, fpath: str, e: Entry, folder: Entry | None
    ) -> Response:
        deps: list[Validator] = [e.sig] + ([folder.sig] if folder is not None else [])
        key = (id(rule), fpath, *deps)
        mtime = max(e.mtime, folder.mtime if folder is not None else 0)
        body = self.outputs.get(key)
        dynamic = False
        if body is None:
            try:
                page, html = self._page(e)
                entries = self._entries(folder) if folder is not None else []
                name = fpath.rsplit("/", 1)[-1]
                title = name[: name.rfind(".")] if "." in name else name
                data = MarkdownData(req, self.files, rule, page, html, title, entries)
                for entry in entries:
                    entry._deps = data.deps
                assert rule.template_set is not None
                tname = page.meta.get("template")
                tname = tname if isinstance(tname, str) else ""
                body = rule.template_set.execute(data, tname).encode("utf-8")
            except FrontMatterError as exc:
                log.error("markdown: %s:%s (%s %s)", e.path, exc, req.method, req.path)
                return Response.error(500)
            except TemplateError as exc:
                log.error("markdown: %s: %s (%s %s)", e.path, exc, req.method, req.path)
                return Response.error(500)
            except OSError as exc:
                log.error("markdown: cannot read %s: %s", e.path, exc.strerror)
                return Response.error(500)
            # a folder changed within the last clock tick may change again unseen
            racy = (
                folder is not None
                and time.time_ns() - max(folder.mtime_ns, folder.ctime_ns) <= RACY_NS
            )
            dynamic = data.dynamic or racy
            if not dynamic:
                self.outputs.put(key, [*deps, *data.deps], body)
                deps = [*deps, *data.deps]
        h = Headers(
            [("Content-Type", "text/html; charset=utf-8"), ("Last-Modified", http_date(mtime))]
        )
        validators = None if dynamic else self.outputs.deps(key)
        return Response(200, h, body, validators=validators)

    def _entries(self, folder: Entry) -> list[DirEntry]:
        out: list[DirEntry] = []
        hidden = self.files.hidden
        try:
            with os.scandir(folder.path) as it:
                for de in it:
                    if os.path.join(folder.real, de.name) in hidden:
                        continue
                    try:
                        out.append(DirEntry(de.path, de.name, de.stat()))
                    except OSError:
                        continue
        except OSError:
            return []
        out.sort(key=lambda x: x.Name)
        return out


def build(config: MarkdownConfig, next: Handler, site: Site) -> Handler:
    return MarkdownHandler(config, next, fileserver_for(site))


register("markdown", parse, build)
