"""How a task's process is launched, identified and described: launch plans, spawning, exits.

``plan_launch`` turns a task spec into a ``LaunchPlan`` (argv with the program found on the
task's PATH, the exact environment, workdir, uid/gid/groups) or raises ``LaunchError`` saying
in plain words why the task cannot start. ``spawn`` starts a plan as the leader of a new
session (process group = session, so the whole task can be signalled as one group), inside a
network namespace when asked, with stdin on /dev/null and stdout/stderr on given fds.
``start_time`` reads /proc/PID/stat field 22, which with the pid identifies a process across
pid reuse. ``describe_exit`` and ``stderr_tail`` make the words a task's end is reported with.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.base import netns as tasknetns

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDERR_TAIL_LINES = 5
STDERR_TAIL_BYTES = 1024


class LaunchError(Exception):
    """A task cannot start; the message says why in the words the user will read."""


@dataclass(frozen=True)
class Identity:
    """Who the task runs as; None ids mean "as the agent"."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...] | None
    home: str


@dataclass(frozen=True)
class LaunchPlan:
    """Everything ``spawn`` needs, resolved and checked."""

    argv: list[str]
    executable: str
    env: dict[str, str]
    cwd: str
    identity: Identity


def resolve_user(user: str) -> Identity:
    """``""`` (the agent's user), ``name``, ``uid``, ``name:group`` or ``uid:gid``."""
    if not user:
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir or "/"
        except KeyError:
            home = "/"
        return Identity(None, None, None, home)
    name, _, group = user.partition(":")
    if not name:
        raise LaunchError(f"user {user!r}: the user part is empty")
    entry: pwd.struct_passwd | None
    if name.isdigit():
        uid = int(name)
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            entry = None
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LaunchError(f"user {user!r}: no user named {name!r} on this node") from None
        uid = entry.pw_uid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise LaunchError(f"user {user!r}: no group named {group!r} on this node") from None
    else:
        # like Docker: a uid unknown to /etc/passwd runs with gid 0
        gid = entry.pw_gid if entry is not None else 0
    if entry is not None:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
        home = entry.pw_dir or "/"
    else:
        groups = (gid,)
        home = "/"
    return Identity(uid, gid, groups, home)


def build_env(spec_env: Sequence[str], hostname: str, home: str) -> dict[str, str]:
    """spec.env over the minimal base (PATH, HOSTNAME, HOME)."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home}
    for item in spec_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"env {item!r}: not in KEY=VALUE form")
        env[key] = value
    return env


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_program(program: str, path_var: str, cwd: str) -> str:
    """The file exec will run for ``program``, looked up like execvp does with ``path_var``."""
    if "/" in program:
        full = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(full):
            raise LaunchError(f"exec: {program!r}: no such file or directory")
        if not _runnable(full):
            raise LaunchError(f"exec: {program!r}: permission denied (not an executable file)")
        return full
    for directory in path_var.split(":"):
        if not directory:
            continue
        if not os.path.isabs(directory):
            directory = os.path.join(cwd, directory)
        candidate = os.path.join(directory, program)
        if _runnable(candidate):
            return candidate
    raise LaunchError(f"exec: {program!r}: not found in PATH")


def _context(spec: Mapping[str, Any], hostname: str) -> tuple[str, Identity, dict[str, str]]:
    """The workdir, user and env a task's processes run with."""
    cwd = str(spec.get("workdir") or "/")
    if not os.path.isabs(cwd):
        raise LaunchError(f"workdir {cwd!r}: not an absolute path")
    if not os.path.isdir(cwd):
        raise LaunchError(f"workdir {cwd!r}: no such directory")
    identity = resolve_user(str(spec.get("user") or ""))
    env = build_env([str(e) for e in (spec.get("env") or [])], hostname, identity.home)
    return cwd, identity, env


