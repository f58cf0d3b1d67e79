"""Backend health for the ingress: active TCP probes, passive failures (refused connects, ICMP
for UDP), flips recorded by ``HealthState`` and applied to every listener's table, and a trial
return for a backend that nothing probes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from meshkit.base.netns import NetnsRef, entered
from meshkit.l4.config import IngressConfig
from meshkit.l4.endpoints import Endpoint
from meshkit.l4.listeners import UDP
from meshkit.lb.health import HealthState

if TYPE_CHECKING:
    from meshkit.l4.relay import RelayLike

log = logging.getLogger("meshkit.ingress")


class BackendHealth:
    """The health part of ``Ingress`` (a mixin: it works on the ingress's own state)."""

    config: IngressConfig
    loop: asyncio.AbstractEventLoop
    backend_ns: NetnsRef | None
    relay: RelayLike
    endpoints: dict[tuple[str, int, str], Endpoint]
    stopping: bool

    def finish(self, finished: list[tuple[int, int, int, str]]) -> None:
        raise NotImplementedError  # Ingress.finish: a relay pair ended

    def passive_failure(self, ep: Endpoint, reason: str) -> None:
        ep.connect_failures += 1
        self.health_result(ep, False, reason)

    def health_result(self, ep: Endpoint, ok: bool, reason: str) -> None:
        if ep.removed:
            return
        flipped = ep.health.record(ok)
        if flipped is None:
            return
        if flipped:
            log.info("backend %s is up (%d good checks)", ep.name, self.config.rise)
        else:
            log.warning(
                "backend %s is down (%d failed checks, last: %s)", ep.name, self.config.fall, reason
            )
            if not self.probed(ep):
                # Nothing would ever bring it back: give it another chance after a while, as
                # Caddy's fail_timeout does; a backend still refusing goes down again.
                delay = self.config.fail_timeout
                log.info(
                    "backend %s gets another try in %gs (no active health check)", ep.name, delay
                )
                self.loop.call_later(delay, self.revive, ep)
        self.set_endpoint_up(ep, flipped)

    def probed(self, ep: Endpoint) -> bool:
        """Whether active probes watch this endpoint (TCP backends, with checks on)."""
        return self.config.health_interval > 0 and any(
            lst.publish.proto == "tcp" for lst, _ in ep.users
        )

    def revive(self, ep: Endpoint) -> None:
        if ep.removed or ep.health.up or self.stopping:
            return
        ep.health = HealthState(self.config.rise, self.config.fall, up=True)
        log.info("backend %s is back in rotation on trial", ep.name)
        self.set_endpoint_up(ep, True)

    def set_endpoint_up(self, ep: Endpoint, up: bool) -> None:
        for lst, bid in ep.users:
            if not up:
                # Served pairs first: the relay releases their flows as it closes them.
                self.finish(self.relay.close_backend(lst.table, bid))
            gone = lst.table.set_up(bid, up)
            for key in gone:
                if key[0] == UDP:
                    lst.drop_udp_flow(key)
                    continue
                pair = lst.pair_of.get(key)
                if pair is not None:
                    done = self.relay.close(pair)
                    if done is not None:
                        self.finish([done])

    async def probe_forever(self) -> None:
        while not self.stopping:
            eps = [ep for ep in self.endpoints.values() if self.probed(ep)]
            await asyncio.gather(*(self.probe(ep) for ep in eps))
            await asyncio.sleep(self.config.health_interval)

    async def probe(self, ep: Endpoint) -> None:
        with entered(self.backend_ns):
            sock = socket.socket(ep.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        reason = ""
        try:
            await asyncio.wait_for(
                self.loop.sock_connect(sock, (ep.ip, ep.port)), self.config.health_timeout
            )
            ok = True
        except asyncio.TimeoutError:
            ok, reason = False, f"no answer within {self.config.health_timeout:g}s"
        except OSError as exc:
            ok, reason = False, exc.strerror or str(exc)
        finally:
            sock.close()
        self.health_result(ep, ok, reason)
