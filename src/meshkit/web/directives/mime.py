"""mime .ext TYPE | mime { .ext TYPE ... }: the Content-Type of files by extension, ahead of
the built-in table (meshkit.web.mimetypes). Extensions start with a dot and match without
regard to case; text types get `charset=utf-8` unless they name a charset. The file server
and browse apply it (`site.mime`); the directive adds no handler of its own.
"""

from __future__ import annotations

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site


def _add(d: Dispenser, out: dict[str, str], ext: str, ctype: str) -> None:
    if not ext.startswith(".") or len(ext) < 2 or "/" in ext:
        raise d.err(f"mime extension {ext!r} must start with a dot, like .html")
    if not ctype or "/" not in ctype:
        raise d.err(f"mime type {ctype!r} for {ext} is not a media type like text/plain")
    key = ext.lower()
    if key in out:
        raise d.err(f"mime: duplicate extension {ext!r}")
    out[key] = ctype


def parse(d: Dispenser, site: Site) -> dict[str, str]:
    out: dict[str, str] = {}
    while d.next():
        args = d.remaining_args()
        if args:
            if len(args) != 2:
                raise d.arg_err()
            _add(d, out, args[0], args[1])
            for _ in d.block():
                raise d.err("mime takes either arguments or a block, not both")
            continue
        seen = False
        for _ in d.block():
            seen = True
            ext = d.val()
            _add(d, out, ext, d.arg())  # one value: `.a x/a .b x/b` is two entries
        if not seen:
            raise d.arg_err()
    site.mime.update(out)
    return out


register("mime", parse, passthrough)
