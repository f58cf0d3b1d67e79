"""Which git commands a sync runs, decided from facts about the checkout folder (pure).

A sync either clones (the folder is missing or empty) or updates an existing clone of the
same repository. Any other folder is refused with a message saying what is there.

An update is `git fetch` of the one branch, then `git checkout -f -B BRANCH origin/BRANCH`
(a hard reset onto what was fetched), not `git pull`:
- a failed fetch (remote gone, network down, auth refused) changes nothing in the working tree
  or the index, so the site keeps serving the last good checkout; the local step only runs
  after the fetch worked and touches only local objects;
- a force-pushed branch still deploys (`pull --ff-only` would fail on it forever, and a merge
  could stop half-way with conflicts in the served files);
- changes made by hand in the checkout are overwritten: the checkout is a deployment, the
  repository is the source of truth. Untracked files (the output of `then`) are left alone.
Submodules are updated when the checkout has a `.gitmodules`.

Without a configured branch the clone checks out the remote's default branch (its HEAD), and
later syncs follow whatever branch the checkout is on.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from meshkit.web.gitdeploy.config import same_remote


@dataclass(frozen=True)
class CheckoutFacts:
    """What the shell found at the checkout path."""

    exists: bool
    is_dir: bool = True
    empty: bool = True
    is_clone: bool = False  # has a .git (folder or gitfile)
    origin: str | None = None  # `remote.origin.url` of that clone


class CheckoutProblem(Exception):
    """The checkout path cannot be used; the message says why."""


def sync_kind(facts: CheckoutFacts, repo: str, path: str) -> str:
    """ "clone" or "update"; raises CheckoutProblem for a path that is neither."""
    if not facts.exists:
        return "clone"
    if not facts.is_dir:
        raise CheckoutProblem(f"{path} exists and is not a folder: cannot clone {repo} there")
    if facts.is_clone:
        if facts.origin is None:
            raise CheckoutProblem(
                f"{path} is a git clone without an 'origin' remote, not a clone of {repo}"
            )
        if not same_remote(facts.origin, repo):
            raise CheckoutProblem(
                f"{path} is a clone of {facts.origin}, not of {repo}: "
                "remove it or give the git directive another path"
            )
        return "update"
    if facts.empty:
        return "clone"
    raise CheckoutProblem(
        f"{path} is not empty and is not a git clone of {repo}: git can only clone into an "
        "empty or missing folder (move its files away or give the git directive another path)"
    )


def clone_argv(repo: str, path: str, branch: str | None) -> list[str]:
    argv = ["git", "clone", "--recurse-submodules"]
    if branch:
        argv += ["--branch", branch]
    return [*argv, "--", repo, path]


def fetch_argv(branch: str) -> list[str]:
    refspec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
    return ["git", "fetch", "--prune", "origin", refspec]


def checkout_argv(branch: str) -> list[str]:
    return ["git", "checkout", "-f", "-B", branch, f"refs/remotes/origin/{branch}"]


SUBMODULE_ARGV = ["git", "submodule", "update", "--init", "--recursive", "--force"]
HEAD_ARGV = ["git", "rev-parse", "--verify", "--quiet", "HEAD"]
BRANCH_ARGV = ["git", "symbolic-ref", "--quiet", "--short", "HEAD"]
ORIGIN_ARGV = ["git", "config", "--get", "remote.origin.url"]


def git_env(base: Mapping[str, str], key: str | None) -> dict[str, str]:
    """The environment git runs with: never prompting for credentials (there is nobody to
    answer), and with `key` as the only SSH identity when one is configured. New host keys are
    accepted on first use (a server has nobody to confirm them either); changed ones are
    refused by ssh."""
    env = dict(base)
    env["GIT_TERMINAL_PROMPT"] = "0"
    if key:
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {shlex.quote(key)} -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=accept-new"
        )
    return env
