"""Commands run at process events: `startup`, `shutdown` and `on EVENT COMMAND` (Caddy v1's
startup/shutdown directives and v1.0's onevent `on`).

Events: `startup` (once per process, after the ports are open; a reload does not run it
again), `shutdown` (once, when the process stops, after the connections are done; the
configuration in use then says which), `certrenew` (a certificate from the ACME CA was
installed: the first one for a name and each renewal; the name is in $MESHKIT_CERT_NAME).
A command runs without a shell (`sh -c '...'` when one is wanted); a last argument `&` runs
it in the background. Its output is logged line by line (`startup: ...`), so is a non-zero
exit status; a command that cannot start is logged and the rest go on. Commands wait for
each other in the order of the Caddyfile; background ones do not, and are not stopped when
meshkit exits (as in Caddy v1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshkit.base.cancel import cancel_and_wait

__all__ = ["EVENTS", "Command", "Hooks"]

log = logging.getLogger("meshkit.web")

EVENTS = ("startup", "shutdown", "certrenew")


@dataclass(frozen=True)
class Command:
    event: str  # one of EVENTS
    argv: tuple[str, ...]
    background: bool = False
    where: str = ""  # Caddyfile:LINE

    def text(self) -> str:
        return shlex.join(self.argv) + (" &" if self.background else "")


class Hooks:
    """The commands of the configuration in use, run when their event happens."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self.commands = list(commands)
        self._tasks: set[asyncio.Task[None]] = set()
        self.started = False

    def of(self, event: str) -> list[Command]:
        return [c for c in self.commands if c.event == event]

    async def fire(self, event: str, env: Mapping[str, str] | None = None) -> None:
        """Run the event's commands, one after the other (background ones not awaited)."""
        for cmd in self.of(event):
            await self._run(cmd, env)

    def fire_soon(self, event: str, env: Mapping[str, str] | None = None) -> None:
        """fire() in a task (from a callback that cannot await)."""
        if not self.of(event):
            return
        task = asyncio.get_running_loop().create_task(self.fire(event, env))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, cmd: Command, env: Mapping[str, str] | None) -> None:
        label = cmd.event
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=cmd.background,
            )
        except OSError as exc:
            log.error("%s: cannot run %s (%s): %s", label, cmd.text(), cmd.where, exc)
            return
        log.info("%s: running %s (pid %d)", label, cmd.text(), proc.pid)
        watch = self._watch(label, cmd, proc)
        if cmd.background:
            task = asyncio.get_running_loop().create_task(watch)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await watch

    async def _watch(self, label: str, cmd: Command, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        name = os.path.basename(cmd.argv[0])
        with contextlib.suppress(OSError, ValueError):
            async for line in proc.stdout:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                log.info("%s: %s: %s", label, name, text)
        status = await proc.wait()
        if status != 0:
            log.warning("%s: %s exited with status %d (%s)", label, cmd.text(), status, cmd.where)

    async def stop(self) -> None:
        """Stop logging the output of background commands (they run on)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await cancel_and_wait(task)
