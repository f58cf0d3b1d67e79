"""on EVENT COMMAND [ARGS...] [&]: run a command at a process event (Caddy v1.0's onevent).

    on startup  /usr/local/bin/warm-cache --all
    on shutdown sh -c 'echo bye >> /var/log/site.log'
    on certrenew systemctl reload postfix &

EVENT is `startup`, `shutdown` or `certrenew` (meshkit.web.hooks says when each happens);
Caddy's `instance_startup` is not available (meshkit has no instances to restart). The
command's words are split as a shell would ('single' or "double" quotes group words; no
variables or pipes: `sh -c '...'` for those) and the command must be found on PATH, or be
a path that exists, when the Caddyfile is read. A last `&` runs it in the background.
`startup CMD` and `shutdown CMD` are the same as `on startup CMD` and `on shutdown CMD`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from typing import ClassVar

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.hooks import EVENTS, Command
from meshkit.web.site import Site


@dataclass
class HooksConfig:
    commands: list[Command] = field(default_factory=list)

    keeps_static: ClassVar[bool] = True  # nothing per request


def command(d: Dispenser, event: str, args: list[str]) -> Command:
    """The command of one line (its words after the event), checked."""
    if not args:
        raise d.arg_err()
    # as Caddy v1 did: the words joined and split again as a shell would (so 'single quotes'
    # group words), keeping the groups "double quotes" made in the Caddyfile
    joined = " ".join(shlex.quote(a) if any(c.isspace() for c in a) else a for a in args)
    try:
        argv = shlex.split(joined)
    except ValueError as exc:
        raise d.err(f"{event}: cannot split the command: {exc}") from None
    if not argv:
        raise d.arg_err()
    background = False
    if len(argv) > 1 and argv[-1] == "&":
        background, argv = True, argv[:-1]
    prog = argv[0]
    if os.sep in prog:
        if not os.path.isfile(prog) or not os.access(prog, os.X_OK):
            raise d.err(f"{event}: {prog!r} is not an executable file")
    elif shutil.which(prog) is None:
        raise d.err(f"{event}: command {prog!r} is not found on PATH")
    return Command(event, tuple(argv), background, d.token().where())


def parse_event(d: Dispenser, event: str) -> HooksConfig:
    """`startup` / `shutdown` lines: the command after the directive's name."""
    config = HooksConfig()
    while d.next():
        config.commands.append(command(d, event, d.remaining_args()))
        for _ in d.block():
            raise d.err(f"{event} takes no block")
    return config


def parse(d: Dispenser, site: Site) -> HooksConfig:
    config = HooksConfig()
    while d.next():
        args = d.remaining_args()
        if not args:
            raise d.arg_err()
        event = args[0].lower()
        if event not in EVENTS:
            raise d.err(f"on: unknown event {args[0]!r} (expecting {', '.join(EVENTS)})")
        config.commands.append(command(d, event, args[1:]))
        for _ in d.block():
            raise d.err("on takes no block")
    return config


register("on", parse, passthrough)
