"""The git directive end to end: real git, a local bare repository, `meshkit web` as a process
and curl as the client; plus the GitPuller alone on an event loop for what needs no server.

Git never sees the user's configuration: HOME and GIT_CONFIG_GLOBAL point into the test's
temporary folder and the system file is ignored; the author is set in the work clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import meshkit
from meshkit.web.gitdeploy import GitConfig, GitPuller, github_signature
from meshkit.web.gitdeploy.schedule import State
from support import polling
from support.e2e_util import Reply, curl
from support.peers import Proc, free_port, wait_tcp

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("curl") is None, reason="needs git and curl"
)

SECRET = "t0p-secret"
SRC = str(Path(meshkit.__file__).resolve().parent.parent)  # the meshkit under test


def git_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "gitconfig").touch()
    return {
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": str(home / "gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }


@dataclass
class Repo:
    """A bare repository (the remote) and a work clone that commits and pushes to it."""

    bare: Path
    work: Path
    env: dict[str, str]

    def git(self, *args: str, cwd: Path | None = None) -> str:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd or self.work,
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip()

    def commit(self, files: dict[str, str], message: str, push: bool = True) -> str:
        for name, text in files.items():
            (self.work / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        if push:
            self.git("push", "-q", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    env = git_env(tmp_path)
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    r = Repo(bare, work, env)
    r.git("init", "-q", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    r.git("init", "-q", "--initial-branch=main", str(work), cwd=tmp_path)
    r.git("config", "user.name", "Test Author")
    r.git("config", "user.email", "author@example.test")
    r.git("remote", "add", "origin", str(bare))
    # a second branch the site does not follow (and the remote's HEAD stays on main)
    r.commit({"index.html": "version 1\n"}, "v1")
    r.git("push", "-q", "origin", "HEAD:refs/heads/other")
    return r


@dataclass
class Web:
    proc: Proc
    port: int
    tmp: Path

    def get(self, path: str, *args: str) -> Reply:
        return curl(self.port, path, *args, tmp=self.tmp)

    def hook(self, body: bytes, event: str = "push", secret: str = SECRET) -> Reply:
        payload = self.tmp / "payload.json"
        payload.write_bytes(body)
        return self.get(
            "/_deploy",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"X-GitHub-Event: {event}",
            "-H",
            f"X-Hub-Signature-256: {github_signature(secret, body)}",
            "--data-binary",
            f"@{payload}",
        )


@pytest.fixture
def start_web(tmp_path: Path, repo: Repo) -> Iterator[Callable[[str], Web]]:
    procs: list[Proc] = []

    def start(block: str) -> Web:
        port = free_port()
        conf = tmp_path / "Caddyfile"
        conf.write_text(f"127.0.0.1:{port} {{\n    root {tmp_path / 'site'}\n{block}\n}}\n")
        env = {**repo.env, "PYTHONPATH": SRC}
        proc = Proc([sys.executable, "-m", "meshkit", "web", "-conf", str(conf)], env)
        procs.append(proc)
        wait_tcp(port, proc)
        return Web(proc, port, tmp_path)

    yield start
    for proc in procs:
        # SIGTERM first: the puller stops its git and then_long children itself
        proc.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        proc.stop()


def eventually(check: Callable[[], bool], what: str, proc: Proc, timeout: float = 30.0) -> None:
    polling.eventually(
        check, lambda: f"{what} did not happen; meshkit web said:\n{proc.stderr()}", timeout, 0.1
    )


def serves(web: Web, text: bytes) -> Callable[[], bool]:
    def check() -> bool:
        r = web.get("/")
        return r.status == 200 and r.body == text

    return check


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_clone_then_hook_pulls_and_runs_then(
    tmp_path: Path, repo: Repo, start_web: Callable[[str], Web]
) -> None:
    marker = tmp_path / "then-ran"
    web = start_web(
        f"""    git {repo.bare} {{
        hook /_deploy {SECRET}
        then sh -c "git rev-parse HEAD >> {marker}; pwd >> {marker}.cwd"
    }}"""
    )
    eventually(serves(web, b"version 1\n"), "the initial clone being served", web.proc)
    first = repo.git("rev-parse", "HEAD")
    eventually(lambda: lines(marker) == [first], "then after the clone", web.proc)
    assert lines(Path(f"{marker}.cwd")) == [str(tmp_path / "site")]  # run in the checkout
    assert web.get("/.git/config").status == 404  # the clone's internals are never served
    assert web.get("/.git/HEAD").status == 404

    second = repo.commit({"index.html": "version 2\n"}, "v2")
    push = f'{{"ref": "refs/heads/main", "after": "{second}"}}'.encode()

    # wrong signature: 403 and no pull
    r = web.hook(push, secret="not the secret")
    assert r.status == 403
    unsigned = web.get("/_deploy", "-X", "POST", "-H", "X-GitHub-Event: push", "-d", "{}")
    assert unsigned.status == 403
    assert web.get("/_deploy").status == 405
    # ping, and a push to a branch the site does not follow: 200, no pull
    assert web.hook(b'{"zen": "hi"}', event="ping").body == b"pong\n"
    other = web.hook(b'{"ref": "refs/heads/other"}')
    assert other.status == 200 and b"ignored" in other.body
    time.sleep(1.0)  # give a wrong pull the chance to happen
    assert web.get("/").body == b"version 1\n"
    assert lines(marker) == [first]

    r = web.hook(push)
    assert r.status == 200 and r.body == b"push to refs/heads/main: pulling\n"
    eventually(serves(web, b"version 2\n"), "the pushed commit being served", web.proc)
    eventually(lambda: lines(marker) == [first, second], "then after the pull", web.proc)
    assert "webhook /_deploy from 127.0.0.1: 403" in web.proc.stderr()
    assert "(main)" in web.proc.stderr()  # no branch given: the remote's default branch

    # a reload replaces the puller; the new one answers the hook
    web.proc.signal(signal.SIGUSR1)
    eventually(lambda: "reload: done" in web.proc.stderr(), "the reload", web.proc)
    third = repo.commit({"index.html": "version 3\n"}, "v3")
    assert web.hook(f'{{"ref": "refs/heads/main", "after": "{third}"}}'.encode()).status == 200
    eventually(serves(web, b"version 3\n"), "the pull after the reload", web.proc)
    eventually(lambda: lines(marker)[-1:] == [third], "then after the reload", web.proc)


def test_interval_pull_failure_and_recovery(
    tmp_path: Path, repo: Repo, start_web: Callable[[str], Web]
) -> None:
    web = start_web(f"    git {repo.bare} {{\n        interval 5\n    }}")
    eventually(serves(web, b"version 1\n"), "the initial clone being served", web.proc)

    repo.commit({"index.html": "version 2\n", "new.txt": "new\n"}, "v2")
    eventually(serves(web, b"version 2\n"), "a pull at the interval", web.proc, timeout=20)
    assert web.get("/new.txt").body == b"new\n"

    # the remote goes away: pulls fail, the last checkout is still served, git's error logged
    moved = tmp_path / "moved.git"
    repo.bare.rename(moved)
    try:
        eventually(
            lambda: "failed, still serving the last checkout" in web.proc.stderr(),
            "a failed pull being logged",
            web.proc,
            timeout=20,
        )
        err = web.proc.stderr()
        assert "`git fetch --prune origin +refs/heads/main:refs/remotes/origin/main` exited" in err
        assert f"fatal: '{repo.bare}' does not appear to be a git repository" in err
        assert web.get("/").body == b"version 2\n"
        assert web.get("/new.txt").body == b"new\n"
        repo.git("remote", "set-url", "origin", str(moved))
        repo.commit({"index.html": "version 3\n"}, "v3")
        repo.git("remote", "set-url", "origin", str(repo.bare))
    finally:
        moved.rename(repo.bare)
    eventually(serves(web, b"version 3\n"), "recovery at a later interval", web.proc, timeout=20)
    # logged once the sync returns, which can be just after the new checkout is served
    eventually(
        lambda: "sync works again" in web.proc.stderr(), "the recovery logged", web.proc, timeout=10
    )


def test_non_empty_root_is_refused_at_startup(tmp_path: Path, repo: Repo) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hand made\n")
    conf = tmp_path / "Caddyfile"
    conf.write_text(f"127.0.0.1:{free_port()} {{\n    root {site}\n    git {repo.bare}\n}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "meshkit", "web", "-conf", str(conf), "-validate"],
        env={**os.environ, **repo.env, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert f"{conf}:3 - {site} is not empty and is not a git clone of {repo.bare}" in out.stderr
    assert "Traceback" not in out.stderr


# --- the puller alone ------------------------------------------------------------------------


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.records)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("meshkit.web.git")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


async def until(check: Callable[[], bool], what: str, log: Captured, timeout: float = 30) -> None:
    await polling.eventually_async(
        check, lambda: f"{what} did not happen; log:\n{log.text()}", timeout
    )


def test_puller_then_failures_then_long_and_stop(
    tmp_path: Path, repo: Repo, captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in repo.env.items():
        monkeypatch.setenv(k, v)
    checkout = tmp_path / "checkout"
    pidfile = tmp_path / "long.pid"
    config = GitConfig(
        repo=str(repo.bare),
        path=str(checkout),
        branch="main",
        then=[["sh", "-c", "echo broken build >&2; exit 3"], ["no-such-program-here"]],
        then_long=[["sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"]],
    )

    async def scenario() -> None:
        puller = GitPuller(config)
        await puller.start()
        try:
            await until(pidfile.exists, "then_long starting", captured)
            await until(lambda: pidfile.read_text().strip() != "", "the pid", captured)
            assert (checkout / "index.html").read_text() == "version 1\n"
            text = captured.text()
            assert "then `sh -c echo broken build >&2; exit 3` exited 3:\nbroken build" in text
            assert "then `no-such-program-here` could not start" in text
            # a hook during the idle time pulls at once (the then commands are logged a
            # moment before the puller is back to idle)
            await until(lambda: puller.schedule.state is State.IDLE, "the puller idle", captured)
            repo.commit({"index.html": "version 2\n"}, "v2")
            assert puller.request_pull() == "now"
            await until(
                lambda: (checkout / "index.html").read_text() == "version 2\n",
                "the hook's pull",
                captured,
            )
        finally:
            await puller.stop()
        pid = int(pidfile.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # then_long was ended with the puller

    asyncio.run(scenario())


def test_puller_refuses_a_clone_of_another_repository(
    tmp_path: Path, repo: Repo, captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in repo.env.items():
        monkeypatch.setenv(k, v)
    checkout = tmp_path / "checkout"
    repo.git("clone", "-q", str(repo.bare), str(checkout), cwd=tmp_path)
    repo.git("remote", "set-url", "origin", "https://git.example.test/else.git", cwd=checkout)
    puller = GitPuller(GitConfig(repo=str(repo.bare), path=str(checkout)))

    async def scenario() -> None:
        await puller.start()
        try:
            await until(lambda: "cannot sync" in captured.text(), "the refusal", captured)
        finally:
            await puller.stop()

    asyncio.run(scenario())
    assert f"is a clone of https://git.example.test/else.git, not of {repo.bare}" in captured.text()
    assert puller.head is None
