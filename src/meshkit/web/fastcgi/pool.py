"""One FastCGI responder and its kept connections, and the cap it learns.

Kept connections pin php-fpm children (a child serves one connection until it closes), so
with more requests in flight than php-fpm has children, a freshly dialled connection can
wait in php-fpm's listen queue while every child idles on a kept one. To never deadlock
like that, a finished connection is closed instead of kept when a request on a freshly
dialled connection has waited for its first reply byte while more exchanges completed on
other connections than the upstream has open (a free child would have taken it by then).
A burst that ends leaves no later exchange to notice that, so a connection kept while some
new one still waits for its first byte is closed too when that is still so a moment later
(STARVE_CHECK). The upstream then learns a cap (the connections that were being served),
and later requests wait for a kept connection instead of dialling past it; the cap is
probed one higher now and then, and forgotten when every connection is gone (a restarted
php-fpm may have more children). The connection's side of it is Connection.release()
(meshkit.web.fastcgi.connection).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from meshkit.web.proxy.deadlines import Deadlines

if TYPE_CHECKING:
    from meshkit.web.fastcgi.endpoint import Endpoint

MAX_IDLE = 256  # kept connections per upstream
STARVE_CHECK = 0.05  # seconds
PROBE_EVERY = 1024  # exchanges between tries of one more connection than the learnt cap


class Kept(Protocol):
    """What the pool does with a connection it keeps (meshkit.web.fastcgi.connection's
    Connection): close it."""

    def close(self) -> None: ...


C = TypeVar("C", bound=Kept)


class Upstream(Generic[C]):
    """One responder and its idle connections (of type C: Upstream[Connection])."""

    __slots__ = (
        "cap",
        "completed",
        "deadlines",
        "dialling",
        "endpoint",
        "fresh",
        "idle",
        "open",
        "timer",
        "waiters",
    )

    def __init__(self, endpoint: Endpoint, deadlines: Deadlines | None = None) -> None:
        self.endpoint = endpoint
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.idle: list[C] = []
        self.open = 0  # connections dialled and not yet closed
        self.dialling = 0
        self.completed = 0  # exchanges ended cleanly
        # connections whose first request awaits its first reply byte -> `completed` when
        # that request was sent
        self.fresh: dict[C, int] = {}
        self.cap = 0  # connections the responder serves at once, once learnt (0: unknown)
        # requests waiting for a kept connection (None: dial, there is room again)
        self.waiters: deque[asyncio.Future[C | None]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check soon whether kept connections hold back a new one (see the module doc)."""
        if self.timer is None:
            self.timer = loop.call_later(STARVE_CHECK, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.fresh and self.idle:
            # idle connections pin responder children while a new connection still has
            # no reply: free the children
            for conn in list(self.idle):
                conn.close()

    def full(self) -> bool:
        return bool(self.cap) and self.open + self.dialling >= self.cap

    def hand_over(self, conn: C | None) -> bool:
        """Give a kept connection (or leave to dial) to the first waiting request."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def starving(self) -> bool:
        """Does a request on a new connection look stuck in the responder's listen queue?"""
        if not self.fresh:
            return False
        return self.completed - min(self.fresh.values()) > self.open

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
