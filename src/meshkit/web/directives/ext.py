"""ext .EXT...: for a request path with no extension and no trailing slash, try the listed
extensions in order and rewrite the path to the first `path + ext` that is an existing file
inside the root (`/about` -> `/about.html`). Paths the file server would refuse are left alone.

A file server answer keeps its validators, with those of the extensions tried and missed
(meshkit.web.lanedeps.pin): the lane's rule table may keep it, and drops it when one of them
appears.
"""

from __future__ import annotations

from meshkit.web import fileserver, lanedeps
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.filecache import Entry
from meshkit.web.fileserver import fileserver_for
from meshkit.web.message import Handler, HandlerResult, Request, Response, Validator
from meshkit.web.site import Site


def parse(d: Dispenser, site: Site) -> list[str]:
    exts: list[str] = []
    while d.next():
        args = d.remaining_args()
        if not args:
            raise d.arg_err()
        for ext in args:
            if not ext.startswith(".") or len(ext) < 2 or "/" in ext or "\x00" in ext:
                raise d.err(f"extension {ext!r} must start with a dot, like .html")
            if ext not in exts:
                exts.append(ext)
        for _ in d.block():
            raise d.err("ext takes no block")
    return exts


def build(config: list[str], next: Handler, site: Site) -> Handler:
    exts = tuple(config)
    files = fileserver_for(site)

    def ext_handler(req: Request) -> HandlerResult:
        p = req.path
        if not p or p.endswith("/") or "." in p[p.rfind("/") + 1 :]:
            return next(req)
        base = files.fs_path(req)
        if base is None:
            return next(req)
        # what the extensions tried before the one taken are (missing, a folder...): the
        # answer depends on their staying so (lanedeps), besides the file server's own
        # (made only for the table: see lanedeps.LANE_FILL)
        pins = lanedeps.LANE_FILL in req.vars
        deps: tuple[Validator, ...] | None = ()
        for ext in exts:
            e = files.lookup(base + ext)
            if isinstance(e, Entry) and not e.is_dir:
                req.path = p + ext
                break
            if pins:
                deps = lanedeps.merge(deps, lanedeps.pin(base + ext, files.prefix, _racy_ns()))
        result = next(req)
        if isinstance(result, Response) and result.validators is not None:
            # without pins: not an answer for the table, and the router clears them anyway
            result.validators = lanedeps.merge(result.validators, deps if pins else None)
        return result

    return ext_handler


def _racy_ns() -> int:
    return fileserver._RACY_NS


register("ext", parse, build)
