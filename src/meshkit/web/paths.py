"""The one canonical form of a request path, which every path matcher compares against (sans-IO).

Every matcher in `meshkit web` (site addresses, each directive's path scope, `internal`,
rewrite and redir conditions, proxy and fastcgi routing with their `except` lists) and the
file server look at the same string: the request path percent-decoded once, with repeated
slashes merged and `.`/`..` segments removed as RFC 3986 §5.2.4 does. A prefix test on any
other form can be walked around (`//secret/s.txt`, `/api/./private`) while the file server
still finds the file, which is how basicauth was bypassed (issue 16).

A path whose `..` segments climb above the root has no canonical form: the server answers
400, as nginx does.
"""

from __future__ import annotations

__all__ = ["canonical_path", "clamp_path"]


def canonical_path(path: str) -> str | None:
    """`path` (already percent-decoded, starting with `/`) with empty segments dropped and
    dot segments resolved; a trailing slash, or a final `.`/`..` segment, leaves one `/` at
    the end. None when a `..` would climb above the root."""
    if "//" not in path and "/." not in path:
        return path  # the common case: nothing to fold
    return _fold(path, False)


def _fold(path: str, clamp: bool) -> str | None:
    out: list[str] = []
    segments = path.split("/")
    last = len(segments) - 1
    trailing = False
    for i, seg in enumerate(segments):
        if seg == "" or seg == ".":
            trailing = i == last
            continue
        if seg == "..":
            if out:
                out.pop()
            elif not clamp:
                return None
            trailing = i == last
            continue
        out.append(seg)
        trailing = False
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


def clamp_path(path: str) -> str:
    """The canonical form of a path meshkit makes itself (a rewrite's or an internal
    redirect's destination, a configured scope such as `basicauth /secret`), where a `..`
    above the root stops at the root (RFC 3986's rule) instead of being refused. Scopes pass
    through here so that `//secret` or `/a/./b` in a Caddyfile mean what they look like."""
    folded = _fold(path if path.startswith("/") else "/" + path, True)
    assert folded is not None  # clamping never gives up
    return folded
