"""proxy: reverse proxy and load balancer (Caddy v1).

    proxy FROM TO... {
        policy random|least_conn|round_robin|ip_hash|first|uri_hash|header NAME
        fail_timeout D; max_fails N; max_conns N; try_duration D; try_interval D
        health_check PATH; health_check_interval D; health_check_timeout D
        health_check_port P; health_check_contains STR
        header_upstream NAME VALUE (+NAME adds, -NAME removes; NAME REGEX REPLACEMENT
        replaces); header_downstream the same ({<Name} reads the upstream's answer)
        keepalive N; timeout D; fallback_delay D; without PREFIX; except PATHS...
        upstream ADDR; transparent; websocket; insecure_skip_verify; ca_certificates FILE...
    }

An upstream may carry a base path and query (`http://host:8001/base`: put before the
request's, as v1 does), or be an SRV locator, `srv://NAME` or `srv+https://NAME` (alone in its
block, as in v1; looked up when dialling: meshkit.web.proxy.dial). Without `websocket` a
client's Upgrade is not passed on (v1 drops Connection and Upgrade as hop-by-hop fields).

An upstream may be `service://NAME:PORT`: the up tasks of a swarm service, followed live
(meshkit.web.proxy.services), when the server runs inside a node agent (`meshkit node init
--web Caddyfile`); plain `meshkit web` refuses it at the line that names it.

Defaults are Caddy v1's (policy random, fail_timeout 0 = passive checks off, max_fails 1,
try_duration 0, try_interval 250ms, health_check_interval 30s, health_check_timeout 60s,
timeout 30s) except keepalive: 128 idle connections per upstream rather than v1's 2, since a
busy proxy otherwise opens (and closes) a connection per request beyond that many in
flight. Several blocks may share a site; the longest FROM prefix wins. The work is in
meshkit.web.proxy.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field

from meshkit.base import durations
from meshkit.lb.pick import POLICIES
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler
from meshkit.web.proxy.handler import HeaderOp, ProxyRule, build_handler, make_route
from meshkit.web.proxy.headerops import compile_regex
from meshkit.web.proxy.health import HealthChecker, probe_fields
from meshkit.web.proxy.upstream import parse_upstreams
from meshkit.web.site import Site


@dataclass
class ProxyConfig:
    rules: list[ProxyRule] = field(default_factory=list)


def parse_duration(d: Dispenser, name: str, text: str) -> float:
    """A Go duration (`250ms`, `1m30s`, `0`) in seconds, or a Caddyfile error at file:line."""
    try:
        return durations.parse_duration(text, name)
    except durations.DurationError as exc:
        raise d.err(str(exc)) from None


def _int(d: Dispenser, text: str, what: str, low: int = 0, high: int = 1 << 31) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise d.err(f"invalid {what} {text!r} (expecting a whole number {low}-{high})")
    return int(text)


def _one(d: Dispenser) -> str:
    if not d.next_arg():
        raise d.arg_err()
    return d.val()


def _header_op(d: Dispenser) -> HeaderOp:
    """Caddy v1's `c.Args(&header, &value, &replaced)`: three arguments are a replacement
    (not of a `+` or `-` field); else `NAME VALUE` sets, `+NAME VALUE` adds, `-NAME [VALUE]`
    removes. What follows the third argument on the line is the next option."""
    got: list[str] = []
    while len(got) < 3 and d.next_arg():
        got.append(d.val())
    if len(got) == 3:
        name, regex, to = got
        if name.startswith(("-", "+")):
            raise d.err(f"a replacement ({name} REGEX REPLACEMENT) cannot add or remove a field")
        try:
            compile_regex(regex)
        except re.error as exc:
            raise d.err(f"invalid regular expression {regex!r}: {exc}") from None
        return HeaderOp("replace", name, to, regex)
    if not got or (len(got) == 1 and not got[0].startswith("-")):
        raise d.arg_err()
    name = got[0]
    if name.startswith("-"):
        return HeaderOp("del", name[1:])
    if name.startswith("+"):
        return HeaderOp("add", name[1:], got[1])
    return HeaderOp("set", name, got[1])


NO_DIRECTORY = (
    "service:// upstreams need the web server to run inside a node agent (meshkit node init --web)"
)


def _add_upstreams(d: Dispenser, site: Site, rule: ProxyRule, texts: list[str]) -> None:
    for text in texts:
        srv = text.startswith(("srv://", "srv+https://"))
        # Caddy v1's checks and words
        if rule.upstreams and any(u.is_srv for u in rule.upstreams):
            raise d.err("only one upstream is supported when using SRV locator")
        if srv and rule.upstreams:
            raise d.err("service locator upstreams can not be mixed with host names")
        try:
            found = parse_upstreams(text)
        except ValueError as exc:
            raise d.err(str(exc)) from None
        if site.services is None and any(u.scheme == "service" for u in found):
            raise d.err(NO_DIRECTORY)
        rule.upstreams.extend(found)


def parse(d: Dispenser, site: Site) -> ProxyConfig:
    config = ProxyConfig()
    while d.next():
        args = d.remaining_args()
        if not args:
            raise d.arg_err()
        rule = ProxyRule(from_path=args[0], upstreams=[])
        _add_upstreams(d, site, rule, args[1:])
        has_srv = any(u.is_srv for u in rule.upstreams)
        for _ in d.block():
            _block_line(d, site, rule, has_srv)
            if rule.insecure_skip_verify and rule.ca_certificates:
                raise d.err(
                    "both insecure_skip_verify and ca_certificates cannot be set in the"
                    " proxy directive"
                )
        if not rule.upstreams:
            raise d.err(f"proxy {rule.from_path}: no upstream given")
        if rule.health_check_port and all(u.scheme == "unix" for u in rule.upstreams):
            raise d.err("health_check_port has no meaning for unix upstreams")
        for other in config.rules:
            if other.from_path == rule.from_path:
                raise d.err(f"duplicate proxy block for {rule.from_path!r}")
        config.rules.append(rule)
    return config


def _block_line(d: Dispenser, site: Site, rule: ProxyRule, has_srv: bool) -> None:
    name = d.val()
    if name == "policy":
        policy = _one(d)
        if policy not in POLICIES:
            raise d.err(f"unknown policy {policy!r} (expecting one of {', '.join(POLICIES)})")
        rule.policy = policy
        # Caddy v1 reads one optional argument after any policy (the header policy's name)
        arg = d.val() if d.next_arg() else None
        if policy == "header":
            if arg is None:
                raise d.arg_err()
            rule.policy_header = arg
    elif name in ("fail_timeout", "try_duration", "try_interval", "timeout"):
        setattr(rule, name, parse_duration(d, name, _one(d)))
    elif name == "fallback_delay":
        rule.fallback_delay = _signed_duration(d, name, _one(d))
    elif name in ("health_check_interval", "health_check_timeout"):
        value = parse_duration(d, name, _one(d))
        if value <= 0:
            raise d.err(f"{name} must be above 0")
        setattr(rule, name, value)
    elif name == "max_fails":
        text = _one(d)
        if text.lstrip("-").isdigit() and int(text) < 1:
            raise d.err("max_fails must be at least 1")  # v1's words
        rule.max_fails = _int(d, text, "max_fails", 1)
    elif name == "max_conns":
        rule.max_conns = _int(d, _one(d), "max_conns")
    elif name == "keepalive":
        rule.keepalive = _int(d, _one(d), "keepalive")
    elif name == "health_check":
        path = _one(d)
        rule.health_check = path if path.startswith("/") else "/" + path
    elif name == "health_check_port":
        text = _one(d)
        if has_srv:
            raise d.err("health_check_port directive is not allowed when upstream is SRV locator")
        rule.health_check_port = _int(d, text, "health_check_port", 1, 65535)
    elif name == "health_check_contains":
        rule.health_check_contains = _one(d)
    elif name == "header_upstream":
        rule.header_upstream.append(_header_op(d))
    elif name == "header_downstream":
        rule.header_downstream.append(_header_op(d))
    elif name == "without":
        rule.without = _one(d)
    elif name == "except":
        paths = d.remaining_args()
        if not paths:
            raise d.arg_err()
        rule.except_paths.extend(p if p.startswith("/") else "/" + p for p in paths)
    elif name == "upstream":
        # one address (v1's NextArg): a second token on the line is the next option
        text = _one(d)
        if has_srv:
            raise d.err("upstream directive is not supported when backend is service locator")
        _add_upstreams(d, site, rule, [text])
    elif name == "ca_certificates":
        files = d.remaining_args()
        if not files:
            raise d.arg_err()
        for path in dict.fromkeys(files):  # v1 adds each file once
            problem = check_ca_file(path)
            if problem:
                raise d.err(problem)
            rule.ca_certificates.append(path)
    elif name in ("transparent", "websocket", "insecure_skip_verify"):
        # no arguments: a token after one on its line is the next option, as in Caddy
        setattr(rule, name, True)
    elif name in REFUSED:
        raise d.err(REFUSED[name])
    else:
        raise d.err(f"unknown proxy property {name!r}")


# v1 proxy options meshkit does not take, and why
REFUSED = {
    "proxy_header": "proxy_header was renamed header_upstream in Caddy 0.9; write header_upstream",
}


def _signed_duration(d: Dispenser, name: str, text: str) -> float:
    """A Go duration that may be negative (fallback_delay: negative turns the race off)."""
    if text.startswith("-"):
        return -parse_duration(d, name, text[1:])
    return parse_duration(d, name, text)


def check_ca_file(path: str) -> str | None:
    """Why a ca_certificates file cannot be used (None when it can): it must be readable and
    hold at least one PEM certificate (v1's check, done when the Caddyfile is read)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CA_FILE + 1)
    except OSError as exc:
        return f"ca_certificates: cannot read {path!r}: {exc.strerror or exc}"
    if len(data) > MAX_CA_FILE:
        return f"ca_certificates: {path!r} is over {MAX_CA_FILE // 1024} KiB"
    text = data.decode("latin-1")
    if "-----BEGIN CERTIFICATE-----" not in text:
        return f"loading CA certificate {path!r}: no certificates were successfully parsed"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        return f"loading CA certificate {path!r}: {exc}"
    return None


MAX_CA_FILE = 4 << 20  # a bundle of every public CA is ~200 KiB


def build(config: ProxyConfig, next: Handler, site: Site) -> Handler:
    routes = []
    site_host = site.addresses[0].host if site.addresses else ""
    if site_host.startswith("*"):
        site_host = ""  # a wildcard names no host a probe could send
    for rule in config.rules:
        route = make_route(rule, site.services)
        routes.append(route)
        if rule.health_check:
            host, fields = probe_fields(rule, site_host)
            checker = HealthChecker(
                route,
                rule.health_check,
                rule.health_check_interval,
                rule.health_check_timeout,
                rule.health_check_port,
                rule.health_check_contains,
                route.socket_for,
                ssl_context=route.ssl_context,
                host=host,
                fields=fields,
                fallback_delay=rule.fallback_delay,
            )
            route.on_change = checker.poke
            site.background.append(checker)
        # the block follows its services and lets its connections go when it is replaced
        site.background.append(route)
    return build_handler(routes, next)


register("proxy", parse, build)
