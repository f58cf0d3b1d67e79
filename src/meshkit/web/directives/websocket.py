"""websocket: a command behind a websocket (Caddy v1).

    websocket [PATH] COMMAND        # PATH defaults to /; COMMAND is one token, quoted when it
                                    # has arguments: websocket /echo "cat -n"
    websocket PATH COMMAND {
        respawn                     # accepted, as in v1, where it had no effect either
    }

Each websocket connection to PATH (a base path, the first matching rule wins) runs COMMAND:
every message from the client goes to its stdin followed by a newline, every line it writes
becomes a text message (see meshkit.web.wsbridge). The command's environment is v1's CGI-style
set (REMOTE_ADDR, QUERY_STRING, HTTP_* ...) and nothing else, no PATH either; COMMAND itself is
looked up on the server's PATH. A request to PATH that is no websocket handshake gets 400.
Over HTTPS (HTTP/1.1) it works the same; over HTTP/2 the upgrade is not available (501).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site
from meshkit.web.wsbridge import Bridge, cgi_env, handshake, resolve, switching

log = logging.getLogger("meshkit.web")


@dataclass
class Socket:
    path: str
    command: str
    arguments: list[str] = field(default_factory=list)
    respawn: bool = False


@dataclass
class WebSocketConfig:
    sockets: list[Socket] = field(default_factory=list)


def _block(d: Dispenser) -> tuple[bool, bool]:
    """(had a block, respawn) of an optional `{ respawn }` block."""
    had = respawn = False
    for _ in d.block():
        had = True
        if d.val() != "respawn":
            raise d.err(f"expected websocket configuration parameter in block, got {d.val()!r}")
        if d.remaining_args():
            raise d.arg_err()
        respawn = True
    return had, respawn


def parse(d: Dispenser, site: Site) -> WebSocketConfig:
    config = WebSocketConfig()
    while d.next():
        first = d.arg()
        had, respawn = _block(d)
        path, command = "/", first
        if not had:
            if d.next_arg():
                path, command = first, d.val()
            _, respawn = _block(d)
        if d.next_arg():
            raise d.err(
                f"unexpected {d.val()!r}: the command and its arguments are one token, "
                'quote them: websocket PATH "COMMAND ARGS..."'
            )
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise d.err(f"cannot split command {command!r}: {exc}") from None
        if not argv:
            raise d.err("websocket needs a command")
        config.sockets.append(Socket(path, argv[0], argv[1:], respawn))
    return config


class WebSocketHandler:
    def __init__(self, config: WebSocketConfig, next: Handler) -> None:
        self.rules = [(clamp_path(s.path), (s.command, *s.arguments)) for s in config.sockets]
        self.next = next

    def __call__(self, request: Request) -> HandlerResult:
        path = request.path
        for base, argv in self.rules:
            if path.startswith(base):
                return self._serve(request, argv)
        return self.next(request)

    async def _serve(self, request: Request, argv: tuple[str, ...]) -> Response:
        # Answered from a task, not synchronously: the HTTP/1 connection learns that the
        # request asked to upgrade (and which bytes followed its head) only once the parser
        # returns from the read that completed the head, after a synchronous answer.
        error, accept = handshake(request)
        if error is not None:
            return error
        script = resolve(argv)
        if script is None:
            log.error("websocket %s: command %r not found", request.path, argv[0])
            return Response.error(502)
        bridge_argv = (script, *argv[1:])
        env = cgi_env(request, script)

        async def run(sock: object, rest: bytes) -> None:
            await Bridge(bridge_argv, env).run(sock, rest)  # type: ignore[arg-type]

        return switching(accept, run)


def build(config: WebSocketConfig, next: Handler, site: Site) -> Handler:
    return WebSocketHandler(config, next)


register("websocket", parse, build)
