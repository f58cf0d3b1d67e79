"""gzip: compress responses for clients that accept it (Caddy v1).

    gzip
    gzip {
        ext EXT...          # request path extensions to compress ("*" all; "" none given)
        not PATH...         # base paths never compressed
        level 1-9           # 6
        min_length BYTES    # smaller responses (by their length) are sent as they are
    }

Without `ext`, these extensions are compressed: "" (no extension, such as a folder's index)
.txt .htm .html .css .php .js .json .md .mdown .xml .svg .go .cgi .py .pl .aspx .asp .m3u
.m3u8. Several gzip directives: the first whose filters let the request through is used.

Never compressed: HEAD requests, 204/206/304 and 1xx responses, responses that already have a
Content-Encoding, `Cache-Control: no-transform`, and types that are compressed already
(images other than SVG, audio, video, archives, fonts in woff/woff2). A compressed response
gets `Content-Encoding: gzip`, `Vary: Accept-Encoding`, a weak ETag and no Content-Length
(or the compressed one) or Accept-Ranges.

Small bodies (files up to 256 KiB) are compressed at once and the results for files are
cached by inode, mtime and size; bigger ones stream as an async iterator, compressing a
chunk at a time so the loop never stalls on megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import FileBody, Handler, HandlerResult, Request, Response, then
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site

DEFAULT_EXTENSIONS = [
    "",
    ".txt",
    ".htm",
    ".html",
    ".css",
    ".php",
    ".js",
    ".json",
    ".md",
    ".mdown",
    ".xml",
    ".svg",
    ".go",
    ".cgi",
    ".py",
    ".pl",
    ".aspx",
    ".asp",
    ".m3u",
    ".m3u8",
]
DEFAULT_LEVEL = 6
WILDCARD = "*"

INLINE_MAX = 256 * 1024  # compress bodies up to this size in one go
CHUNK = 64 * 1024
CACHE_BYTES = 32 * 1024 * 1024  # compressed small files kept in memory
SKIP_STATUS = frozenset({204, 206, 304})

COMPRESSED_TYPES = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/zstd",
        "application/x-zstd",
        "application/x-compress",
        "application/x-lzip",
        "application/x-brotli",
        "application/ogg",
        "font/woff",
        "font/woff2",
        "application/font-woff",
    }
)


@dataclass
class GzipRule:
    ext: list[str] = field(default_factory=list)  # empty: the defaults
    not_paths: list[str] = field(default_factory=list)
    level: int = DEFAULT_LEVEL
    min_length: int = 0


@dataclass
class GzipConfig:
    rules: list[GzipRule] = field(default_factory=list)


def parse(d: Dispenser, site: Site) -> GzipConfig:
    config = GzipConfig()
    while d.next():
        if d.remaining_args():
            raise d.arg_err()
        rule = GzipRule()
        for _ in d.block():
            name = d.val()
            more = d.remaining_args() if name in ("ext", "not") else []
            if name == "ext":
                if not more:
                    raise d.arg_err()
                for ext in more:
                    if ext not in (WILDCARD, "") and not ext.startswith("."):
                        raise d.err(f"gzip: invalid extension {ext!r} (must start with a dot)")
                    if ext not in rule.ext:
                        rule.ext.append(ext)
            elif name == "not":
                if not more:
                    raise d.arg_err()
                for path in more:
                    if path == "/":
                        raise d.err('gzip: cannot exclude "/" (remove the directive instead)')
                    if not path.startswith("/"):
                        raise d.err(f"gzip: invalid path {path!r} (must start with /)")
                    rule.not_paths.append(path)
            elif name == "level":
                more = [d.arg()]
                try:
                    level = int(more[0])
                except ValueError:
                    level = 0
                if not 1 <= level <= 9:
                    raise d.err(f"gzip: level must be 1-9, not {more[0]!r}")
                rule.level = level
            elif name == "min_length":
                more = [d.arg()]
                try:
                    length = int(more[0])
                except ValueError:
                    raise d.err(f"gzip: min_length {more[0]!r} is not a number") from None
                if length <= 0:
                    raise d.err("gzip: min_length must be greater than 0")
                rule.min_length = length
            else:
                raise d.err(
                    f"unknown gzip option {name!r} (expecting ext, not, level or min_length)"
                )
        config.rules.append(rule)
    return config


# --- deciding -------------------------------------------------------------------------------


def accepts_gzip(value: str | None) -> bool:
    """Does an Accept-Encoding value allow gzip (q > 0, directly or through `*`)?"""
    if not value:
        return False
    star: bool | None = None
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if name in ("gzip", "x-gzip"):
            return q > 0
        if name == "*":
            star = q > 0
    return bool(star)


def path_ext(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 else ""


def compressible_type(content_type: str | None) -> bool:
    if not content_type:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    if base == "image/svg+xml":
        return True
    if base.startswith(("image/", "audio/", "video/")):
        return False
    return base not in COMPRESSED_TYPES


def body_length(response: Response) -> int | None:
    body = response.body
    if isinstance(body, bytes):
        return len(body)
    if isinstance(body, FileBody):
        return body.length
    value = response.headers.get("Content-Length")
    if value is not None and value.isdigit():
        return int(value)
    return None


# --- compressing ----------------------------------------------------------------------------


def _compressor(level: int) -> zlib._Compress:
    return zlib.compressobj(level, zlib.DEFLATED, 31, 8)


def gzip_bytes(data: bytes, level: int) -> bytes:
    c = _compressor(level)
    return c.compress(data) + c.flush()


class _Cache:
    """Compressed small files by (dev, inode, mtime, size, offset, length, level)."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self.items: OrderedDict[tuple[int, ...], bytes] = OrderedDict()

    def get(self, key: tuple[int, ...]) -> bytes | None:
        data = self.items.get(key)
        if data is not None:
            self.items.move_to_end(key)
        return data

    def put(self, key: tuple[int, ...], data: bytes) -> None:
        if len(data) > self.limit // 8:
            return
        old = self.items.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self.items[key] = data
        self.used += len(data)
        while self.used > self.limit and self.items:
            _, dropped = self.items.popitem(last=False)
            self.used -= len(dropped)


