"""proxy: reverse proxy and load balancer (Caddy v1).

    proxy FROM TO... {
        policy random|least_conn|round_robin|ip_hash|first|uri_hash|header NAME
        fail_timeout D; max_fails N; max_conns N; try_duration D; try_interval D
        health_check PATH; health_check_interval D; health_check_timeout D
        health_check_port P; health_check_contains STR
        header_upstream NAME VALUE (+NAME adds, -NAME removes); header_downstream ...
        keepalive N; timeout D; without PREFIX; except PATHS...; upstream ADDR
        transparent; websocket; insecure_skip_verify
    }

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

from dataclasses import dataclass, field

from meshkit.base import durations
from meshkit.lb.pick import POLICIES
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler
from meshkit.web.proxy.handler import HeaderOp, ProxyRule, build_handler, make_route
from meshkit.web.proxy.health import HealthChecker
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
    args = d.remaining_args()
    if not args:
        raise d.arg_err()
    name = args[0]
    if name.startswith("-"):
        if len(args) != 1:
            raise d.arg_err()
        return HeaderOp("del", name[1:])
    if len(args) != 2:
        raise d.arg_err()
    if name.startswith("+"):
        return HeaderOp("add", name[1:], args[1])
    return HeaderOp("set", name, args[1])


NO_DIRECTORY = (
    "service:// upstreams need the web server to run inside a node agent (meshkit node init --web)"
)


def _add_upstreams(d: Dispenser, site: Site, rule: ProxyRule, texts: list[str]) -> None:
    for text in texts:
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
        for _ in d.block():
            _block_line(d, site, rule)
        if not rule.upstreams:
            raise d.err(f"proxy {rule.from_path}: no upstream given")
        if rule.health_check_port and all(u.scheme == "unix" for u in rule.upstreams):
            raise d.err("health_check_port has no meaning for unix upstreams")
        for other in config.rules:
            if other.from_path == rule.from_path:
                raise d.err(f"duplicate proxy block for {rule.from_path!r}")
        config.rules.append(rule)
    return config


def _block_line(d: Dispenser, site: Site, rule: ProxyRule) -> None:
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
    elif name in ("health_check_interval", "health_check_timeout"):
        value = parse_duration(d, name, _one(d))
        if value <= 0:
            raise d.err(f"{name} must be above 0")
        setattr(rule, name, value)
    elif name == "max_fails":
        rule.max_fails = _int(d, _one(d), "max_fails", 1)
    elif name == "max_conns":
        rule.max_conns = _int(d, _one(d), "max_conns")
    elif name == "keepalive":
        rule.keepalive = _int(d, _one(d), "keepalive")
    elif name == "health_check":
        path = _one(d)
        rule.health_check = path if path.startswith("/") else "/" + path
    elif name == "health_check_port":
        rule.health_check_port = _int(d, _one(d), "health_check_port", 1, 65535)
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
        texts = d.remaining_args()
        if not texts:
            raise d.arg_err()
        _add_upstreams(d, site, rule, texts)
    elif name in ("transparent", "websocket", "insecure_skip_verify"):
        # no arguments: a token after one on its line is the next option, as in Caddy
        setattr(rule, name, True)
    else:
        raise d.err(f"unknown proxy property {name!r}")


def build(config: ProxyConfig, next: Handler, site: Site) -> Handler:
    routes = []
    for rule in config.rules:
        route = make_route(rule, site.services)
        routes.append(route)
        if rule.health_check:
            checker = HealthChecker(
                route,
                rule.health_check,
                rule.health_check_interval,
                rule.health_check_timeout,
                rule.health_check_port,
                rule.health_check_contains,
                route.socket_for,
            )
            route.on_change = checker.poke
            site.background.append(checker)
        # the block follows its services and lets its connections go when it is replaced
        site.background.append(route)
    return build_handler(routes, next)


register("proxy", parse, build)
