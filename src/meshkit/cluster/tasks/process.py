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
from dataclasses import dataclass, field
from typing import Any

from meshkit.base import netns as tasknetns
from meshkit.cluster.tasks import cgroups
from meshkit.cluster.tasks import mounts as taskmounts

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


def add_groups(identity: Identity, names: Sequence[str]) -> Identity:
    """``--group``: supplementary groups (names or gids) on top of the user's own."""
    if not names:
        return identity
    extra = []
    for name in names:
        if str(name).isdigit():
            extra.append(int(name))
            continue
        try:
            extra.append(grp.getgrnam(str(name)).gr_gid)
        except KeyError:
            raise LaunchError(f"group {name!r}: no such group on this node") from None
    base = identity.groups if identity.groups is not None else tuple(os.getgroups())
    groups = tuple(sorted(set(base) | set(extra)))
    return Identity(identity.uid, identity.gid, groups, identity.home)


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
    identity = add_groups(resolve_user(str(spec.get("user") or "")), spec.get("groups") or [])
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


@dataclass
class ChildExtras:
    """What else the child sets up before exec (all prepared by the agent, see ``lifecycle``):
    the cgroup.procs files to join, mounts, a hostname (UTS namespace), a resolv.conf of the
    task's own (a path, bound over /etc/resolv.conf)."""

    cgroup_procs: list[bytes] = field(default_factory=list)
    mounts: list[taskmounts.MountPlan] = field(default_factory=list)
    hostname: bytes | None = None
    resolv: bytes | None = None
    enter_pid: int | None = None  # join that task process's mount and UTS namespaces instead


def _child_setup(
    netns_fd: int | None,
    identity: Identity,
    resolv: bytes | None = None,
    files: list[tasknetns.TaskFile] | None = None,
    extras: ChildExtras | None = None,
    err_fd: int | None = None,
) -> Callable[[], None]:
    """The preexec_fn: join the cgroup, enter the namespace while still root, make the mount
    namespace, then drop to the task's user.

    The cgroup comes first, so that nothing the task runs is outside its limits. Popen's own
    user/group switch happens before preexec_fn, which would leave the child without the right
    to setns(2); so both happen here, in that order. With `resolv` (the path of the
    namespace's resolv.conf, or the task's own), the child gets a mount namespace of its own
    where that file is bound over /etc/resolv.conf, as `ip netns exec` does. With `files`
    (secrets and configs) it gets one in any case, with a tmpfs over /run holding them
    (`tasknetns.place_files`); mounts are made after them. A step that fails writes what
    failed to `err_fd`, which the agent reads back as the task's error."""
    extras = extras or ChildExtras()
    resolv = extras.resolv or resolv

    def fail(what: str, exc: BaseException) -> None:
        if err_fd is not None:
            os.write(err_fd, f"{what}: {exc}".encode(errors="replace"))

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        step = "cannot join the task's cgroup"
        try:
            if extras.cgroup_procs:
                cgroups.join(extras.cgroup_procs)
            step = "cannot enter the task's network namespace"
            if netns_fd is not None:
                tasknetns.setns(netns_fd)
            step = "cannot make the task's mount namespace"
            if extras.enter_pid is not None:
                step = "cannot enter the task's mount namespace"
                taskmounts.enter_namespaces(extras.enter_pid)
            elif resolv is not None or files or extras.mounts:
                tasknetns.private_mounts()
            if resolv is not None and extras.enter_pid is None:
                step = "cannot bind the task's resolv.conf"
                tasknetns.bind_resolv_conf(resolv)
            if files:
                step = "cannot place the task's secrets"
                tasknetns.place_files(files)
            if extras.mounts:
                step = "cannot make the task's mounts"
                taskmounts.apply(extras.mounts)
            if extras.hostname is not None:
                step = "cannot set the task's hostname"
                taskmounts.set_hostname(extras.hostname)
            step = "cannot switch to the task's user"
            if identity.gid is not None:
                os.setgroups(list(identity.groups or (identity.gid,)))
                os.setgid(identity.gid)
            elif identity.groups:
                os.setgroups(list(identity.groups))
            if identity.uid is not None:
                os.setuid(identity.uid)
        except BaseException as exc:
            fail(step, exc)
            raise

    return setup


def spawn(
    plan: LaunchPlan,
    *,
    stdout: int,
    stderr: int,
    netns: str | None = None,
    files: list[tasknetns.TaskFile] | None = None,
    extras: ChildExtras | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``plan`` as a new session leader; LaunchError when exec or the setup fails (with
    the words of the step that failed)."""
    netns_fd = os.open(tasknetns.netns_path(netns), os.O_RDONLY) if netns else None
    resolv = tasknetns.resolv_conf_for(netns) if netns else None
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
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
            preexec_fn=_child_setup(netns_fd, plan.identity, resolv, files, extras, err_w),
        )
    except OSError as exc:
        raise LaunchError(f"exec: {plan.argv[0]!r}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:
        os.close(err_w)
        err_w = -1
        said = os.read(err_r, 4096).decode(errors="replace").strip()
        raise LaunchError(said or f"the task's setup failed: {exc}") from None
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)


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
