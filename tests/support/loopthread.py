"""An event loop on a thread, and a service directory to resolve service:// upstreams from."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class LoopThread:
    """A uvloop loop running in a daemon thread; coroutines submitted and waited for."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Directory:
    """A ServiceDirectory whose tasks the test sets; changes run on the web server's loop
    (as the agent's do) and the sockets are plain ones, counted per service."""

    def __init__(self, runner: LoopThread) -> None:
        self.runner = runner
        self.tasks: dict[str, list[str]] = {}
        self.callbacks: list[Callable[[], None]] = []
        self.sockets: Counter[str] = Counter()

    def known(self, service: str) -> bool:
        return service in self.tasks

    def endpoints(self, service: str) -> list[str]:
        return list(self.tasks.get(service, []))

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def socket_for(self, service: str, family: int) -> socket.socket:
        self.sockets[service] += 1
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    def set(self, service: str, ips: list[str] | None) -> None:
        """Change a service's up tasks (None: the service is removed) and tell the proxy."""

        def change() -> None:
            if ips is None:
                self.tasks.pop(service, None)
            else:
                self.tasks[service] = list(ips)
            for callback in list(self.callbacks):
                callback()

        self.runner.run(change)


