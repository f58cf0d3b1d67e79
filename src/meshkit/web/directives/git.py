"""git: deploy the site from a git repository (Caddy v1's http.git).

    git REPO [PATH]
    git [REPO [PATH]] {
        repo      REPO         # URL, user@host:path, or a local path (relative to the cwd)
        path      PATH         # the checkout, relative to the site root (default: the root)
        branch    BRANCH       # default: the remote's default branch (its HEAD)
        key       FILE         # SSH private key (ssh -i FILE -o IdentitiesOnly=yes)
        interval  SECONDS      # between pulls: 3600 (also 90s, 5m, 1h); at least 5 s
        hook      PATH SECRET  # answer push webhooks on PATH: pull at once
        hook_type github|generic
        then      CMD [ARGS]   # after each sync that changed something, in the checkout
        then_long CMD [ARGS]   # the same, started in the background, not waited for
    }

Clones on start (in the background: the site serves what the folder holds meanwhile), then
pulls every interval and on each accepted webhook; a failed pull keeps the last good checkout,
is logged with git's whole error, and is tried again at the next interval (see
meshkit.web.gitdeploy). Several git blocks per site are allowed, each with its own PATH.

Differences from Caddy v1, on purpose:
- `branch` defaults to the remote's default branch, not `master`;
- a `hook` needs a SECRET (an unauthenticated URL that makes the server pull is a DoS lever);
  `hook_type` is github (HMAC-SHA256 signature, only pushes to the branch pull) or generic
  (the secret in an `X-Hook-Secret` header or `?secret=`); see gitdeploy/hooks.py;
- an absolute PATH is used as it is rather than put under the root;
- a `then` with one argument is split like a shell would (`then "hugo --minify"`); with
  several, each Caddyfile token is one argument (quotes group words). Never run by a shell;
- `clone_args` / `pull_args` are refused: the sync is always fetch + forced checkout;
- the checkout's `.git/` folder is never served (it is added to the site's internal paths
  when it lies under the root).
The first sync of a puller always runs `then` (its output may not exist yet), as Caddy did.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.gitdeploy.config import (
    HOOK_TYPES,
    GitConfig,
    HookConfig,
    ValueProblem,
    normalize_repo,
    parse_command,
    parse_interval,
    valid_branch,
)
from meshkit.web.gitdeploy.hooks import MAX_HOOK_BODY, check_method, decide
from meshkit.web.gitdeploy.plan import CheckoutProblem, sync_kind
from meshkit.web.gitdeploy.puller import GitPuller, inspect_checkout
from meshkit.web.message import BodyTooLarge, Handler, HandlerResult, Request, Response
from meshkit.web.site import Site

log = logging.getLogger("meshkit.web.git")

UNSUPPORTED = {
    "clone_args": "clone_args is not supported: meshkit always clones with --recurse-submodules",
    "pull_args": "pull_args is not supported: meshkit syncs with fetch + a forced checkout",
}


@dataclass
class GitDirectiveConfig:
    repos: list[GitConfig] = field(default_factory=list)

    @property
    def keeps_static(self) -> bool:
        """Webhook answers are never cached, and a pull changes the inodes and mtimes the
        response cache re-checks: the site's static-file fast path can stay on."""
        return True


@dataclass
class _Draft:
    repo: str = ""
    path: str = ""
    branch: str | None = None
    key: str | None = None
    interval: str | None = None
    hook: HookConfig | None = None
    hook_type: str | None = None
    then: list[list[str]] = field(default_factory=list)
    then_long: list[list[str]] = field(default_factory=list)


def _command(d: Dispenser, args: list[str]) -> list[str]:
    if not args:
        raise d.arg_err()
    if len(args) > 1:
        return args
    try:
        return parse_command(args[0])
    except ValueProblem as exc:
        raise d.err(str(exc)) from None


def _one(d: Dispenser, name: str, args: list[str]) -> str:
    if len(args) != 1:
        raise d.err(f"{name} takes exactly one value, got {len(args)}")
    return args[0]


def _read_block_line(d: Dispenser, draft: _Draft) -> None:
    name = d.val()
    # one-value options read one token, as Caddy's git plugin does (NextArg): what follows on
    # the line is the next option
    if name in ("repo", "path", "branch", "key", "interval", "hook_type"):
        args = [d.arg()]
    elif name == "hook":
        args = [d.arg()]
        if d.next_arg():
            args.append(d.val())
    else:
        args = d.remaining_args()
    if name == "repo":
        draft.repo = _one(d, name, args)
    elif name == "path":
        draft.path = _one(d, name, args)
    elif name == "branch":
        branch = _one(d, name, args)
        if not valid_branch(branch):
            raise d.err(f"invalid branch name {branch!r}")
        draft.branch = branch
    elif name == "key":
        draft.key = _one(d, name, args)
    elif name == "interval":
        value = _one(d, name, args)
        try:
            parse_interval(value)
        except ValueProblem as exc:
            raise d.err(str(exc)) from None
        draft.interval = value
    elif name == "hook":
        if len(args) == 1:
            raise d.err(
                "hook needs a secret: `hook PATH SECRET` (an unauthenticated hook would let "
                "anyone make the server pull)"
            )
        if len(args) != 2:
            raise d.arg_err()
        if not args[0].startswith("/"):
            raise d.err(f"hook path {args[0]!r} must start with '/'")
        if not args[1]:
            raise d.err("hook secret is empty")
        draft.hook = HookConfig(args[0], args[1])
    elif name == "hook_type":
        kind = _one(d, name, args)
        if kind not in HOOK_TYPES:
            raise d.err(f"unknown hook_type {kind!r} (expecting {' or '.join(HOOK_TYPES)})")
        draft.hook_type = kind
    elif name == "then":
        draft.then.append(_command(d, args))
    elif name == "then_long":
        draft.then_long.append(_command(d, args))
    elif name in UNSUPPORTED:
        raise d.err(UNSUPPORTED[name])
    else:
        raise d.err(
            f"unknown git property {name!r} (expecting repo, path, branch, key, interval, "
            "hook, hook_type, then or then_long)"
        )


