"""A proxy block made ready to serve (Route): which requests it takes (the FROM prefix unless
an `except` path matches, all canonical), the upstreams it serves over now (UpstreamSet,
following a service's tasks), and passive failure marking kept across sets.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.lb.pick import Picker, Ticket
from meshkit.web.message import Request
from meshkit.web.proxy.client import Deadlines, Pool, UpstreamError, UpstreamTimeout
from meshkit.web.proxy.heads import Heads
from meshkit.web.proxy.rules import ProxyRule, scope
from meshkit.web.proxy.services import ServiceDirectory, expand
from meshkit.web.proxy.upstream import Upstream

__all__ = ["Route", "UpstreamSet", "make_route"]

log = logging.getLogger(__name__)


def _ssl_context(insecure: bool, ca_files: list[str] | None = None) -> ssl.SSLContext:
    """The TLS client context of a block's https upstreams: the system's CAs, or only those
    of `ca_certificates` (as v1's own CA pool replaced the system's)."""
    if ca_files:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks names; no system CAs
        for path in ca_files:
            ctx.load_verify_locations(cafile=path)
        return ctx
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class UpstreamSet:
    """The upstreams a block serves over at one moment, with their pools, the picker over
    them and the request heads made for them. A block whose upstreams follow a service gets
    a new set at every change; a request keeps the set it picked from (its ticket's indexes
    are that set's), so a change never mixes two sets in one exchange."""

    __slots__ = ("heads", "hosts", "names", "picker", "pools", "upstreams")

    def __init__(self, upstreams: list[Upstream], pools: list[Pool], picker: Picker | None):
        self.upstreams = upstreams
        self.pools = pools
        self.picker = picker  # None when there is no upstream at all (a service with no task)
        # `Host: ...\r\n` per upstream (transparent sends the client's Host instead)
        self.hosts = [f"Host: {u.host_header}\r\n" for u in upstreams]
        self.names = [u.name for u in upstreams]
        # request heads by everything they are made of (see Heads.head_for)
        self.heads: dict[tuple[Any, ...], tuple[bytes, str | None]] = {}


class Route:
    """A parsed rule made ready to serve: its current UpstreamSet, its header rules, and
    what a new set inherits (health-check verdicts, passive failures)."""

    def __init__(self, rule: ProxyRule, directory: ServiceDirectory | None = None) -> None:
        self.rule = rule
        # matched against the canonical request path: `/api/./private` or `/api//private`
        # in a Caddyfile must mean `/api/private`, or an `except` would never match
        self.from_path = scope(rule.from_path)
        self.excepts = [scope(e) for e in rule.except_paths]
        self.templates = rule.upstreams
        self.directory = directory
        self.dynamic = any(u.scheme == "service" for u in rule.upstreams)
        if self.dynamic and directory is None:
            raise MeshkitError(
                f"proxy {rule.from_path}: service:// upstreams need the web server to run"
                " inside a node agent (meshkit node init --web)"
            )
        self.ssl_context = None
        if any(u.tls for u in rule.upstreams):
            self.ssl_context = _ssl_context(rule.insecure_skip_verify, rule.ca_certificates)
        self.deadlines = Deadlines()
        self.socket_for = directory.socket_for if directory is not None else None
        # what the health check said of upstreams now down, and the expiry times of the
        # passive failures of each: a new set starts from them
        self.unhealthy: set[Upstream] = set()
        self.fails: dict[Upstream, list[float]] = {}
        # told when the set changes (a health check probes newcomers at once)
        self.on_change: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.set = self._make_set(self._current(), None, 0.0)
        self.header_name = rule.policy_header
        self.heads = Heads(rule)  # the header rules, both ways

    # ---- the upstream set ---------------------------------------------------------------

    def _current(self) -> list[Upstream]:
        if not self.dynamic:
            return list(self.templates)
        assert self.directory is not None
        upstreams, bad = expand(self.templates, self.directory.endpoints)
        for complaint in bad:
            log.warning("proxy %s: %s", self.from_path, complaint)
        return upstreams

    def _make_set(
        self, upstreams: list[Upstream], old: UpstreamSet | None, now: float
    ) -> UpstreamSet:
        rule = self.rule
        kept: dict[Upstream, Pool] = {}
        if old is not None:
            kept = dict(zip(old.upstreams, old.pools, strict=True))
        pools = []
        for u in upstreams:
            pool = kept.pop(u, None)  # an upstream that stays keeps its connections
            if pool is None:
                pool = Pool(
                    u,
                    rule.keepalive,
                    rule.timeout,
                    self.ssl_context,
                    self.deadlines,
                    self.socket_for,
                    rule.fallback_delay,
                )
            pools.append(pool)
        for gone in kept.values():
            gone.retire()
        picker = None
        if upstreams:
            picker = Picker(
                len(upstreams),
                rule.policy,
                max_conns=rule.max_conns,
                max_fails=rule.max_fails,
                fail_timeout=rule.fail_timeout,
            )
            for i, u in enumerate(upstreams):
                if u in self.unhealthy:
                    picker.set_healthy(i, False)
                for until in self.fails.get(u, ()):
                    if until > now:
                        picker.fail(i, until - rule.fail_timeout)
        return UpstreamSet(upstreams, pools, picker)

    def refresh(self, now: float) -> bool:
        """Follow the services' tasks as the directory has them now; whether the set changed.
        An upstream that left gets no new request, and its idle connections are closed."""
        upstreams = self._current()
        old = self.set
        if upstreams == old.upstreams:
            return False
        present = set(upstreams)
        self.unhealthy &= present
        for u in [u for u in self.fails if u not in present]:
            del self.fails[u]
        self.set = self._make_set(upstreams, old, now)
        left = [u.name for u in old.upstreams if u not in present]
        joined = [u.name for u in upstreams if u not in set(old.upstreams)]
        log.info(
            "proxy %s: upstreams now %s (left: %s; joined: %s)",
            self.from_path,
            ", ".join(u.name for u in upstreams) or "none",
            ", ".join(left) or "none",
            ", ".join(joined) or "none",
        )
        if self.on_change is not None:
            self.on_change()
        return True

    def set_healthy(self, upstream: Upstream, healthy: bool) -> None:
        """What the active health check found of `upstream` (kept across sets)."""
        if healthy:
            self.unhealthy.discard(upstream)
        else:
            self.unhealthy.add(upstream)
        current = self.set
        if current.picker is not None and upstream in current.upstreams:
            current.picker.set_healthy(current.upstreams.index(upstream), healthy)

    def upstreams_now(self) -> list[Upstream]:
        return self.set.upstreams

    async def start(self) -> None:
        """Background.start: follow the directory (a block with service:// upstreams)."""
        if self.dynamic and self._unsubscribe is None:
            assert self.directory is not None
            loop = asyncio.get_running_loop()
            self._unsubscribe = self.directory.subscribe(lambda: self._changed(loop))
            for t in self.templates:
                if t.scheme == "service" and not self.directory.known(t.host):
                    log.warning(
                        "proxy %s: no service %r (yet): 502 until it has an up task",
                        self.from_path,
                        t.host,
                    )
            self.refresh(loop.time())  # what changed between the build and now

    def _changed(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.refresh(loop.time())
        except Exception:  # the directory's callback must not break on our account
            log.exception("proxy %s: following the services failed", self.from_path)

    async def stop(self) -> None:
        """Background.stop: the block is no longer served (reload, stop): stop following,
        and let its kept connections go (those in use close when their exchange ends)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        for pool in self.set.pools:
            pool.retire()

    def describe_empty(self) -> str:
        """Why a block has no upstream at all (only a service's can have none)."""
        names = [t.host for t in self.templates if t.scheme == "service"]
        directory = self.directory
        unknown = [n for n in names if directory is not None and not directory.known(n)]
        if unknown:
            return "no such service: " + ", ".join(unknown)
        return "no up task of service " + ", ".join(names)

    # ---- requests -----------------------------------------------------------------------

    def matches(self, path: str) -> bool:
        if not path.startswith(self.from_path):
            return False
        return not self.excepts or all(not path.startswith(e) for e in self.excepts)

    def failed(
        self, uset: UpstreamSet, request: Request, ticket: Ticket, exc: UpstreamError, now: float
    ) -> int:
        """Account for and log a failed exchange; the status it means (502 or 504)."""
        assert uset.picker is not None
        uset.picker.release(ticket)
        self.fail(uset, ticket.index, now)
        log.error(
            "proxy to %s for %s %s failed: %s",
            uset.names[ticket.index],
            request.method,
            request.uri,
            exc,
        )
        return 504 if isinstance(exc, UpstreamTimeout) else 502

    def fail(self, uset: UpstreamSet, index: int, now: float) -> None:
        """A passive failure of upstream `index` of `uset`: counted in the set in use now
        (the upstream's index there may differ) and kept for the sets to come."""
        fail_timeout = self.rule.fail_timeout
        if fail_timeout <= 0:
            return
        upstream = uset.upstreams[index]
        if self.dynamic:
            kept = [t for t in self.fails.get(upstream, ()) if t > now]
            kept.append(now + fail_timeout)
            self.fails[upstream] = kept
        current = self.set
        if current is uset:
            assert uset.picker is not None
            uset.picker.fail(index, now)
        elif current.picker is not None and upstream in current.upstreams:
            current.picker.fail(current.upstreams.index(upstream), now)


def make_route(rule: ProxyRule, directory: ServiceDirectory | None = None) -> Route:
    """A block ready to serve; MeshkitError when it has service:// upstreams and no
    directory to follow them with."""
    return Route(rule, directory)
