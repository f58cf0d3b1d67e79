"""templates: run files as Go templates (Caddy v1's caddyhttp/templates).

    templates                    # path /, extensions .html .htm .tmpl .tpl .txt
    templates PATH [EXT...]
    templates {
        path PATH
        ext EXT...
        between OPEN CLOSE       # delimiters instead of {{ }}
    }

A request under PATH (a plain prefix) for a file with one of the extensions, or for a folder
whose index file `index<EXT>` exists, answers with the file executed as a Go text/template
(meshkit.web.gotemplate) with Caddy v1's context (meshkit.web.tmplctx: .Include, .Header,
.Cookie, .IP, .URI, .Host, .Now, .Truncate, .Replace, .Split, .Markdown, .Files...). Only
files the file server would serve are run; anything else goes on down the chain. A template
that fails, loops or recurses forever answers 500 and the log names its file:line:col.

Parsed templates are kept per file version; a rendered page that used nothing from the
request (no .Header, .Now, .IP...) is kept too, until one of the files it read changes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import ClassVar

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.filecache import Entry
from meshkit.web.fileserver import FileServer, fileserver_for
from meshkit.web.gotemplate import Template, TemplateError
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response, Validator
from meshkit.web.mimetypes import sniff, type_by_extension, with_charset
from meshkit.web.site import Site
from meshkit.web.tmplcache import OutputCache, ParseCache
from meshkit.web.tmplctx import TemplateContext

log = logging.getLogger("meshkit.web")

DEFAULT_PATH = "/"
DEFAULT_EXTENSIONS = [".html", ".htm", ".tmpl", ".tpl", ".txt"]


@dataclass
class TemplatesRule:
    path: str = DEFAULT_PATH
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    delims: list[str] = field(default_factory=list)  # [] or [OPEN, CLOSE]

    @property
    def index_files(self) -> list[str]:
        return ["index" + ext for ext in self.extensions]


@dataclass
class TemplatesConfig:
    rules: list[TemplatesRule] = field(default_factory=list)
    # pages that use nothing from the request carry validators (the files they read), so
    # the server may answer repeats from its response cache; the others carry none
    keeps_static: ClassVar[bool] = True


def _ext(d: Dispenser, ext: str) -> str:
    if not ext.startswith("."):
        raise d.err(f"templates extension {ext!r} must start with '.'")
    return ext


def parse(d: Dispenser, site: Site) -> TemplatesConfig:
    config = TemplatesConfig()
    while d.next():
        rule = TemplatesRule()
        args = d.remaining_args()
        if args:
            rule.path = args[0]
            if len(args) > 1:
                rule.extensions = [_ext(d, a) for a in args[1:]]
            for _ in d.block():
                raise d.err("templates PATH [EXT...] takes no block (use the block form alone)")
        else:
            for _ in d.block():
                option = d.val()
                values = d.remaining_args()
                if option == "path":
                    if len(values) != 1:
                        raise d.arg_err()
                    rule.path = values[0]
                elif option == "ext":
                    if not values:
                        raise d.arg_err()
                    rule.extensions = [_ext(d, v) for v in values]
                elif option == "between":
                    if len(values) != 2:
                        raise d.arg_err()
                    rule.delims = values
                else:
                    # Caddy v1 ignored unknown options; a typo here would silently do nothing
                    raise d.err(f"unknown templates option {option!r} (path, ext, between)")
        if not rule.path.startswith("/"):
            raise d.err(f"templates path {rule.path!r} must start with '/'")
        config.rules.append(rule)
    return config


class TemplatesHandler:
    def __init__(self, config: TemplatesConfig, next: Handler, files: FileServer) -> None:
        self.rules = config.rules
        self.next = next
        self.files = files
        self.parsed: ParseCache[Template] = ParseCache()
        self.included: ParseCache[Template] = ParseCache()
        self.outputs = OutputCache(files.cache)

    def __call__(self, req: Request) -> HandlerResult:
        path = req.path
        for rule in self.rules:
            if not path.startswith(rule.path) and rule.path != "/":
                continue
            found = self._find(req, rule)
            if found is None:
                continue
            fpath, entry, deps = found
            return self.render(req, rule, fpath, entry, deps)
        return self.next(req)

    def _find(self, req: Request, rule: TemplatesRule) -> tuple[str, Entry, list[Validator]] | None:
        """The file to run for this request under `rule`, or None (not ours)."""
        files = self.files
        path = req.path
        deps: list[Validator] = []
        if path.endswith("/"):
            fs_dir = files.fs_path(req)
            if fs_dir is None:
                return None
            d = files.lookup(fs_dir)
            if not isinstance(d, Entry) or not d.is_dir:
                return None
            base = "" if fs_dir == "/" else fs_dir
            for name in rule.index_files:
                e = files.lookup(base + "/" + name)
                if isinstance(e, Entry) and not e.is_dir:
                    deps.append(d.sig)  # which index answers depends on the folder
                    return path + name, e, deps
            return None
        name = path[path.rfind("/") + 1 :]
        dot = name.rfind(".")
        if dot < 0 or name[dot:] not in rule.extensions:
            return None
        fs = files.fs_path(req)
        if fs is None:
            return None
        e = files.lookup(fs)
        if not isinstance(e, Entry) or e.is_dir:
            return None  # the file server answers (404, 403, the folder's redirect)
        return path, e, deps

    def _include(self, name: str, sig: Validator, text: str) -> Template:
        return self.included.get(name, sig, lambda: Template(name).parse(text))

    def render(
        self, req: Request, rule: TemplatesRule, fpath: str, e: Entry, deps: list[Validator]
    ) -> Response:
        key = (fpath, e.sig, tuple(rule.delims))
        body = self.outputs.get(key)
        validators: tuple[Validator, ...] | None = None
        if body is not None:
            validators = self.outputs.deps(key)
        else:
            ctx = TemplateContext(req, self.files, self._include)
            try:
                body = self._execute(rule, fpath, e, ctx)
            except TemplateError as exc:
                log.error("templates: %s (%s %s)", exc, req.method, req.path)
                return Response.error(500)
            except OSError as exc:
                log.error("templates: cannot read %s: %s", e.path, exc.strerror)
                return Response.error(403 if isinstance(exc, PermissionError) else 500)
            if not ctx.dynamic:
                self.outputs.put(key, [e.sig, *deps, *ctx.deps], body)
                validators = self.outputs.deps(key)
        ctype = type_by_extension(fpath, self.files.mime) or sniff(body[:512])
        h = Headers([("Content-Type", with_charset(ctype)), ("Last-Modified", e.last_modified)])
        return Response(200, h, body, validators=validators)

    def _execute(self, rule: TemplatesRule, fpath: str, e: Entry, ctx: TemplateContext) -> bytes:
        left, right = (rule.delims[0], rule.delims[1]) if rule.delims else ("{{", "}}")
        name = fpath.rsplit("/", 1)[-1]
        parse_name = fpath.lstrip("/")

        def make() -> Template:
            e.acquire()
            try:
                data = e.data if e.data is not None else os.pread(e.fd, e.size, 0)
            finally:
                e.release()
            text = data.decode("utf-8", "replace")
            return Template(name, left=left, right=right).parse(text, parse_name=parse_name)

        tmpl = self.parsed.get((fpath, left, right), e.sig, make)
        return tmpl.execute(ctx).encode("utf-8")


def build(config: TemplatesConfig, next: Handler, site: Site) -> Handler:
    return TemplatesHandler(config, next, fileserver_for(site))


register("templates", parse, build)
