"""The I/O shell of one git block: runs git and the `then` commands as asyncio subprocesses.

A GitPuller is a site's background work (see meshkit.web.site.Background):

- `start()` returns at once and leaves a task that clones (or updates) right away and then
  pulls every interval. Unlike Caddy v1, which cloned before serving, the site is served
  meanwhile with whatever the folder holds (nothing, until the first clone lands).
- `request_pull()` is what a webhook calls: a pull at once, or one more after the running one.
- `stop()` lets a running git command finish (up to STOP_GRACE seconds, then kills it) and
  ends the `then_long` commands still running (SIGTERM to their process group, SIGKILL after
  STOP_GRACE): a reload starts a new puller, which runs them again after its first sync.

Nothing blocks the loop: git runs in subprocesses, folder checks in the default executor.
Syncs of one checkout path are serialised across pullers of the same process (a reload
starts the new puller before it stops the old one). Failures are logged in full with the
command and its exit code, and never raised: the last good checkout stays and the next sync
is tried one interval later. Logger: `meshkit.web.git`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from meshkit.web.gitdeploy import plan
from meshkit.web.gitdeploy.config import GitConfig
from meshkit.web.gitdeploy.plan import CheckoutFacts, CheckoutProblem
from meshkit.web.gitdeploy.schedule import PullSchedule, RunThen, Sleep, Sync

log = logging.getLogger("meshkit.web.git")

STOP_GRACE = 5.0  # seconds a running command gets to finish when the puller stops
GIT_TIMEOUT = 600.0  # a git command hanging on a dead server must not stop every later pull
MAX_LOGGED_OUTPUT = 1 << 20  # bytes of a `then` command's output kept for the log

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _path_lock(path: str) -> asyncio.Lock:
    per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(os.path.realpath(path), asyncio.Lock())


@dataclass
class Result:
    argv: list[str]
    returncode: int | None  # None: timed out and killed
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """The command, how it ended, and everything it said (for the log)."""
        how = "timed out and was killed" if self.returncode is None else f"exited {self.returncode}"
        text = "\n".join(s.rstrip() for s in (self.stderr, self.stdout) if s.strip())
        return f"`{' '.join(self.argv)}` {how}" + (f":\n{text}" if text else " (no output)")


class SyncFailed(Exception):
    """A sync step failed; the message is what gets logged."""


def inspect_checkout(path: str) -> CheckoutFacts:
    """The folder facts sync_kind() needs (except `origin`, which git tells)."""
    if not os.path.lexists(path):
        return CheckoutFacts(exists=False)
    if not os.path.isdir(path):
        return CheckoutFacts(exists=True, is_dir=False, empty=False)
    with os.scandir(path) as it:
        empty = next(it, None) is None
    return CheckoutFacts(
        exists=True, empty=empty, is_clone=os.path.lexists(os.path.join(path, ".git"))
    )


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # its own session: git's helpers (ssh, remote-https) too


def _text(data: bytes) -> str:
    if len(data) > MAX_LOGGED_OUTPUT:
        cut = len(data) - MAX_LOGGED_OUTPUT
        data = b"[... %d bytes left out ...]\n" % cut + data[-MAX_LOGGED_OUTPUT:]
    return data.decode("utf-8", "replace")


class GitPuller:
    """Keeps one checkout in step with its remote (see the module docstring)."""

    def __init__(self, config: GitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.schedule = PullSchedule(config.interval, config.then, config.then_long)
        self.branch: str | None = config.branch  # the branch followed, once known
        self.head: str | None = None  # the commit checked out by the last good sync
        self.env = plan.git_env(os.environ, config.key)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._long: dict[asyncio.subprocess.Process, asyncio.Task[None]] = {}
        self._name = f"git {config.path}"

    def __repr__(self) -> str:
        return f"GitPuller({self.config.repo!r} -> {self.config.path!r})"

    # --- Background ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self.schedule.start(self.clock())
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            if self._wake is not None:
                self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_long()

    def request_pull(self) -> str:
        """A webhook's pull: "now", "queued" or "already queued" (see PullSchedule)."""
        outcome = self.schedule.request_pull(self.clock())
        if self._wake is not None:
            self._wake.set()
        log.info("%s: webhook: pull %s", self._name, outcome)
        return outcome

    # --- the loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            step = self.schedule.next_step(self.clock())
            if isinstance(step, Sync):
                ok, changed = await self._sync(step.first)
                self.schedule.sync_done(self.clock(), ok, changed)
            elif isinstance(step, RunThen):
                await self._run_then(step)
            elif isinstance(step, Sleep):
                await self._sleep(step.until)

    async def _sleep(self, until: float | None) -> None:
        assert self._wake is not None
        self._wake.clear()
        if self._stopping:
            return
        timeout = None if until is None else max(0.0, until - self.clock())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _exec(
        self, argv: list[str], cwd: str | None, timeout: float | None = GIT_TIMEOUT
    ) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            _kill_group(proc, signal.SIGKILL)
            await proc.wait()
            return Result(argv, None, "", f"(no answer within {timeout:g}s)")
        except BaseException:  # cancelled by stop(): nothing may outlive the puller
            _kill_group(proc, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
        return Result(argv, proc.returncode, _text(out), _text(err))

    async def _git(self, argv: list[str], cwd: str | None = None) -> Result:
        result = await self._exec(argv, cwd)
        if not result.ok:
            raise SyncFailed(result.describe())
        return result

    # --- syncing -------------------------------------------------------------------------
    async def _sync(self, first: bool) -> tuple[bool, bool]:
        """(ok, HEAD moved). Never raises for a failure of git: logs it."""
        path = self.config.path
        async with _path_lock(path):
            try:
                changed = await self._sync_locked()
            except CheckoutProblem as exc:
                log.error("%s: cannot sync: %s", self._name, exc)
                return False, False
            except SyncFailed as exc:
                retry = self.config.interval
                log.error(
                    "%s: sync from %s failed, still serving the last checkout (%s); "
                    "next try in %gs: %s",
                    self._name,
                    self.config.repo,
                    self.head or "none yet",
                    retry,
                    exc,
                )
                return False, False
            except OSError as exc:  # git missing, folder unreadable
                log.error("%s: cannot run git: %s", self._name, exc)
                return False, False
        if self.schedule.failed_in_a_row:
            log.info("%s: sync works again", self._name)
        return True, changed

    async def _sync_locked(self) -> bool:
        cfg = self.config
        loop = asyncio.get_running_loop()
        facts = await loop.run_in_executor(None, inspect_checkout, cfg.path)
        if facts.is_clone:
            origin = await self._exec(plan.ORIGIN_ARGV, cfg.path)
            url = origin.stdout.strip() if origin.ok else None
            facts = CheckoutFacts(facts.exists, facts.is_dir, facts.empty, True, url or None)
        kind = plan.sync_kind(facts, cfg.repo, cfg.path)
        if kind == "clone":
            log.info("%s: cloning %s", self._name, cfg.repo)
            await self._git(plan.clone_argv(cfg.repo, cfg.path, cfg.branch))
            before = None
        else:
            head = await self._exec(plan.HEAD_ARGV, cfg.path)
            before = head.stdout.strip() if head.ok else None
            if self.branch is None:
                current = await self._exec(plan.BRANCH_ARGV, cfg.path)
                if not current.ok:
                    raise CheckoutProblem(
                        f"the checkout at {cfg.path} is not on a branch (detached HEAD): "
                        "give the git directive a `branch`"
                    )
                self.branch = current.stdout.strip()
            await self._git(plan.fetch_argv(self.branch), cfg.path)
            await self._git(plan.checkout_argv(self.branch), cfg.path)
            if os.path.exists(os.path.join(cfg.path, ".gitmodules")):
                await self._git(plan.SUBMODULE_ARGV, cfg.path)
        after = (await self._git(plan.HEAD_ARGV, cfg.path)).stdout.strip()
        if self.branch is None:
            current = await self._exec(plan.BRANCH_ARGV, cfg.path)
            self.branch = current.stdout.strip() if current.ok else None
        self.head = after
        if after != before:
            log.info(
                "%s: now at %s (%s)%s",
                self._name,
                after[:12],
                self.branch or "detached",
                "" if before is None else f", was {before[:12]}",
            )
        return after != before

    # --- then / then_long ----------------------------------------------------------------
    async def _run_then(self, step: RunThen) -> None:
        argv = list(step.argv)
        if step.background:
            await self._start_long(argv)
            return
        try:
            result = await self._exec(argv, self.config.path, timeout=None)
        except OSError as exc:
            log.error("%s: then `%s` could not start: %s", self._name, " ".join(argv), exc)
            return
        if result.ok:
            log.info("%s: then %s", self._name, result.describe())
        else:
            log.error("%s: then %s", self._name, result.describe())

    async def _start_long(self, argv: list[str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.config.path,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("%s: then_long `%s` could not start: %s", self._name, " ".join(argv), exc)
            return
        log.info("%s: then_long `%s` started (pid %d)", self._name, " ".join(argv), proc.pid)

        async def watch() -> None:
            out, err = await proc.communicate()
            result = Result(argv, proc.returncode, _text(out), _text(err))
            level = logging.INFO if result.ok else logging.ERROR
            log.log(level, "%s: then_long %s", self._name, result.describe())
            self._long.pop(proc, None)

        self._long[proc] = asyncio.get_running_loop().create_task(watch())

    async def _stop_long(self) -> None:
        if not self._long:
            return
        for proc in self._long:
            _kill_group(proc, signal.SIGTERM)
        tasks = set(self._long.values())
        _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        if pending:
            for proc in list(self._long):
                _kill_group(proc, signal.SIGKILL)
            await asyncio.wait(pending, timeout=STOP_GRACE)
        for t in pending:
            t.cancel()
