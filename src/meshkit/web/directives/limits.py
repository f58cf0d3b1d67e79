"""limits: request header and body size limits.

    limits SIZE                    # header and body (every path) limit
    limits {
        header SIZE
        header_fields N            # meshkit: header fields per request head (default 100)
        header_line SIZE           # meshkit: bytes of one `name: value` field (default 8KB)
        body [PATH] SIZE           # PATH a base path (plain prefix), "/" when left out
    }

SIZE is a number with an optional unit B, KB, MB or GB (powers of 1024, any case); 0 is not
allowed. The header limit goes to `site.header_limit` (the server enforces it); the body limit
of the longest matching path goes to `request.body.limit`, and a request whose Content-Length
is already over it gets 413 at once. `header_fields` and `header_line` (not in Caddy v1, whose
`limits` has only header and body) are kept in the LimitsConfig for the server of the site's
port (the smallest of its sites wins, as for `header`); a head over any of the three gets 431.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import BodyLimit, Site

UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_SIZE = re.compile(r"(\d+)\s*([A-Za-z]*)")


def parse_size(text: str) -> int | None:
    """Bytes in `10MB` / `512kb` / `100`; None when it is not a size."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        return None
    unit = UNITS.get(m.group(2).upper())
    if unit is None:
        return None
    return int(m.group(1)) * unit


@dataclass
class PathLimit:
    path: str
    size: int


@dataclass
class LimitsConfig:
    header: int | None = None
    header_fields: int | None = None
    header_line: int | None = None
    body: list[PathLimit] = field(default_factory=list)  # longest path first


def _size(d: Dispenser, text: str) -> int:
    size = parse_size(text)
    if size is None:
        raise d.err(f"invalid size {text!r} (a number with B, KB, MB or GB)")
    if size < 1:
        raise d.err(f"size {text!r} must be more than 0")
    return size


def parse(d: Dispenser, site: Site) -> LimitsConfig:
    config = LimitsConfig()
    body: dict[str, int] = {}

    def add_body(path: str, size: int) -> None:
        if not path.startswith("/"):
            path = "/" + path
        body[path] = size  # the last one for a path wins

    while d.next():
        args = d.remaining_args()
        if len(args) == 1:
            size = _size(d, args[0])
            config.header = size
            add_body("/", size)
            for _ in d.block():
                raise d.err("limits SIZE takes no block")
            continue
        if args:
            raise d.arg_err()
        had_block = False
        for _ in d.block():
            had_block = True
            kind = d.val()
            more = d.remaining_args()
            if kind == "header":
                if len(more) != 1:
                    raise d.arg_err()
                config.header = _size(d, more[0])
            elif kind == "header_fields":
                if len(more) != 1:
                    raise d.arg_err()
                if not more[0].isdigit() or int(more[0]) < 1:
                    raise d.err(f"header_fields {more[0]!r} must be a whole number above 0")
                config.header_fields = int(more[0])
            elif kind == "header_line":
                if len(more) != 1:
                    raise d.arg_err()
                config.header_line = _size(d, more[0])
            elif kind == "body":
                if len(more) == 1:
                    add_body("/", _size(d, more[0]))
                elif len(more) == 2:
                    add_body(more[0], _size(d, more[1]))
                else:
                    raise d.arg_err()
            else:
                raise d.err(
                    f"unknown limits option {kind!r} "
                    "(expecting header, header_fields, header_line or body)"
                )
        if not had_block:
            raise d.arg_err()
    config.body = sorted(
        (PathLimit(p, s) for p, s in body.items()), key=lambda pl: len(pl.path), reverse=True
    )
    if config.header is not None:
        site.header_limit = config.header
    if config.body:
        site.body_limits = [BodyLimit(pl.path, pl.size) for pl in config.body]
    return config


def body_limit(limits: list[PathLimit], path: str) -> int | None:
    for pl in limits:  # longest first
        if path.startswith(pl.path):
            return pl.size
    return None


def build(config: LimitsConfig, next: Handler, site: Site) -> Handler:
    limits = sorted(
        (PathLimit(clamp_path(pl.path), pl.size) for pl in config.body),
        key=lambda pl: len(pl.path),
        reverse=True,
    )
    if not limits:
        return next

    def limits_handler(request: Request) -> HandlerResult:
        limit = body_limit(limits, request.path)
        if limit is not None:
            request.body.limit = limit
            length = request.body.length
            if length is not None and length > limit:
                response = Response.error(413)
                response.close = True  # the body is not read: do not try to reuse the stream
                return response
        return next(request)

    return limits_handler


register("limits", parse, build)
