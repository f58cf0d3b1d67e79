"""Deploying a site from git (the `git` directive, Caddy v1's http.git): clone, pull every
interval and on webhooks, run `then` commands after a change.

    config.py    GitConfig and the pure rules for its values (interval, commands, repo URL)
    hooks.py     webhook verdicts (GitHub signatures, generic secrets) as pure functions
    schedule.py  PullSchedule: the sans-IO state machine deciding when to sync and what follows
    plan.py      clone-or-update decisions and the git command lines (pure)
    puller.py    GitPuller: the asyncio shell running git and the commands
"""

from meshkit.web.gitdeploy.config import GitConfig, HookConfig
from meshkit.web.gitdeploy.hooks import HookVerdict, decide, github_signature
from meshkit.web.gitdeploy.puller import GitPuller
from meshkit.web.gitdeploy.schedule import PullSchedule

__all__ = [
    "GitConfig",
    "GitPuller",
    "HookConfig",
    "HookVerdict",
    "PullSchedule",
    "decide",
    "github_signature",
]
