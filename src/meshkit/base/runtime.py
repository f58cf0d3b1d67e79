"""The process runtime shared by every long-running command: the loop, logging and signals.

`run_loop` runs the process on uvloop (the one event loop of a meshkit process);
`setup_logging` points the root logger at stderr, stdout or a file in the one log format;
`Signals` gives the stop/reload behaviour of `meshkit web` and `meshkit ingress`: the first
SIGTERM/SIGINT asks for a graceful stop, a second one for an immediate one.

Imports are deferred so that importing this module costs nothing on the CLI's fast paths.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from meshkit.base.errors import FlagError

if TYPE_CHECKING:
    import asyncio
    import logging

__all__ = ["LOG_DATEFMT", "LOG_FORMAT", "STOP_SIGNALS", "Signals", "run_loop", "setup_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%dT%H:%M:%S"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop, the one event loop of every meshkit process."""
    import uvloop

    uvloop.run(coro)


def _level(level: str | int) -> int:
    import logging

    if isinstance(level, int):
        return level
    value = getattr(logging, level.upper(), logging.INFO)
    return value if isinstance(value, int) else logging.INFO


def setup_logging(level: str | int = "info", dest: str | None = None, *, flag: str = "") -> None:
    """Send the process log to `dest`: stderr (None, "" or "stderr"), stdout, or a file
    appended to; a file that cannot be opened is a FlagError naming `flag`.

    The root logger ends up with this one handler (any earlier one is removed), so that a
    process logs each line once, in the one format.
    """
    import logging

    handler: logging.Handler
    if dest in (None, "", "stderr"):
        handler = logging.StreamHandler(sys.stderr)
    elif dest == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        assert dest is not None
        try:
            handler = logging.FileHandler(dest, encoding="utf-8")
        except OSError as exc:
            raise FlagError(flag, dest, exc.strerror or str(exc)) from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))


class Signals:
    """Stop and reload signals of one process, handled on its event loop.

    The first SIGTERM/SIGINT resolves `stopped()` with that signal (the caller then stops
    gracefully); each further one calls `on_again` (stop at once). `reload_signal` calls
    `on_reload`; `extra` maps any other signal to its handler. The handlers stay in place
    from `install()` to `remove()`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        on_again: Callable[[signal.Signals], None] | None = None,
        on_reload: Callable[[], None] | None = None,
        reload_signal: signal.Signals = signal.SIGHUP,
        extra: Mapping[signal.Signals, Callable[[], None]] | None = None,
    ) -> None:
        self.loop = loop
        self._stop: asyncio.Future[signal.Signals] = loop.create_future()
        self._on_again = on_again
        self._handlers: dict[signal.Signals, Callable[[], None]] = {
            sig: functools.partial(self._on_stop, sig) for sig in STOP_SIGNALS
        }
        if on_reload is not None:
            self._handlers[reload_signal] = on_reload
        self._handlers.update(extra or {})

    def _on_stop(self, sig: signal.Signals) -> None:
        if not self._stop.done():
            self._stop.set_result(sig)
        elif self._on_again is not None:
            self._on_again(sig)

    def install(self) -> None:
        for sig, fn in self._handlers.items():
            self.loop.add_signal_handler(sig, fn)

    def remove(self) -> None:
        for sig in self._handlers:
            self.loop.remove_signal_handler(sig)

    async def stopped(self) -> signal.Signals:
        """The first stop signal, once it has come."""
        return await self._stop
