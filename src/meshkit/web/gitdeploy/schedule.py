"""The puller's state machine: when to sync, what runs after a sync, what a webhook does.

Sans-IO: the I/O shell (meshkit.web.gitdeploy.puller) asks `next_step(now)` what to do,
does it completely, reports a sync's outcome with `sync_done`, and asks again:

    s = PullSchedule(interval=3600, then=[["make"]], then_long=[])
    s.start(now)
    step = s.next_step(now)          # Sync(first=True)
    ... run git ...
    s.sync_done(now, ok=True, changed=True)
    s.next_step(now)                 # RunThen(["make"], background=False)
    s.next_step(now)                 # Sleep(until=now + 3600): wait (a webhook may wake you)
    s.request_pull(now)              # a webhook: due at once ("now"), or one more after the
                                     # running one ("queued"; more hooks add nothing)

Rules: one sync at a time; `then` commands run after a sync that moved HEAD and after the
first successful sync of this puller (its output may not exist yet), in file order, before
the next sync; a failed sync runs nothing and is tried again one interval later (the last good
checkout stays, see plan.py); the next interval counts from the end of the last job.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Sync:
    """Clone or update the checkout. `first`: no sync of this puller has succeeded yet."""

    first: bool


@dataclass(frozen=True)
class RunThen:
    """Run a `then` command in the checkout (background: `then_long`, not waited for)."""

    argv: tuple[str, ...]
    background: bool


@dataclass(frozen=True)
class Sleep:
    """Nothing to do before `until` (monotonic seconds), unless request_pull() is called."""

    until: float | None


Step = Sync | RunThen | Sleep


class State(enum.Enum):
    IDLE = "idle"  # waiting for the next sync to be due
    SYNCING = "syncing"  # a Sync was handed out; its outcome is awaited
    THEN = "then"  # handing out the commands that follow a sync


class PullSchedule:
    def __init__(
        self,
        interval: float,
        then: list[list[str]] | None = None,
        then_long: list[list[str]] | None = None,
    ) -> None:
        self.interval = interval
        self.then = [tuple(c) for c in then or []]
        self.then_long = [tuple(c) for c in then_long or []]
        self.state = State.IDLE
        self.due: float | None = None  # None until start()
        self.queued = False
        self.succeeded = 0  # syncs that worked
        self.failed_in_a_row = 0
        self._steps: deque[RunThen] = deque()

    def start(self, now: float) -> None:
        """The first sync is due at once."""
        if self.due is None and self.state is State.IDLE:
            self.due = now

    def request_pull(self, now: float) -> str:
        """A webhook asked for a pull: "now" (due at once), "queued" (one more after the
        running job) or "already queued" (that one will do)."""
        if self.state is State.IDLE:
            self.due = now
            return "now"
        if self.queued:
            return "already queued"
        self.queued = True
        return "queued"

    def next_step(self, now: float) -> Step:
        if self.state is State.SYNCING:
            raise RuntimeError("next_step() before sync_done() reported the running sync")
        if self.state is State.THEN:
            if self._steps:
                return self._steps.popleft()
            self._finish(now)
        if self.due is not None and now >= self.due:
            self.state = State.SYNCING
            return Sync(first=self.succeeded == 0)
        return Sleep(self.due)

    def sync_done(self, now: float, ok: bool, changed: bool) -> None:
        """The outcome of the Sync handed out: ok, and whether HEAD moved."""
        if self.state is not State.SYNCING:
            raise RuntimeError("sync_done() without a running sync")
        self.state = State.THEN
        self._steps.clear()
        if not ok:
            self.failed_in_a_row += 1
            return
        first = self.succeeded == 0
        self.succeeded += 1
        self.failed_in_a_row = 0
        if changed or first:
            self._steps.extend(RunThen(c, False) for c in self.then)
            self._steps.extend(RunThen(c, True) for c in self.then_long)

    def _finish(self, now: float) -> None:
        self.state = State.IDLE
        if self.queued:
            self.queued = False
            self.due = now
        else:
            self.due = now + self.interval
