"""Dialling an upstream by name: SRV locators (`srv://NAME`, `srv+https://NAME`) and
`fallback_delay` (RFC 6555 "happy eyeballs" between the two address families of a name).

SRV: as in Caddy v1 the records are looked up when a connection is dialled (kept connections
are reused without a lookup), with the system's resolver configuration (/etc/resolv.conf,
read by dnspython) and answers kept for their TTL, so a change of the records is seen by the
next connection dialled after the TTL runs out. The targets are ordered as RFC 2782 (and Go's
LookupSRV, which v1 used) say: lowest priority first, and within one priority a random order
weighted by the records' weights. v1 dialled only the first; here the next target is tried
when one cannot be reached. The target names are resolved by the system (getaddrinfo).

Happy eyeballs: a name with addresses of both families is dialled on the first family's
addresses; when that has not connected after `fallback_delay` (or has failed), the other
family's addresses are dialled too, and the first connection made wins (Go's net.Dialer with
FallbackDelay, which v1 configured; 0 means Go's default of 300 ms, a negative value turns the
race off). uvloop's create_connection has no happy_eyeballs_delay, hence this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_FALLBACK_DELAY", "SrvError", "SrvRecord", "dial", "lookup_srv", "srv_order"]

DEFAULT_FALLBACK_DELAY = 0.3  # Go's net.Dialer default
MIN_TTL = 1.0  # an answer with TTL 0 is still kept this long: a burst of dials asks once
MAX_TTL = 300.0  # and one with a huge TTL is asked again after this long

Factory = Callable[[], asyncio.Protocol]


class SrvError(Exception):
    """The SRV records of a locator could not be had (the message says why)."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    target: str  # without the trailing dot
    port: int


def srv_order(records: list[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782's order: by priority, then within each priority a weighted random order
    (a record of weight 0 has a small chance to go first, as the RFC asks)."""
    rng = rng or random.Random()
    out: list[SrvRecord] = []
    for prio in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == prio]
        while group:
            total = sum(r.weight for r in group)
            if total == 0:
                rng.shuffle(group)
                out.extend(group)
                break
            point = rng.randint(1, total)
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= point:
                    out.append(group.pop(i))
                    break
    return out


class _SrvCache:
    """Answers by name, each until its TTL runs out (one resolver, made on first use so that
    the resolver configuration is read when a locator is first dialled)."""

    def __init__(self) -> None:
        self.resolver: Any = None
        self.answers: dict[str, tuple[float, list[SrvRecord]]] = {}
        self.pending: dict[str, asyncio.Future[list[SrvRecord]]] = {}

    async def lookup(self, name: str) -> list[SrvRecord]:
        now = time.monotonic()
        known = self.answers.get(name)
        if known is not None and known[0] > now:
            return known[1]
        waiting = self.pending.get(name)
        if waiting is not None:  # one question in flight per name
            return await asyncio.shield(waiting)
        fut: asyncio.Future[list[SrvRecord]] = asyncio.get_running_loop().create_future()
        self.pending[name] = fut
        try:
            records, ttl = await self._ask(name)
            self.answers[name] = (time.monotonic() + min(max(ttl, MIN_TTL), MAX_TTL), records)
            fut.set_result(records)
            return records
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self.pending[name]

    async def _ask(self, name: str) -> tuple[list[SrvRecord], float]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        if self.resolver is None:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                raise SrvError(f"no DNS resolver configured (/etc/resolv.conf): {exc}") from None
        try:
            answer = await self.resolver.resolve(name + ".", "SRV", search=False)
        except dns.resolver.NXDOMAIN:
            raise SrvError(f"no SRV records for {name} (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise SrvError(f"no SRV records for {name}") from None
        except dns.exception.DNSException as exc:
            raise SrvError(f"looking up the SRV records of {name} failed: {exc}") from None
        records = [
            SrvRecord(r.priority, r.weight, r.target.to_text(omit_final_dot=True), r.port)
            for r in answer
            if r.target.to_text() != "."  # "." means: the service is not offered here
        ]
        if not records:
            raise SrvError(f"the SRV records of {name} say the service is not offered")
        return records, float(answer.rrset.ttl if answer.rrset is not None else 0)


_CACHE = _SrvCache()


async def lookup_srv(name: str) -> list[SrvRecord]:
    """The SRV records of `name` in RFC 2782 order (SrvError when there are none)."""
    return srv_order(await _CACHE.lookup(name))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def dial(
    factory: Factory,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    fallback_delay: float,
) -> asyncio.Protocol:
    """Connect to host:port (TLS with `tls`, checked against `host`), racing the two address
    families of a name as happy eyeballs does. Raises OSError or ssl.SSLError."""
    loop = asyncio.get_running_loop()
    hostname = host if tls is not None else None
    if _is_ip(host) or fallback_delay < 0:
        _, proto = await loop.create_connection(
            factory, host, port, ssl=tls, server_hostname=hostname
        )
        return proto
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} has no address")
    first = infos[0][0]
    primary = [i[4] for i in infos if i[0] == first]
    fallback = [i[4] for i in infos if i[0] != first]
    delay = fallback_delay or DEFAULT_FALLBACK_DELAY

    async def one_family(addrs: list[Any]) -> asyncio.Protocol:
        last: BaseException | None = None
        for addr in addrs:
            try:
                _, proto = await loop.create_connection(
                    factory, addr[0], addr[1], ssl=tls, server_hostname=hostname
                )
                return proto
            except (OSError, ssl.SSLError) as exc:
                last = exc
        assert last is not None
        raise last

    if not fallback:
        return await one_family(primary)
    return await _race(one_family(primary), lambda: one_family(fallback), delay)


async def _race(first: Any, second: Callable[[], Any], delay: float) -> asyncio.Protocol:
    """Run `first`; start `second()` after `delay` or when `first` fails; the first success
    wins and the other attempt is cancelled (a connection it made anyway is closed)."""
    a: asyncio.Task[asyncio.Protocol] = asyncio.ensure_future(first)
    b: asyncio.Task[asyncio.Protocol] | None = None
    try:
        done, _ = await asyncio.wait({a}, timeout=delay)
        if a in done and a.exception() is None:
            return a.result()
        b = asyncio.ensure_future(second())
        pending: set[asyncio.Task[asyncio.Protocol]] = {b} if a.done() else {a, b}
        errors: list[BaseException] = [a.exception()] if a.done() else []  # type: ignore[list-item]
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is None:
                    return t.result()
                errors.append(exc)
        raise errors[-1]
    finally:
        for left in (a, b):
            if left is not None and not left.done():
                left.cancel()
                left.add_done_callback(_close_late)


def _close_late(task: asyncio.Task[asyncio.Protocol]) -> None:
    """A losing attempt that connected after all: let its connection go."""
    if task.cancelled() or task.exception() is not None:
        return
    transport = getattr(task.result(), "transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
