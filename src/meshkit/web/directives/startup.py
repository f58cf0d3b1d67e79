"""startup COMMAND [ARGS...] [&]: run a command at startup (Caddy v1), the same as
`on startup COMMAND` (meshkit.web.directives.on; meshkit.web.hooks says when it runs)."""

from __future__ import annotations

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.directives.on import HooksConfig, parse_event
from meshkit.web.site import Site


def parse(d: Dispenser, site: Site) -> HooksConfig:
    return parse_event(d, "startup")


register("startup", parse, passthrough)