def _finish(d: Dispenser, draft: _Draft, site: Site) -> GitConfig:
    if not draft.repo:
        raise d.err("git needs a repository: `git REPO [PATH]` or `repo REPO` in its block")
    repo = normalize_repo(draft.repo)
    local = os.path.expanduser(repo)
    if repo.startswith(("/", ".", "~")) or ("://" not in repo and os.path.exists(local)):
        # git records a local remote by its absolute path: compare like with like later
        repo = os.path.abspath(local)
    root = os.path.abspath(site.root)
    path = os.path.abspath(os.path.join(root, os.path.expanduser(draft.path or ".")))
    key = None
    if draft.key:
        key = os.path.abspath(os.path.expanduser(draft.key))
        if not os.path.isfile(key):
            raise d.err(f"key file {key} not found")
    if draft.hook_type and draft.hook is None:
        raise d.err("hook_type without a hook")
    hook = draft.hook
    if hook is not None and draft.hook_type:
        hook = HookConfig(hook.path, hook.secret, draft.hook_type)
    try:
        sync_kind(inspect_checkout(path), repo, path)
    except CheckoutProblem as exc:
        # a clone of another repository is only known once git is asked (at start); a folder
        # that no clone can go into is known now
        if "is not empty" in str(exc) or "not a folder" in str(exc):
            raise d.err(str(exc)) from None
    except OSError as exc:
        raise d.err(f"cannot look at {path}: {exc.strerror or exc}") from None
    return GitConfig(
        repo=repo,
        path=path,
        branch=draft.branch,
        key=key,
        interval=parse_interval(draft.interval) if draft.interval else GitConfig.interval,
        hook=hook,
        then=draft.then,
        then_long=draft.then_long,
    )


def _hide_git_folder(site: Site, path: str) -> None:
    root = os.path.abspath(site.root)
    rel = os.path.relpath(path, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return  # outside the root: not served anyway
    prefix = "/" if rel == "." else "/" + rel.replace(os.sep, "/") + "/"
    internal = prefix + ".git/"
    if internal not in site.internal:
        site.internal.append(internal)


def parse(d: Dispenser, site: Site) -> GitDirectiveConfig:
    config = GitDirectiveConfig()
    paths: dict[str, int] = {}
    hooks: dict[str, int] = {}
    while d.next():
        line = d.line()
        args = d.remaining_args()
        if len(args) > 2:
            raise d.arg_err()
        draft = _Draft()
        if args:
            draft.repo = args[0]
        if len(args) == 2:
            draft.path = args[1]
        for _ in d.block():
            _read_block_line(d, draft)
        repo = _finish(d, draft, site)
        if repo.path in paths:
            raise d.err(
                f"{repo.path} is already the checkout of the git directive on line "
                f"{paths[repo.path]}: give each git block its own path"
            )
        paths[repo.path] = line
        if repo.hook is not None:
            if repo.hook.path in hooks:
                raise d.err(
                    f"hook path {repo.hook.path} is already used by the git directive on line "
                    f"{hooks[repo.hook.path]}"
                )
            hooks[repo.hook.path] = line
        _hide_git_folder(site, repo.path)
        config.repos.append(repo)
    return config


async def answer_hook(request: Request, hook: HookConfig, puller: GitPuller) -> Response:
    """The webhook's answer (and the pull it asks for)."""
    refused = check_method(request.method)
    if refused is not None:
        response = Response.error(405)
        response.headers.set("Allow", "POST")
        return response
    body = request.body
    if body.limit is None or body.limit > MAX_HOOK_BODY:
        body.limit = MAX_HOOK_BODY
    try:
        data = await body.read_all()
    except BodyTooLarge:
        return Response.error(413)
    verdict = decide(hook, request.method, request.headers, request.query, data, puller.branch)
    level = logging.INFO if verdict.status == 200 else logging.WARNING
    log.log(
        level,
        "git %s: webhook %s from %s: %d %s",
        puller.config.path,
        hook.path,
        request.remote_addr,
        verdict.status,
        verdict.message,
    )
    if verdict.pull:
        puller.request_pull()
    if verdict.status != 200:
        return Response.error(verdict.status)
    return Response.text(200, verdict.message + "\n")


def build(config: GitDirectiveConfig, next: Handler, site: Site) -> Handler:
    hooks: dict[str, tuple[HookConfig, GitPuller]] = {}
    for repo in config.repos:
        puller = GitPuller(repo)
        site.background.append(puller)
        if repo.hook is not None:
            hooks[repo.hook.path] = (repo.hook, puller)
    if not hooks:
        return next

    def git_hook_handler(request: Request) -> HandlerResult:
        entry = hooks.get(request.path)
        if entry is None:
            return next(request)
        return answer_hook(request, *entry)

    return git_hook_handler


register("git", parse, build)
