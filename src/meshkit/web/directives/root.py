"""root PATH: the folder the site's files are served from (default `.`).

A relative PATH is relative to the working directory `meshkit web` starts in (as in Caddy v1);
`site.root` holds the absolute path. Several `root` lines: the last one wins.
"""

from __future__ import annotations

import os

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site


def parse(d: Dispenser, site: Site) -> str:
    root: str | None = None
    while d.next():
        args = d.remaining_args()
        if len(args) != 1:
            raise d.arg_err()
        if not args[0]:
            raise d.err("root needs a non-empty folder path")
        if "\x00" in args[0]:
            raise d.err("root path holds a NUL character")
        root = args[0]
        for _ in d.block():
            raise d.err("root takes no block")
    if root is None:
        raise d.arg_err()
    site.root = os.path.abspath(root)
    return root


register("root", parse, passthrough)
