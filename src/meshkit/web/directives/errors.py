"""errors: custom error pages and the error log (Caddy v1).

    errors [FILE|visible]
    errors {
        CODE PAGE                  # e.g. 404 404.html (relative to the site root)
        * PAGE                     # every other error code
        log FILE|visible           # the error log (stdout, stderr, syslog or a file)
        log FILE {                 # ... with its rotation (rotate_* or v0.9's size/age/keep)
            rotate_size MB
        }
        rotate_size MB             # rotation of a log file (as in the log directive)
        rotate_age DAYS
        rotate_keep N
        rotate_compress
    }

Responses made by Response.error() (default_error=True) are replaced by the page for their
code (or `*`), served from the site root with the original status and the original headers
(WWW-Authenticate, Allow...). A replaced answer pinned to files (the file server's 404 of a
missing file) keeps its validators with the page's own: the lane's rule table keeps it.
A handler that raises is answered 500 and the error goes to the
error log (stderr unless a FILE is given) as `<time> [ERROR 500 /path] <error>`; with
`visible` the traceback is also the body of the response (for development only).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass, field

from meshkit.web import fileserver, lanedeps
from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import register
from meshkit.web.lanedeps import LANE_FILL, LANE_FILL_LOGGED
from meshkit.web.logfile import (
    ROLLER_OPTIONS,
    LogSink,
    Roller,
    check_writable,
    open_sink,
    roller_option_error,
)
from meshkit.web.message import (
    BodyTooLarge,
    Handler,
    HandlerResult,
    Headers,
    Request,
    Response,
    Validator,
)
from meshkit.web.mimetypes import type_by_extension
from meshkit.web.placeholders import format_when
from meshkit.web.site import Site

MAX_PAGE = 1024 * 1024


@dataclass
class ErrorsConfig:
    log: str = "stderr"
    visible: bool = False
    pages: dict[str, str] = field(default_factory=dict)  # "404" or "*" -> page path
    roller: Roller = field(default_factory=Roller)


def parse(d: Dispenser, site: Site) -> ErrorsConfig:
    config = ErrorsConfig()
    where = None
    while d.next():
        args = d.remaining_args()
        if len(args) > 1:
            raise d.arg_err()
        if args:
            if args[0] == "visible":
                config.visible = True
            else:
                config.log = args[0]
                where = d.token()
        for _ in d.block():
            what = d.val()
            more = d.remaining_args()
            if what in ROLLER_OPTIONS:
                problem = roller_option_error(config.roller, what, more)
                if problem:
                    raise d.err(problem)
                continue
            if len(more) != 1:
                raise d.arg_err()
            if what == "log":
                if more[0] == "visible":
                    config.visible = True
                else:
                    config.log = more[0]
                    where = d.token()
                _log_block(d, config)
            elif what == "*":
                if "*" in config.pages:
                    raise d.err("duplicate status code entry: *")
                config.pages["*"] = more[0]
            else:
                try:
                    code = int(what)
                except ValueError:
                    raise d.err(f"expecting a numeric status code or *, got {what!r}") from None
                if not 400 <= code <= 599:
                    raise d.err(f"error pages are for codes 400-599, not {code}")
                if str(code) in config.pages:
                    raise d.err(f"duplicate status code entry: {what}")
                config.pages[str(code)] = more[0]
    if where is not None:
        problem = check_writable(config.log)
        if problem:
            raise CaddyfileError(where.file, where.line, f"cannot open error log: {problem}")
        config.__dict__["_where"] = (where.file, where.line)
    return config


# inside `log FILE { ... }`: the rotate_* options, or the names Caddy 0.9 used there
_NESTED_ROLLER = {"size": "rotate_size", "age": "rotate_age", "keep": "rotate_keep",
                  "compress": "rotate_compress"}  # fmt: skip


def _log_block(d: Dispenser, config: ErrorsConfig) -> None:
    """The rotation block of `log FILE { rotate_size 50 ... }` inside errors' block."""
    for _ in d.block():
        what = d.val()
        name = _NESTED_ROLLER.get(what, what)
        if name not in ROLLER_OPTIONS:
            raise d.err(
                f"unknown option {what!r} in the error log's block (expecting rotate_size, "
                "rotate_age, rotate_keep or rotate_compress)"
            )
        # one value each, read as tokens: `{ size 5 age 3 keep 4 }` on one line is three
        # options (v1's ParseRoller took one NextArg per option)
        args = [] if name == "rotate_compress" else [d.arg()]
        problem = roller_option_error(config.roller, name, args)
        if problem:
            raise d.err(problem)


