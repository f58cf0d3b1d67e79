"""Which requests go to FastCGI, how their path splits, and the CGI environment: pure functions.

Routing (Caddy v1's rules, with the split made safe):

- the path must start with the rule's base path and with none of its `except` paths;
- a folder path (ending in `/`) tries the index files (`index.php` with the php preset) and
  continues with the first that exists; a folder without one is not FastCGI's;
- the path splits into SCRIPT_NAME and PATH_INFO at the first split extension (`.php`) that is
  followed by `/` or ends the path. `index.php.phpinfo.php` therefore splits only at its very
  end (Caddy #758 split at the first `.php` anywhere), and `/upload.jpg/x.php` names the script
  `/upload.jpg/x.php`;
- the script must exist as a regular file under the root: a path whose script part does not
  exist never reaches php-fpm, so php-fpm's cgi.fix_pathinfo can never walk back from
  `/upload.jpg/x.php` to run `upload.jpg` as PHP;
- then, as in Caddy v1, the request goes to FastCGI when it has PATH_INFO or ends with the
  rule's `ext` (always, when no ext is set).

Without a `split`, a rule hands every request under its path to the FastCGI application, with
an empty SCRIPT_NAME and the whole path as PATH_INFO (a generic FastCGI app has no script file).

The environment is the CGI/1.1 set plus what php-fpm expects (DOCUMENT_ROOT, DOCUMENT_URI,
SCRIPT_FILENAME, SCRIPT_NAME, REQUEST_URI as received, PATH_INFO and, with PATH_INFO,
PATH_TRANSLATED), the `env` lines of the rule, then each request header as HTTP_NAME.
Header names holding `_` are left out (HTTP_X_USER could otherwise be forged by sending
`X_User` beside `X-User`), and so is `Proxy` (httpoxy: it would become HTTP_PROXY).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.web.message import Request

SERVER_SOFTWARE = b"meshkit"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the script's URL path and the rest of the path after it."""

    script_name: str  # e.g. /blog/index.php ("" for a rule without split)
    path_info: str  # e.g. /2024/hello ("" when the path ends at the script)


def split_script(path: str, splits: Sequence[str]) -> tuple[str, str] | None:
    """(script_name, path_info) of `path`, split right after the first split extension that
    ends a path segment (followed by `/` or the end), case-insensitively; None when no split
    extension ends a segment."""
    low = path.lower()
    best = -1
    for ext in splits:
        ext = ext.lower()
        start = low.find(ext)
        while start >= 0:
            stop = start + len(ext)
            if stop == len(low) or low[stop] == "/":
                if best < 0 or stop < best:
                    best = stop
                break
            start = low.find(ext, start + 1)
    if best < 0:
        return None
    return path[:best], path[best:]


def route(
    path: str,
    *,
    base: str,
    ext: str,
    splits: Sequence[str],
    index_files: Sequence[str],
    except_paths: Sequence[str],
    is_file: Callable[[str], bool],
) -> Target | None:
    """The FastCGI target of a (clean, decoded) request path, or None when the request is
    not for this rule. `is_file(url_path)` says whether the path names a regular file under
    the site root; it is the only I/O, passed in."""
    if not path.startswith(base):
        return None
    for skip in except_paths:
        if path.startswith(skip):
            return None
    if not splits:
        return Target("", path)
    fpath = path
    if path.endswith("/"):
        for name in index_files:
            candidate = path + name
            if split_script(candidate, splits) is not None and is_file(candidate):
                fpath = candidate
                break
        else:
            return None
    parts = split_script(fpath, splits)
    if parts is None:
        return None
    script, info = parts
    if not is_file(script):
        return None
    if info or fpath.endswith(ext):
        return Target(script, info)
    return None


# header name as received -> its HTTP_ variable name, or None for headers not passed on
_HTTP_KEYS: dict[str, bytes | None] = {}
_SKIPPED = frozenset(("content-type", "content-length", "proxy"))


def _http_key(name: str) -> bytes | None:
    key: bytes | None = None
    if "_" not in name and name.lower() not in _SKIPPED:
        key = ("HTTP_" + name.upper().replace("-", "_")).encode("latin-1", "replace")
    if len(_HTTP_KEYS) < 1024:  # names come from clients: bound what is remembered
        _HTTP_KEYS[name] = key
    return key


def _join(root: str, url_path: str) -> str:
    # the URL path is clean (no `.`/`..` segments): a plain join keeps it under root
    if not url_path:
        return root
    rest = url_path.lstrip("/")
    return root + rest if root.endswith("/") else root + "/" + rest


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


