"""index FILE...: the index file names looked up in a folder, in order, replacing the default
list (index.html index.htm index.txt default.html default.htm default.txt). Several `index`
lines add up, in the order written.
"""

from __future__ import annotations

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site


def parse(d: Dispenser, site: Site) -> list[str]:
    names: list[str] = []
    while d.next():
        args = d.remaining_args()
        if not args:
            raise d.arg_err()
        for name in args:
            if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
                raise d.err(f"index file {name!r} must be a plain file name (no slashes)")
            if name not in names:
                names.append(name)
        for _ in d.block():
            raise d.err("index takes no block")
    site.index_files = names
    return names


register("index", parse, passthrough)
