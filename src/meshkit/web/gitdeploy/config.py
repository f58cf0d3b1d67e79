"""What one `git` block of a Caddyfile asks for, and the pure rules that read its values.

The directive (meshkit.web.directives.git) fills a GitConfig per block; the puller
(meshkit.web.gitdeploy.puller) runs it. Nothing here touches the disk or the network.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

DEFAULT_INTERVAL = 3600.0  # seconds between pulls (Caddy v1's default)
MIN_INTERVAL = 5.0  # Caddy v1 refused anything shorter: a git server is not a message queue
HOOK_TYPES = ("github", "generic")
DEFAULT_HOOK_TYPE = "github"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# `user@host:path` (scp-like ssh) is a remote even without a scheme
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


@dataclass
class HookConfig:
    path: str  # the URL path the webhook answers on (exact match)
    secret: str
    kind: str = DEFAULT_HOOK_TYPE  # github | generic


@dataclass
class GitConfig:
    """One git block. `path` is absolute (the site root joined with PATH); `branch` None means
    the remote's default branch (what its HEAD names), which the first clone checks out."""

    repo: str
    path: str
    branch: str | None = None
    key: str | None = None  # SSH private key file
    interval: float = DEFAULT_INTERVAL
    hook: HookConfig | None = None
    then: list[list[str]] = field(default_factory=list)  # argv lists, run in order
    then_long: list[list[str]] = field(default_factory=list)  # started, not waited for

    @property
    def keeps_static(self) -> bool:
        """The response cache may stay on: the hook answers are never cacheable and a pull
        changes the files' inodes and mtimes, which the cache re-checks."""
        return True


class ValueProblem(ValueError):
    """A value that cannot be used; the message says why (the parser adds file:line)."""


def parse_interval(text: str) -> float:
    """Seconds from `3600`, `90s`, `5m`, `1h` or `1500ms`; at least MIN_INTERVAL."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueProblem(
            f"invalid interval {text!r}: expecting seconds (3600) or a duration (90s, 5m, 1h)"
        )
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds < MIN_INTERVAL:
        raise ValueProblem(
            f"interval {text!r} is too short: the minimum is {MIN_INTERVAL:g} seconds"
        )
    return seconds


def parse_command(text: str) -> list[str]:
    """A `then` command split like a shell would (quotes, backslashes), never run by one."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueProblem(f"cannot split command {text!r}: {exc}") from None
    if not argv:
        raise ValueProblem("empty command")
    return argv


def normalize_repo(repo: str) -> str:
    """The URL git is given for REPO.

    URLs with a scheme, scp-like `user@host:path` and local paths (absolute, or starting with
    `.` or `~`) are kept; `host.tld/owner/name` (Caddy v1's short form) becomes
    `https://host.tld/owner/name`. Anything else is kept as written (a relative local path)."""
    if "://" in repo or _SCP_LIKE.match(repo) or repo.startswith(("/", ".", "~")):
        return repo
    first = repo.split("/", 1)[0]
    if "/" in repo and "." in first:
        return "https://" + repo
    return repo


def same_remote(a: str, b: str) -> bool:
    """Whether two remote URLs name the same repository (`x`, `x/` and `x.git` are one)."""

    def norm(u: str) -> str:
        u = u.strip().rstrip("/")
        return u[:-4] if u.endswith(".git") else u

    return norm(a) == norm(b)


def valid_branch(name: str) -> bool:
    """A conservative subset of git's ref-name rules (enough to refuse typos and options)."""
    if not name or name.startswith(("-", "/", ".")) or name.endswith(("/", ".", ".lock")):
        return False
    if ".." in name or "//" in name or "@{" in name:
        return False
    return not any(c in name for c in " ~^:?*[\\\x7f") and all(ord(c) >= 32 for c in name)
