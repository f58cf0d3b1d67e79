"""fastcgi: hand requests to a FastCGI responder such as php-fpm (Caddy v1).

    fastcgi PATH ENDPOINT [php] {
        root DIR                # DOCUMENT_ROOT / SCRIPT_FILENAME base (default: the site root)
        ext .php                # a path ending in it goes to FastCGI
        split .php...           # where SCRIPT_NAME ends and PATH_INFO starts
        index index.php...      # index files tried for folder paths
        env NAME VALUE          # extra variables; placeholders ({host}, {>Header}...) work
        except PATH...          # base paths that are never FastCGI's
        upstream ENDPOINT       # more responders, round robin (once per line)
        connect_timeout 60s     # Caddy v1's defaults: 60s each
        read_timeout 60s
        send_timeout 60s
    }

ENDPOINT is `host:port`, `[v6]:port` or `unix:/path/to.sock`. The `php` preset means
`ext .php`, `split .php`, `index index.php`. Which requests go to FastCGI and what they see is
described in meshkit.web.fastcgi.env (note the safe split); the others fall through to the next
handler, normally the file server. php-fpm unreachable is a 502, no reply within read_timeout
a 504, both logged with the endpoint on the "meshkit.web" logger, as is the script's stderr.

A request without a body is written at once (Client.start) and answered through a plain
Future from the connection's callbacks; one with a body is read (or streamed) by a coroutine.
What is the same for every request of a rule is encoded once, and the rest of a request's
PARAMS is remembered by everything it is made of except the client's address (_Rule.params).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from meshkit.base.durations import DurationError, parse_duration
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.fastcgi.answer import Answer, Pending, response_for
from meshkit.web.fastcgi.client import (
    Client,
    FastCGIError,
    Reply,
    Timeouts,
    parse_endpoint,
)
from meshkit.web.fastcgi.env import (
    Target,
    remote_env,
    request_env,
    request_key,
    route,
    split_script,
    static_env,
)
from meshkit.web.fastcgi.fast import encode_pairs, has_field, is_regular_file
from meshkit.web.fileserver import clean_path
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import Template, compile_template
from meshkit.web.site import Site

DEFAULT_TIMEOUT = 60.0
SMALL_BODY = 65536  # request bodies up to this are read first and sent in the same write
PARAMS_REMEMBERED = 1024  # encoded request PARAMS kept (see _Rule.params)
PARAMS_REMEMBER_BELOW = 4096  # bytes: PARAMS of bigger requests are encoded every time
# _Rule.target's plans: what is left to do for a request path
_CHECK, _ROUTE, _FIXED = 0, 1, 2
_REFUSED = object()  # a path clean_path refuses: no rule serves it
PHP_PRESET = {"ext": ".php", "split": [".php"], "index": ["index.php"]}


@dataclass
class FastCGIRule:
    path: str
    endpoints: list[str]
    root: str = ""  # "" = the site root
    ext: str = ""
    split: list[str] = field(default_factory=list)
    index: list[str] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)
    except_paths: list[str] = field(default_factory=list)
    connect_timeout: float = DEFAULT_TIMEOUT
    read_timeout: float = DEFAULT_TIMEOUT
    send_timeout: float = DEFAULT_TIMEOUT


@dataclass
class FastCGIConfig:
    rules: list[FastCGIRule] = field(default_factory=list)


# --- parsing --------------------------------------------------------------------------------


def _endpoint(d: Dispenser, text: str) -> str:
    try:
        parse_endpoint(text)
    except ValueError as e:
        raise d.err(str(e)) from None
    return text


def _base_path(d: Dispenser, text: str, what: str) -> str:
    if not text.startswith("/"):
        raise d.err(f"{what} {text!r} must start with '/'")
    return text


def _one(d: Dispenser, more: list[str]) -> str:
    if len(more) != 1:
        raise d.arg_err()
    return more[0]


def _extension(d: Dispenser, text: str, what: str) -> str:
    if not text.startswith(".") or len(text) < 2 or "/" in text:
        raise d.err(f"invalid {what} {text!r} (an extension such as .php)")
    return text


def parse(d: Dispenser, site: Site) -> FastCGIConfig:
    config = FastCGIConfig()
    while d.next():
        args = d.remaining_args()
        if len(args) not in (2, 3):
            raise d.arg_err()
        rule = FastCGIRule(path=_base_path(d, args[0], "path"), endpoints=[_endpoint(d, args[1])])
        if len(args) == 3:
            if args[2] != "php":
                raise d.err(f"unknown fastcgi preset {args[2]!r} (the only preset is php)")
            rule.ext = str(PHP_PRESET["ext"])
            rule.split = [".php"]
            rule.index = ["index.php"]
        for _ in d.block():
            name = d.val()
            # one-value options read one token (Caddy's NextArg); the others the whole line
            one = name in ("root", "ext", "connect_timeout", "read_timeout", "send_timeout")
            more = [] if one else d.remaining_args()
            if name == "root":
                rule.root = d.arg()
            elif name == "ext":
                rule.ext = _extension(d, d.arg(), "ext")
            elif name == "split":
                if not more:
                    raise d.arg_err()
                rule.split = [_extension(d, s, "split") for s in more]
            elif name == "index":
                if not more:
                    raise d.arg_err()
                for f in more:
                    if "/" in f or f in (".", ".."):
                        raise d.err(f"index {f!r} must be a file name")
                rule.index = more
            elif name == "env":
                if len(more) != 2:
                    raise d.arg_err()
                rule.env.append((more[0], more[1]))
            elif name == "except":
                if not more:
                    raise d.arg_err()
                rule.except_paths.extend(_base_path(d, p, "except path") for p in more)
            elif name == "upstream":
                rule.endpoints.append(_endpoint(d, _one(d, more)))
            elif name in ("connect_timeout", "read_timeout", "send_timeout"):
                text = d.arg()
                try:
                    seconds = parse_duration(text, name)
                except DurationError as exc:
                    raise d.err(str(exc)) from None
                if seconds <= 0:
                    raise d.err(f"{name} must be more than 0, got {text!r}")
                setattr(rule, name, seconds)
            else:
                raise d.err(
                    f"unknown fastcgi option {name!r} (expecting root, ext, split, index, env, "
                    "except, upstream, connect_timeout, read_timeout or send_timeout)"
                )
        config.rules.append(rule)
    return config


# --- the handler ----------------------------------------------------------------------------


class _Rule:
    __slots__ = (
        "base",
        "client",
        "document_root",
        "env_dynamic",
        "env_static",
        "except_paths",
        "ext",
        "index",
        "known",
        "params_prefix",
        "params_suffix",
        "plans",
        "remotes",
        "site_root",
        "split",
    )

    def __init__(self, rule: FastCGIRule, site: Site) -> None:
        self.base = clamp_path(rule.path)
        self.site_root = os.path.abspath(site.root)
        root = rule.root or site.root
        self.document_root = os.path.normpath(os.path.join(self.site_root, root))
        self.ext = rule.ext
        self.split = tuple(rule.split)
        self.index = tuple(rule.index)
        self.except_paths = tuple(clamp_path(p) for p in rule.except_paths)
        self.env_static: list[tuple[bytes, bytes]] = []
        self.env_dynamic: list[tuple[bytes, Template]] = []
        for name, value in rule.env:
            key = name.encode("utf-8", "surrogateescape")
            tpl = compile_template(value)
            if tpl.static is not None:
                self.env_static.append((key, tpl.static.encode("utf-8", "surrogateescape")))
            else:
                self.env_dynamic.append((key, tpl))
        self.client = Client(
            [parse_endpoint(e) for e in rule.endpoints],
            Timeouts(rule.connect_timeout, rule.read_timeout, rule.send_timeout),
        )
        # PARAMS encoded once: the same for every request of this rule
        self.params_prefix = encode_pairs(static_env(self.document_root))
        self.params_suffix = b"" if self.env_dynamic else encode_pairs(self.env_static)
        self.known: dict[tuple[Any, ...], bytes] = {}  # see params()
        self.remotes: dict[tuple[str, int], bytes] = {}  # a client's encoded REMOTE_*
        self.plans: dict[str, tuple[int, str, Target | object | None]] = {}  # see target()

    def is_file(self, url_path: str) -> bool:
        # asked afresh each time: a remembered answer could send php-fpm a script that is
        # gone, which is what the safe split is there to prevent
        root = self.site_root
        path = url_path.lstrip("/")
        return is_regular_file(root + path if root.endswith("/") else root + "/" + path)

    def target(self, path: str) -> Target | object | None:
        """route() of the request path (clean_path'ed first; _REFUSED when it cannot be).

        What route() decides from the path alone is remembered by path (see _plan); the
        script's is_file() is still asked for every request."""
        plan = self.plans.get(path)
        if plan is None:
            plan = self._plan(path)
            if len(self.plans) >= PARAMS_REMEMBERED:
                self.plans.clear()
            self.plans[path] = plan
        kind, value, target = plan
        if kind == _CHECK:
            return target if self.is_file(value) else None
        if kind == _ROUTE:
            return route(
                value,
                base=self.base,
                ext=self.ext,
                splits=self.split,
                index_files=self.index,
                except_paths=self.except_paths,
                is_file=self.is_file,
            )
        return target  # _FIXED: None, _REFUSED or a Target without a script to check

    def _plan(self, path: str) -> tuple[int, str, Target | object | None]:
        """route()'s decision for `path` up to its I/O, in route()'s order: (_CHECK, script,
        target) when only is_file(script) is left to ask, (_ROUTE, clean path, None) for
        folder paths (their index files are looked up by route()), (_FIXED, "", answer)."""
        clean = clean_path(path)
        if clean is None:
            return _FIXED, "", _REFUSED
        if not self.split or clean.endswith("/"):
            return _ROUTE, clean, None  # no split: route() answers without I/O anyway
        if not clean.startswith(self.base) or any(clean.startswith(p) for p in self.except_paths):
            return _FIXED, "", None
        parts = split_script(clean, self.split)
        if parts is None:
            return _FIXED, "", None
        script, info = parts
        if info or clean.endswith(self.ext):
            return _CHECK, script, Target(script, info)
        return _FIXED, "", None  # route() would stat the script, then answer None anyway

    def extra_env(self, request: Request) -> list[tuple[bytes, bytes]]:
        if not self.env_dynamic:
            return self.env_static
        out = list(self.env_static)
        for key, tpl in self.env_dynamic:
            out.append((key, tpl.render(request).encode("utf-8", "surrogateescape")))
        return out

    def params(self, request: Request, target: Target, content_length: int | None) -> bytes:
        """The encoded PARAMS of a request (meshkit.web.fastcgi.env.build_env's pairs).

        The part after the client's address is remembered by request_key: clients repeat
        the same requests (same headers) over and over, and encoding them is most of the
        work."""
        remote = self.remotes.get((request.remote_addr, request.remote_port))
        if remote is None:
            remote = encode_pairs(remote_env(request))
            if len(self.remotes) >= PARAMS_REMEMBERED:
                self.remotes.clear()
            self.remotes[(request.remote_addr, request.remote_port)] = remote
        if self.env_dynamic:
            rest = encode_pairs(
                request_env(request, target, self.document_root, content_length)
            ) + encode_pairs(self.extra_env(request))
            return self.params_prefix + remote + rest
        key = request_key(request, target, content_length)
        known = self.known.get(key)
        if known is None:
            known = (
                encode_pairs(request_env(request, target, self.document_root, content_length))
                + self.params_suffix
            )
            # the key holds the request's fields: remember small requests only
            if len(known) <= PARAMS_REMEMBER_BELOW:
                if len(self.known) >= PARAMS_REMEMBERED:
                    self.known.clear()
                self.known[key] = known
        return self.params_prefix + remote + known


class _Pools:
    """Closes the rules' kept connections when the site goes away (reload, shutdown)."""

    def __init__(self, rules: list[_Rule]) -> None:
        self.rules = rules

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for rule in self.rules:
            rule.client.close()


class FastCGIHandler:
    def __init__(self, config: FastCGIConfig, next: Handler, site: Site) -> None:
        self.next = next
        self.rules = [_Rule(r, site) for r in config.rules]
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, request: Request) -> HandlerResult:
        path = request.path
        for rule in self.rules:
            if not path.startswith(rule.base):
                continue
            target = rule.target(path)
            if target is _REFUSED:
                break  # the file server refuses it
            if target is not None:
                assert isinstance(target, Target)
                if request.body.length == 0:
                    return self._start(rule, request, target)
                return self._serve(rule, request, target)
        return self.next(request)

    def _start(self, rule: _Rule, request: Request, target: Target) -> HandlerResult:
        """A request without a body: sent at once (on a kept connection), answered through
        a Future resolved from the connection's callbacks."""
        content_length = 0 if has_field(request.headers._items, "content-length") else None
        head_only = request.method == "HEAD"
        loop = self._loop
        if loop is None or loop.is_closed():
            # asked once: get_running_loop() costs a getpid() system call each time
            loop = self._loop = asyncio.get_running_loop()
        fut = Pending(loop=loop)
        rule.client.start(
            rule.params(request, target, content_length), head_only, Answer(fut, head_only)
        )
        return fut

    async def _serve(self, rule: _Rule, request: Request, target: Target) -> Response:
        body = request.body
        length = body.length
        stdin: bytes | None = None
        streamed = None
        if length is None or length <= SMALL_BODY:
            # chunked bodies are read whole first: PHP needs CONTENT_LENGTH up front
            stdin = await body.read_all() if length != 0 else b""
            content_length: int | None = len(stdin)
            if not stdin and "Content-Length" not in request.headers and length == 0:
                content_length = None
        else:
            streamed = body
            content_length = length
        head_only = request.method == "HEAD"
        try:
            reply: Reply = await rule.client.request(
                rule.params(request, target, content_length), streamed, stdin, head_only
            )
        except FastCGIError as e:
            return Response.error(e.status)
        return _response(reply, head_only)


# the name meshkit.web.fastcgi.lane (and older callers) use
_response = response_for


def build(config: FastCGIConfig, next: Handler, site: Site) -> Handler:
    handler = FastCGIHandler(config, next, site)
    site.background.append(_Pools(handler.rules))
    return handler


register("fastcgi", parse, build)
