"""Active health checks of a proxy block's upstreams, run beside the server (a Background).

Every `health_check_interval` each upstream gets `GET health_check` (on `health_check_port`
if set) over a fresh connection; a 2xx or 3xx answer (whose body holds
`health_check_contains`, if set) within `health_check_timeout` is healthy. Each result goes
through a meshkit.l4.health.HealthState (rise 1, fall 1: Caddy v1 flips on one result), and a
flip sets the upstream up or down in the block's Picker, so a down upstream comes back as soon
as a check passes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from meshkit.l4.health import HealthState
from meshkit.lb.pick import Picker
from meshkit.web.proxy.client import Pool, UpstreamError, exchange
from meshkit.web.proxy.upstream import Upstream

__all__ = ["HealthChecker"]

log = logging.getLogger("meshkit.web")


class HealthChecker:
    def __init__(
        self,
        upstreams: list[Upstream],
        picker: Picker,
        path: str,
        interval: float,
        timeout: float,
        port: int = 0,
        contains: str = "",
    ) -> None:
        self.picker = picker
        self.path = path if path.startswith("/") else "/" + path
        self.interval = interval
        self.timeout = timeout
        self.contains = contains.encode()
        self.states = [HealthState(1, 1) for _ in upstreams]
        self.pools = [
            Pool(replace(u, port=port) if port and u.scheme != "unix" else u, 0, timeout)
            for u in upstreams
        ]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self.check(i) for i in range(len(self.pools))))
            await asyncio.sleep(self.interval)

    async def check(self, index: int) -> bool:
        """Probe one upstream now and apply the result; whether it was healthy."""
        pool = self.pools[index]
        up = pool.upstream
        head = (
            f"GET {self.path} HTTP/1.1\r\nHost: {up.host_header}\r\n"
            "User-Agent: meshkit-health-check\r\nConnection: close\r\n\r\n"
        ).encode("latin-1", "replace")
        ok = False
        why = ""
        try:
            reply = await exchange(pool, head, None, False, False, self.timeout, _ignore)
            body = reply.body
            if not isinstance(body, bytes):
                pieces = []
                async for piece in body:
                    pieces.append(piece)
                body = b"".join(pieces)
            ok = 200 <= reply.status < 400 and (not self.contains or self.contains in body)
            why = f"status {reply.status}" if ok or reply.status >= 400 else "body lacks the text"
        except UpstreamError as exc:
            why = str(exc)
        except Exception as exc:  # a broken probe must not end the checks
            why = f"{type(exc).__name__}: {exc}"
        flip = self.states[index].record(ok)
        if flip is not None:
            self.picker.set_healthy(index, flip)
            state = "up" if flip else "down"
            log.warning("proxy health check: %s is %s (%s)", up.name, state, why)
        return ok


def _ignore(ok: bool) -> None:
    return None