def _page_path(root: str, page: str) -> str:
    # pages live under the root; `..` cannot climb out of it
    clean = os.path.normpath("/" + page.lstrip("/")).lstrip("/")
    return os.path.join(root, clean)


class ErrorHandler:
    def __init__(self, config: ErrorsConfig, next: Handler, site: Site) -> None:
        self.next = next
        self.visible = config.visible
        self.mime = site.mime
        self.pages = {k: _page_path(site.root, v) for k, v in config.pages.items()}
        self.default_page = self.pages.pop("*", None)
        try:
            self.log: LogSink = open_sink(config.log, config.roller)
        except OSError as e:
            file, line = config.__dict__.get("_where", ("Caddyfile", 0))
            raise CaddyfileError(file, line, f"cannot open error log {config.log}: {e}") from None
        self._cache: dict[str, tuple[int, int, bytes]] = {}

    def __call__(self, request: Request) -> HandlerResult:
        try:
            result = self.next(request)
        except BodyTooLarge:
            return self.replace(request, Response.error(413, Headers()))
        except Exception as e:
            return self.failed(request, e)
        if isinstance(result, Response):
            return self.replace(request, result) if result.default_error else result
        return self._later(request, result)

    async def _later(self, request: Request, result: Awaitable[Response]) -> Response:
        try:
            response = await result
        except BodyTooLarge:
            response = Response.error(413)
        except Exception as e:
            return self.failed(request, e)
        return self.replace(request, response) if response.default_error else response

    # --- failures -------------------------------------------------------------------------
    def failed(self, request: Request, error: Exception) -> Response:
        self.log_error(request, 500, error)
        if self.visible:
            text = "".join(traceback.format_exception(error))
            return Response.text(500, f"500 Internal Server Error\n\n{text}")
        return self.replace(request, Response.error(500))

    def log_error(self, request: Request, status: int, error: BaseException | str) -> None:
        if LANE_FILL in request.vars:
            # the lane's rule table trying the request (ruletable.fill): that answer is not
            # kept, and the chain runs the request again and writes the line then
            request.vars[LANE_FILL] = LANE_FILL_LOGGED
            return
        message = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
        message = message.replace("\n", "\\n")
        self.log.write(f"{format_when(time.time())} [ERROR {status} {request.path}] {message}")

    # --- pages ----------------------------------------------------------------------------
    def replace(self, request: Request, response: Response) -> Response:
        page = self.pages.get(str(response.status), self.default_page)
        if page is None:
            return response
        got = self._read(page)
        if got is None:
            self.log_error(request, response.status, f"cannot read error page {page}")
            response.validators = None  # its log line is written each time: never kept
            return response
        body, page_sig = got
        headers = response.headers.copy()
        for name in ("Content-Type", "Content-Length", "X-Content-Type-Options", "ETag"):
            headers.remove(name)
        ctype = type_by_extension(page, self.mime) or "text/html; charset=utf-8"
        headers.set("Content-Type", ctype)
        # an answer pinned to files (a 404 of a missing file) stays pinned, to the page too
        validators = response.validators
        if validators is not None:
            validators = lanedeps.merge(validators, None if page_sig is None else (page_sig,))
        return Response(
            status=response.status,
            headers=headers,
            body=body,
            close=response.close,
            validators=validators,
        )

    def _read(self, path: str) -> tuple[bytes, Validator | None] | None:
        """The page's bytes and its validator (None: changed too lately to be trusted),
        or None when it cannot be read."""
        try:
            st = os.stat(path)
            cached = self._cache.get(path)
            if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
                return cached[2], lanedeps.sig(path, fileserver._RACY_NS, st)
            if st.st_size > MAX_PAGE:
                return None
            with open(path, "rb") as f:
                data = f.read(MAX_PAGE)
        except OSError:
            return None
        self._cache[path] = (st.st_mtime_ns, st.st_size, data)
        return data, lanedeps.sig(path, fileserver._RACY_NS, st)


def build(config: ErrorsConfig, next: Handler, site: Site) -> Handler:
    return ErrorHandler(config, next, site)


register("errors", parse, build)
