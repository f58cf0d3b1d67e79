"""push: HTTP/2 server push (Caddy v1's caddyhttp/push), off unless configured.

    push                                    # push what responses name in Link: rel=preload
    push /index.html /style.css /app.js     # with /index.html (or /), push these too
    push /index.html /style.css {
        /app.js                             # more resources, one a line
        method HEAD                         # the pushed request's method (GET, default, or HEAD)
        header X-Pushed yes                 # fields of the pushed request (more lines: more)
    }

A request over HTTP/2 whose path is under a rule's PATH (a prefix, as Caddy v1's paths; `/`
also matches a rule naming one of the site's index files) gets its rule's resources pushed
before its own response: each is promised on the request's stream and answered by the site
like a request (carrying the client's Accept-Encoding, Accept-Language, Cache-Control and
User-Agent, plus the rule's fields). Then every `Link: <URL>; rel=preload` of the response
(a proxied application's, a `header` directive's) is pushed too, unless it says `nopush`.
Pushing stops when the client refused push (SETTINGS_ENABLE_PUSH 0, as curl and most
browsers of today do) or its concurrent streams are full. HTTP/1.1 requests and pushed
requests themselves are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.h2stream import PUSHED_VAR, Pusher, current_pusher
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site

FORWARDED = ("accept-encoding", "accept-language", "cache-control", "user-agent")
_LINK = re.compile(r"^\s*<([^>]*)>\s*(?:;(.*))?$")
MAX_LINK_PUSHES = 32  # per response


@dataclass
class PushResource:
    path: str
    method: str = "GET"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PushRule:
    path: str
    resources: list[PushResource] = field(default_factory=list)


@dataclass
class PushConfig:
    rules: list[PushRule] = field(default_factory=list)

    # HTTP/1.1 requests pass straight through, so a static site stays one (the response
    # cache serves HTTP/1.1 only)
    keeps_static: ClassVar[bool] = True


def _resource_path(d: Dispenser, text: str) -> str:
    if not text.startswith("/") or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise d.err(f"push: resource {text!r} must be a path starting with /")
    return text


# fields a pushed request may not carry (Caddy v1's validateHeader, after Go's http2 rules)
FORBIDDEN = ("content-length", "content-encoding", "trailer", "te", "expect", "host")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(d: Dispenser, name: str) -> str:
    if name.startswith(":") or not _TOKEN.match(name):
        raise d.err(f"push: {name!r} is not a header field name")
    if name.lower() in FORBIDDEN:
        raise d.err(f"push: a pushed request cannot carry {name}")
    return name


def parse(d: Dispenser, site: Site) -> PushConfig:
    """As Caddy v1: `push` alone is a rule for / (push only what Link headers name), a PATH
    alone a rule with no resources of its own; resources come after the PATH or one per line
    of the block, and `method` / `header` in the block apply to every resource of the line."""
    config = PushConfig()
    by_path: dict[str, PushRule] = {}
    while d.next():
        args = d.remaining_args()
        resources = [_resource_path(d, res) for res in args[1:]]
        method = "GET"
        headers: list[tuple[str, str]] = []
        for _ in d.block():
            option = d.val()
            more = d.remaining_args()
            if option == "method":
                if len(more) != 1:
                    raise d.arg_err()
                method = more[0].upper()
                if method not in ("GET", "HEAD"):
                    raise d.err(f"push: method {more[0]!r} (expecting GET or HEAD)")
            elif option == "header":
                if len(more) != 2:
                    raise d.arg_err()
                headers.append((_header_name(d, more[0]), more[1]))
            elif option.startswith("/"):
                if more:
                    raise d.err("push: one resource per line in the block")
                resources.append(_resource_path(d, option))
            else:
                raise d.err(
                    f"unknown push option {option!r} (expecting method, header or a resource path)"
                )
        path = clamp_path(args[0]) if args else "/"
        rule = by_path.get(path)
        if rule is None:
            rule = by_path[path] = PushRule(path)
            config.rules.append(rule)
        rule.resources.extend(PushResource(res, method, list(headers)) for res in resources)
    return config


def _matches(request_path: str, rule: str, index_files: list[str]) -> bool:
    if request_path.startswith(rule):
        return True
    # a folder request matches a rule for its index file (Caddy v1 looked the file up)
    return request_path.endswith("/") and any(request_path + i == rule for i in index_files)


def preload_links(values: list[str]) -> list[str]:
    """The URLs of `Link: <URL>; rel=preload` values that do not say nopush (local paths)."""
    out: list[str] = []
    for value in values:
        for link in value.split(","):
            m = _LINK.match(link)
            if not m:
                continue
            params = [p.strip().lower() for p in (m.group(2) or "").split(";")]
            if "nopush" in params or not any(p.replace('"', "") == "rel=preload" for p in params):
                continue
            url = m.group(1).strip()
            if url.startswith("/") and not url.startswith("//"):
                out.append(url)
    return out


class PushHandler:
    def __init__(self, config: PushConfig, next: Handler, site: Site) -> None:
        self.rules = config.rules
        self.next = next
        self.index_files = list(site.index_files)

    def __call__(self, request: Request, /) -> HandlerResult:
        pusher = current_pusher()
        if pusher is None or PUSHED_VAR in request.vars:
            return self.next(request)
        fields = [(h, v) for h in FORWARDED if (v := request.headers.get(h)) is not None]
        going = True
        for rule in self.rules:
            if not going:
                break
            if _matches(request.path, rule.path, self.index_files):
                for res in rule.resources:
                    if not pusher(res.path, res.method, fields + res.headers):
                        going = False
                        break
        result = self.next(request)
        if not going:
            return result
        if isinstance(result, Response):
            _push_links(pusher, fields, result)
            return result
        return self._later(pusher, fields, result)

    async def _later(self, pusher: Pusher, fields: list[tuple[str, str]], result: Any) -> Any:
        response = await result
        if isinstance(response, Response):
            _push_links(pusher, fields, response)
        return response


def _push_links(pusher: Pusher, fields: list[tuple[str, str]], response: Response) -> None:
    values = response.headers.get_all("link") if response.headers else []
    for url in preload_links(values)[:MAX_LINK_PUSHES]:
        if not pusher(url, "GET", fields):
            break


def build(config: PushConfig, next: Handler, site: Site) -> Handler:
    return PushHandler(config, next, site)


register("push", parse, build)
