"""status: answer a path with a bare status code (Caddy v1).

    status CODE PATH
    status CODE {
        PATH
        ...
    }

PATH is a base path (plain prefix); the longest matching one wins. A code of 400 or more
answers with the default error page (which the errors directive may replace); a lower one
with an empty body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site


@dataclass
class StatusRule:
    code: int
    path: str


@dataclass
class StatusConfig:
    rules: list[StatusRule] = field(default_factory=list)
    # the path decides, and its answers carry no file validators (never remembered): a
    # site with it may still answer other paths from remembered responses
    keeps_static: ClassVar[bool] = True


def _code(d: Dispenser, text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise d.err(f"expecting a numeric status code, got {text!r}") from None
    if not 100 <= code <= 999:
        raise d.err(f"status code {code} is out of range (100-999)")
    return code


def parse(d: Dispenser, site: Site) -> StatusConfig:
    config = StatusConfig()

    def add(code: int, path: str) -> None:
        if any(r.path == path for r in config.rules):
            raise d.err(f"duplicate path: {path!r}")
        config.rules.append(StatusRule(code, path))

    while d.next():
        args = d.remaining_args()
        if len(args) == 2:
            add(_code(d, args[0]), args[1])
            for _ in d.block():
                raise d.err("status CODE PATH takes no block")
        elif len(args) == 1:
            code = _code(d, args[0])
            had_block = False
            for _ in d.block():
                had_block = True
                path = d.val()
                if d.remaining_args():
                    raise d.arg_err()
                add(code, path)
            if not had_block:
                raise d.arg_err()
        else:
            raise d.arg_err()
    return config


def build(config: StatusConfig, next: Handler, site: Site) -> Handler:
    rules = sorted(((clamp_path(r.path), r.code) for r in config.rules), key=lambda r: -len(r[0]))

    def status_handler(request: Request) -> HandlerResult:
        path = request.path
        for base, code in rules:
            if path.startswith(base):
                if code >= 400:
                    return Response.error(code)
                return Response(status=code)
        return next(request)

    return status_handler


register("status", parse, build)