def plan_launch(spec: Mapping[str, Any], hostname: str) -> LaunchPlan:
    """Check a task spec against this node and resolve it; LaunchError says what is wrong."""
    argv = [str(a) for a in (spec.get("command") or [])]
    if not argv or not argv[0]:
        raise LaunchError("the task has no command")
    cwd, identity, env = _context(spec, hostname)
    executable = find_program(argv[0], env.get("PATH", ""), cwd)
    return LaunchPlan(argv, executable, env, cwd, identity)


def plan_shell(spec: Mapping[str, Any], hostname: str, command: str) -> LaunchPlan:
    """``/bin/sh -c command`` run the way the task runs (its health check)."""
    cwd, identity, env = _context(spec, hostname)
    return LaunchPlan(["/bin/sh", "-c", command], "/bin/sh", env, cwd, identity)


def _child_setup(
    netns_fd: int | None,
    identity: Identity,
    resolv: bytes | None = None,
    files: list[tasknetns.TaskFile] | None = None,
) -> Callable[[], None]:
    """The preexec_fn: enter the namespace while still root, then drop to the task's user.

    Popen's own user/group switch happens before preexec_fn, which would leave the child
    without the right to setns(2); so both happen here, in that order. With `resolv` (the
    path of the namespace's resolv.conf), the child gets a mount namespace of its own where
    that file is bound over /etc/resolv.conf, as `ip netns exec` does. With `files` (secrets
    and configs) it gets one in any case, with a tmpfs over /run holding them
    (`tasknetns.place_files`)."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if netns_fd is not None:
            tasknetns.setns(netns_fd)
        if resolv is not None or files:
            tasknetns.private_mounts()
        if resolv is not None:
            tasknetns.bind_resolv_conf(resolv)
        if files:
            try:
                tasknetns.place_files(files)
            except OSError as exc:  # the task's stderr log says why
                os.write(2, f"meshkit: cannot place the task's secrets: {exc}\n".encode())
                raise
        if identity.gid is not None:
            os.setgroups(list(identity.groups or (identity.gid,)))
            os.setgid(identity.gid)
        if identity.uid is not None:
            os.setuid(identity.uid)

    return setup


def spawn(
    plan: LaunchPlan,
    *,
    stdout: int,
    stderr: int,
    netns: str | None = None,
    files: list[tasknetns.TaskFile] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``plan`` as a new session leader; LaunchError when exec or the setup fails."""
    netns_fd = os.open(tasknetns.netns_path(netns), os.O_RDONLY) if netns else None
    resolv = tasknetns.resolv_conf_for(netns) if netns else None
    try:
        return subprocess.Popen(
            plan.argv,
            executable=plan.executable,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=plan.cwd,
            env=plan.env,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_child_setup(netns_fd, plan.identity, resolv, files),
        )
    except OSError as exc:
        raise LaunchError(f"exec: {plan.argv[0]!r}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:
        raise LaunchError(
            f"could not enter the task's network namespace or switch to its user: {exc}"
        ) from None
    finally:
        if netns_fd is not None:
            os.close(netns_fd)


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None when there is no such
    live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9, ``signal 99`` for numbers without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code_of(returncode: int) -> int:
    """Popen's returncode as a shell would show it (128 + signal for a signal)."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int, stderr_tail: str) -> str:
    """The error of a task that ended by itself with a failure (returncode as Popen's)."""
    if returncode < 0:
        text = f"exited on signal {signal_name(-returncode)}"
    else:
        text = f"exited with code {returncode}"
    return f"{text}: {stderr_tail}" if stderr_tail else text


def tail_text(data: bytes, lines: int = STDERR_TAIL_LINES, limit: int = STDERR_TAIL_BYTES) -> str:
    """The last ``lines`` lines of ``data``, at most ``limit`` bytes, as one string."""
    text = data[-limit:] if len(data) > limit else data
    if len(data) > limit:
        # drop the line the byte limit cut into, unless it is the only one
        cut = text.find(b"\n")
        if 0 <= cut < len(text) - 1:
            text = text[cut + 1 :]
    kept = text.rstrip(b"\n").split(b"\n")[-lines:]
    return "\n".join(line.decode(errors="replace").rstrip("\r") for line in kept).strip()