_PROTOCOLS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


def static_env(document_root: str) -> list[tuple[bytes, bytes]]:
    """The PARAMS that are the same for every request of a rule (sent first; a rule can
    encode them once)."""
    return [
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_SOFTWARE", SERVER_SOFTWARE),
        (b"DOCUMENT_ROOT", _b(document_root)),
    ]


def remote_env(request: Request) -> list[tuple[bytes, bytes]]:
    """The PARAMS naming the client (kept apart: they change with every connection)."""
    remote = _b(request.remote_addr)
    return [
        (b"REMOTE_ADDR", remote),
        (b"REMOTE_HOST", remote),
        (b"REMOTE_PORT", b"%d" % request.remote_port),
    ]


def request_key(request: Request, target: Target, content_length: int | None) -> tuple[Any, ...]:
    """Everything request_env() reads: equal keys give equal PARAMS (for memoizing)."""
    return (
        target.script_name,  # not the Target: its dataclass __hash__ runs in Python
        target.path_info,
        request.method,
        request.uri,
        request.original_uri,
        request.query,
        request.version,
        request.host,
        request.server_addr,
        request.server_port,
        request.scheme,
        request.vars.get("user"),
        content_length,
        *request.headers._items,
    )


def request_env(
    request: Request,
    target: Target,
    document_root: str,
    content_length: int | None,
) -> list[tuple[bytes, bytes]]:
    """The PARAMS that depend on the request but not on the client's address (after
    static_env and remote_env, before the rule's `env`); see request_key."""
    script = target.script_name
    info = target.path_info
    headers = request.headers
    version = request.version
    script_b = _b(script)
    env: list[tuple[bytes, bytes]] = [
        (b"SERVER_PROTOCOL", _PROTOCOLS.get(version) or b"HTTP/" + version.encode("latin-1")),
        (b"SERVER_NAME", _b(request.hostonly)),
        (b"SERVER_ADDR", _b(request.server_addr)),
        (b"SERVER_PORT", b"%d" % request.server_port),
        (b"REQUEST_METHOD", request.method.encode("latin-1")),
        (b"REQUEST_SCHEME", request.scheme.encode("latin-1")),
        (b"REQUEST_URI", _b(request.original_uri or request.uri)),
        (b"QUERY_STRING", _b(request.query)),
        (b"DOCUMENT_URI", script_b),
        (b"SCRIPT_NAME", script_b),
        (b"SCRIPT_FILENAME", _b(_join(document_root, script))),
        (b"PATH_INFO", _b(info)),
    ]
    if info:
        env.append((b"PATH_TRANSLATED", _b(_join(document_root, info))))
    if request.scheme == "https":
        env.append((b"HTTPS", b"on"))
    user = request.vars.get("user")
    if user:
        env.append((b"REMOTE_USER", _b(user)))
        env.append((b"AUTH_TYPE", b"Basic"))
    if content_length is not None:
        env.append((b"CONTENT_LENGTH", b"%d" % content_length))
    seen: dict[bytes, int] = {}
    typed = False
    keys = _HTTP_KEYS
    for name, value in headers:
        key = keys.get(name, b"")
        if key == b"":
            key = _http_key(name)
        if key is None:
            if not typed and name.lower() == "content-type":
                typed = True  # the first one, as Headers.get would
                env.append((b"CONTENT_TYPE", value.encode("latin-1", "replace")))
            continue
        raw = value.encode("latin-1", "replace")
        at = seen.get(key)
        if at is None:
            seen[key] = len(env)
            env.append((key, raw))
        else:
            # repeated fields fold into one, comma-separated (RFC 9110 5.3); cookies use "; "
            sep = b"; " if key == b"HTTP_COOKIE" else b", "
            env[at] = (key, env[at][1] + sep + raw)
    return env


def build_env(
    request: Request,
    target: Target,
    *,
    document_root: str,
    content_length: int | None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> list[tuple[bytes, bytes]]:
    """The FastCGI PARAMS of one request as (name, value) byte pairs: static_env,
    remote_env, request_env, then `extra` (the rule's `env` lines, already rendered) last,
    so that they win (php-fpm keeps the last value of a repeated name).

    Paths are sent as UTF-8; header values as the latin-1 bytes they came in as."""
    env = static_env(document_root)
    env += remote_env(request)
    env += request_env(request, target, document_root, content_length)
    env.extend(extra)
    return env
