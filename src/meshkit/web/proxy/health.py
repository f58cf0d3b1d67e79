"""Active health checks of a proxy block's upstreams, run beside the server (a Background).

Every `health_check_interval` each upstream gets `GET health_check` (on `health_check_port`
if set) over a fresh connection; a 2xx or 3xx answer (whose body holds
`health_check_contains`, if set) within `health_check_timeout` is healthy. Each result goes
through a meshkit.lb.health.HealthState (rise 1, fall 1: Caddy v1 flips on one result), and a
flip tells the block (Checked.set_healthy), so a down upstream comes back as soon as a check
passes again.

A probe carries what the block's requests carry where it can be known without a request
(Caddy v1 #1556: health checks ignored them): the Host the block sends (`transparent` or
`header_upstream Host {host}` give the site's host name, as v1 did; a literal
`header_upstream Host NAME` gives NAME; else the upstream's own), the other `header_upstream`
fields whose values are literal or use only `{host}`, and the block's TLS settings
(`insecure_skip_verify`, `ca_certificates`) for https upstreams.

An SRV locator is checked as v1 checked it: each target its records name is probed, and the
locator is healthy while any target is.

The upstreams checked are the block's as they are at each round: those of a service follow
its tasks, and a change starts a round at once (a task that joins is probed without waiting
out the interval; the state of one that left is forgotten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from meshkit.lb.health import HealthState
from meshkit.web.proxy.client import Pool, UpstreamError, exchange
from meshkit.web.proxy.dial import SrvError, lookup_srv
from meshkit.web.proxy.rules import ProxyRule
from meshkit.web.proxy.upstream import Upstream

__all__ = ["Checked", "HealthChecker", "probe_fields"]


def probe_fields(rule: ProxyRule, site_host: str) -> tuple[str, list[tuple[str, str]]]:
    """(Host to send, "" for the upstream's own; other fields) of a block's probes."""
    host = site_host if rule.transparent and site_host else ""
    fields: list[tuple[str, str]] = []
    for op in rule.header_upstream:
        if op.op not in ("set", "add") or op.name.lower() in _NOT_SENT:
            continue
        value = op.value.replace("{host}", site_host) if site_host else op.value
        if "{" in value or not value:
            continue  # needs a request (or no site host): not known to a probe
        if op.name.lower() == "host":
            host = value
        elif op.op == "set":
            fields = [f for f in fields if f[0].lower() != op.name.lower()]
            fields.append((op.name, value))
        else:
            fields.append((op.name, value))
    return host, fields


# set by the probe itself
_NOT_SENT = frozenset(("connection", "upgrade", "content-length", "transfer-encoding"))

log = logging.getLogger(__name__)


class Checked(Protocol):
    """What a health checker checks: a proxy block (meshkit.web.proxy.handler)."""

    def upstreams_now(self) -> list[Upstream]: ...

    def set_healthy(self, upstream: Upstream, healthy: bool) -> None: ...


class HealthChecker:
    def __init__(
        self,
        checked: Checked,
        path: str,
        interval: float,
        timeout: float,
        port: int = 0,
        contains: str = "",
        socket_for: Callable[[str, int], socket.socket] | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "",
        fields: list[tuple[str, str]] | None = None,
        fallback_delay: float = 0.0,
    ) -> None:
        self.checked = checked
        self.ssl_context = ssl_context
        self.host = host  # "" : each upstream's own
        self.fields = "".join(f"{n}: {v}\r\n" for n, v in fields or ())
        self.fallback_delay = fallback_delay
        self.path = path if path.startswith("/") else "/" + path
        self.interval = interval
        self.timeout = timeout
        self.port = port
        self.contains = contains.encode()
        self.socket_for = socket_for
        self.states: dict[Upstream, HealthState] = {}
        self.pools: dict[Upstream, Pool] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    async def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """The upstreams changed: check them now rather than after the interval."""
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            await self.check_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)

    async def check_all(self) -> None:
        """One round: every upstream the block has now."""
        upstreams = self.checked.upstreams_now()
        present = set(upstreams)
        for gone in [u for u in self.states if u not in present]:
            del self.states[gone]
            del self.pools[gone]
        await asyncio.gather(*(self.check(u) for u in upstreams))

    def _pool(self, up: Upstream) -> Pool:
        pool = self.pools.get(up)
        if pool is None:
            target = replace(up, port=self.port) if self.port and up.scheme != "unix" else up
            pool = self.pools[up] = Pool(
                target,
                0,
                self.timeout,
                self.ssl_context,
                socket_for=self.socket_for,
                fallback_delay=self.fallback_delay,
            )
            self.states[up] = HealthState(1, 1)
        return pool

    async def check(self, upstream: Upstream) -> bool:
        """Probe one upstream now and apply the result; whether it was healthy."""
        pool = self._pool(upstream)
        up = pool.upstream
        if up.is_srv:
            ok, why = await self._probe_srv(up)
        else:
            ok, why = await self._probe(pool)
        state = self.states.get(upstream)
        if state is None:  # left while it was being probed
            return ok
        flip = state.record(ok)
        if flip is not None:
            self.checked.set_healthy(upstream, flip)
            verdict = "up" if flip else "down"
            log.warning("proxy health check: %s is %s (%s)", up.name, verdict, why)
        return ok

    async def _probe(self, pool: Pool) -> tuple[bool, str]:
        """One GET on a fresh connection: (healthy, why)."""
        up = pool.upstream
        head = (
            f"GET {up.base.rstrip('/')}{self.path} HTTP/1.1\r\n"
            f"Host: {self.host or up.host_header}\r\n{self.fields}"
            "User-Agent: meshkit-health-check\r\nConnection: close\r\n\r\n"
        ).encode("latin-1", "replace")
        try:
            reply = await exchange(pool, head, None, False, False, self.timeout, _ignore)
            body = reply.body
            if not isinstance(body, bytes):
                pieces = []
                async for piece in body:
                    pieces.append(piece)
                body = b"".join(pieces)
            ok = 200 <= reply.status < 400 and (not self.contains or self.contains in body)
            return (
                ok,
                f"status {reply.status}" if ok or reply.status >= 400 else "body lacks the text",
            )
        except UpstreamError as exc:
            return False, str(exc)
        except Exception as exc:  # a broken probe must not end the checks
            return False, f"{type(exc).__name__}: {exc}"

    async def _probe_srv(self, up: Upstream) -> tuple[bool, str]:
        """An SRV locator, as v1 checked it: every target of its records is probed, and it
        is healthy while any of them is (its records not found: unhealthy)."""
        try:
            records = await lookup_srv(up.host)
        except SrvError as exc:
            return False, str(exc)
        scheme = "https" if up.tls else "http"
        pools = [
            Pool(
                Upstream(scheme, r.target, r.port, base=up.base),
                0,
                self.timeout,
                self.ssl_context,
                fallback_delay=self.fallback_delay,
            )
            for r in records
        ]
        results = await asyncio.gather(*(self._probe(p) for p in pools))
        good = [p.upstream.name for p, (ok, _) in zip(pools, results, strict=True) if ok]
        if good:
            return True, "healthy: " + ", ".join(good)
        return False, "; ".join(
            f"{p.upstream.name}: {why}" for p, (_, why) in zip(pools, results, strict=True)
        )


def _ignore(ok: bool) -> None:
    return None