CACHE = _Cache()


def _read_file(body: FileBody) -> bytes:
    if body.data is not None:
        return body.data
    parts: list[bytes] = []
    offset, left = body.offset, body.length
    while left > 0:
        chunk = os.pread(body.fd, min(left, 1024 * 1024), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _release(body: FileBody) -> None:
    release = body.release
    body.release = None
    if release is not None:
        release()


class GzipStream:
    """An async iterator of gzip pieces of a bytes, file or async-iterator body.

    It releases a FileBody once done, when closed with aclose(), or when dropped unread."""

    def __init__(self, source: bytes | FileBody | AsyncIterator[bytes], level: int) -> None:
        self.source = source
        self.compressor = _compressor(level)
        self.offset = 0
        self.done = False
        self.streaming = not isinstance(source, bytes | FileBody)

    def __aiter__(self) -> GzipStream:
        return self

    async def __anext__(self) -> bytes:
        while not self.done:
            data = await self._next_input()
            if data is None:
                self.done = True
                self._finish()
                tail = self.compressor.flush()
                if tail:
                    return tail
                break
            out = self.compressor.compress(data)
            if self.streaming:
                # a live stream (proxy, server-sent events): each piece goes out at once
                out += self.compressor.flush(zlib.Z_SYNC_FLUSH)
            if out:
                # let other connections run between chunks of a long body
                await asyncio.sleep(0)
                return out
        raise StopAsyncIteration

    async def _next_input(self) -> bytes | None:
        src = self.source
        if isinstance(src, bytes):
            if self.offset >= len(src):
                return None
            piece = src[self.offset : self.offset + CHUNK]
            self.offset += len(piece)
            return piece
        if isinstance(src, FileBody):
            if src.data is not None:
                if self.offset >= len(src.data):
                    return None
                piece = src.data[self.offset : self.offset + CHUNK]
                self.offset += len(piece)
                return piece
            left = src.length - self.offset
            if left <= 0:
                return None
            piece = os.pread(src.fd, min(left, CHUNK), src.offset + self.offset)
            if not piece:
                return None
            self.offset += len(piece)
            return piece
        try:
            return await src.__anext__()
        except StopAsyncIteration:
            return None

    def _finish(self) -> None:
        src = self.source
        if isinstance(src, FileBody):
            _release(src)

    async def aclose(self) -> None:
        self.done = True
        src = self.source
        if isinstance(src, FileBody):
            _release(src)
        elif not isinstance(src, bytes):
            close = getattr(src, "aclose", None)
            if close is not None:
                await close()

    def __del__(self) -> None:
        src = self.source
        if isinstance(src, FileBody) and src.release is not None:
            with contextlib.suppress(Exception):
                _release(src)


def _file_key(body: FileBody, level: int) -> tuple[int, ...] | None:
    try:
        st = os.fstat(body.fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, body.offset, body.length, level)


def compress_response(response: Response, level: int) -> Response:
    """Turn `response` into its gzip-encoded form (the checks are the caller's)."""
    headers = response.headers
    headers.remove("Content-Length")
    headers.remove("Accept-Ranges")
    headers.set("Content-Encoding", "gzip")
    vary = headers.get_all("Vary")
    if not any(
        v.strip().lower() in ("accept-encoding", "*") for item in vary for v in item.split(",")
    ):
        if vary:
            headers.set("Vary", ", ".join([*vary, "Accept-Encoding"]))
        else:
            headers.set("Vary", "Accept-Encoding")
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        headers.set("ETag", "W/" + etag)
    body = response.body
    if isinstance(body, bytes):
        if len(body) <= INLINE_MAX:
            response.body = gzip_bytes(body, level)
        else:
            response.body = GzipStream(body, level)
    elif isinstance(body, FileBody):
        if body.length <= INLINE_MAX:
            key = _file_key(body, level) if body.fd >= 0 else None
            data = CACHE.get(key) if key is not None else None
            try:
                if data is None:
                    data = gzip_bytes(_read_file(body), level)
                    if key is not None:
                        CACHE.put(key, data)
            finally:
                _release(body)
            response.body = data
        else:
            response.body = GzipStream(body, level)
    else:
        response.body = GzipStream(body, level)
    return response


class _Rule:
    __slots__ = ("all_ext", "exts", "level", "min_length", "not_paths")

    def __init__(self, rule: GzipRule) -> None:
        exts = rule.ext or DEFAULT_EXTENSIONS
        self.all_ext = WILDCARD in exts
        self.exts = frozenset(exts)
        self.not_paths = tuple(clamp_path(p) for p in rule.not_paths)
        self.level = rule.level
        self.min_length = rule.min_length

    def wants(self, path: str) -> bool:
        if self.not_paths and path.startswith(self.not_paths):
            return False
        return self.all_ext or path_ext(path) in self.exts


def should_compress(response: Response, min_length: int) -> bool:
    status = response.status
    if status < 200 or status in SKIP_STATUS:
        return False
    headers = response.headers
    if "Content-Encoding" in headers:
        return False
    if not compressible_type(headers.get("Content-Type")):
        return False
    cache_control = headers.get("Cache-Control")
    if cache_control and "no-transform" in cache_control.lower():
        return False
    length = body_length(response)
    return length is None or (length > 0 and length >= min_length)


def build(config: GzipConfig, next: Handler, site: Site) -> Handler:
    rules = [_Rule(r) for r in config.rules]

    def gzip_handler(request: Request) -> HandlerResult:
        if request.method == "HEAD" or not accepts_gzip(request.headers.get("Accept-Encoding")):
            return next(request)
        path = request.path
        for rule in rules:
            if rule.wants(path):
                break
        else:
            return next(request)
        level, min_length = rule.level, rule.min_length

        def maybe_compress(response: Response) -> Response:
            if not should_compress(response, min_length):
                return response
            return compress_response(response, level)

        return then(next(request), maybe_compress)

    return gzip_handler


register("gzip", parse, build)
