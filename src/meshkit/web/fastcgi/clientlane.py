"""The FastCGI lane's Python half: what the compiled client lane (meshkit._fastpath,
_fcgilane.pxi) asks once per request shape, and the rare paths it hands back.

The compiled lane serves a plain HTTP/1.1 GET or HEAD without a body to a site whose only
handler is `fastcgi` (or `log` + `fastcgi`) without a Python frame of the HTTP handler chain:
the request head read in one recv(2) is looked up by its bytes (with the client's address
and the local port) in a table of plans. A plan is made once per shape here, by the rules
FastCGIHandler uses: the rule that takes the path, its split decided from the path alone
(the handler's `_plan`: only the script's is_file() is left, asked per request as the
handler asks it), and the PARAMS of the request bar the client's REMOTE_* (the same
static_env/request_env/`env` pairs, encoded once). Per request the lane stats the script,
takes a kept connection of the rule's upstream (the same pool the handler uses), writes
BEGIN_REQUEST + PARAMS + empty STDIN in one write and, when the reply comes whole in one
read (the C record layer's quick_reply), writes status line, fields and body to the client
in one send(2).

A POST, PUT or PATCH with a small body (one plain Content-Length up to 64 KiB, head and
whole body in the one read; meshkit.web.bodyhead) is planned by its head: the
PARAMS carry CONTENT_LENGTH (and CONTENT_TYPE) as the handler's _serve sets them, the plan's
wire is BEGIN_REQUEST + PARAMS, and the lane appends the body's STDIN records per request.

Declined (the Python path serves the request as today): other methods, chunked bodies,
Expect, bodies larger than 64 KiB or not whole in the read, HTTP/1.0,
`Connection: close`, folder paths (index files), paths the split does not give a script,
`except` paths, `env` lines with placeholders, rules with several upstreams (round robin),
no kept connection idle (the handler dials), and sites with any other directive. Answers the
lane does not write itself go through the connection's pipeline as the handler's Response
(`deliver`): stderr output, a reply that did not come whole in one read (streamed), errors
and timeouts (the client's _Ready rules: a stale kept connection is sent again on a fresh
one), a HEAD, a Content-Length that does not match, a partial send.

MESHKIT_FCGI_LANE=0 (or MESHKIT_LANE=0, MESHKIT_NO_EXTENSIONS=1) turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from meshkit.web.bodyhead import lane_request
from meshkit.web.directives.fastcgi import _CHECK, FastCGIHandler, _Rule
from meshkit.web.fastcgi.answer import response_for
from meshkit.web.fastcgi.client import FastCGIError, Reply, _Ready
from meshkit.web.fastcgi.connection import REQUEST_ID, Connection
from meshkit.web.fastcgi.env import Target, remote_env, request_env
from meshkit.web.fastcgi.fast import encode_pairs, encode_request
from meshkit.web.lanerequest import complete, copy_request, queue_rest
from meshkit.web.message import Headers, Request, Response
from meshkit.web.proxy.clientlane import deliver, handler_of
from meshkit.web.router import Router

__all__ = ["BODY_METHODS", "ENABLED", "METHODS", "Plan", "plan", "router_may"]

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_WIRES = 256  # encoded requests remembered per plan (one per client port)


def _enabled() -> bool:
    off = ("0", "off", "no", "false")
    return os.environ.get("MESHKIT_FCGI_LANE", "").strip().lower() not in off


ENABLED = _enabled()


class Plan:
    """One request shape of one client address on one local port: what the compiled lane
    needs to send it to php-fpm, made once."""

    __slots__ = (
        "body_length",
        "client",
        "head_only",
        "local_port",
        "log_memo",
        "log_second",
        "post",
        "pre",
        "remote_addr",
        "request",
        "router",
        "rule",
        "script",
        "timeout",
        "upstream",
        "watch",
        "wires",
    )

    def __init__(
        self,
        router: Router,
        request: Request,
        rule: _Rule,
        target: Target,
        script: str,
        watch: Callable[[Request], None] | None,
        body_length: int = 0,
    ) -> None:
        self.router = router
        self.body_length = body_length  # the Content-Length of a body plan (0: none)
        self.request = request  # the template, copied for the rare paths (fresh())
        self.rule = rule
        self.client = rule.client
        self.upstream = rule.client.upstreams[0]
        self.timeout = rule.client.timeouts.read
        self.script = script  # the URL path whose file is_file() checks per request
        self.watch = watch
        self.log_memo: dict[tuple[Any, ...], tuple[Any, tuple[tuple[Any, str], ...]]] = {}
        self.log_second = 0
        self.remote_addr = request.remote_addr
        self.local_port = request.server_port
        self.head_only = request.method == "HEAD"
        # _Rule.params without the client's REMOTE_*: static_env, then (per client)
        # remote_env, then request_env and the rule's literal `env` lines
        self.pre = rule.params_prefix
        self.post = (
            encode_pairs(request_env(request, target, rule.document_root, body_length or None))
            + rule.params_suffix
        )
        self.wires: dict[int, bytes] = {}

    def wire(self, remote_port: int) -> bytes:
        """The whole FastCGI request (one write) for a client on `remote_port`; for a body
        plan, BEGIN_REQUEST and PARAMS only (the lane appends the STDIN records)."""
        remote = encode_pairs(remote_env(self.fresh(remote_port, 0.0, False)))
        stdin = None if self.body_length else b""
        wire = encode_request(REQUEST_ID, self.pre + remote + self.post, stdin)
        if len(self.wires) >= _WIRES:
            self.wires.clear()
        self.wires[remote_port] = wire
        return wire

    def params(self, remote_port: int) -> bytes:
        remote = encode_pairs(remote_env(self.fresh(remote_port, 0.0, False)))
        return self.pre + remote + self.post

    def fresh(self, remote_port: int, start: float, watched: bool = True) -> Request:
        """A Request of this shape for the Python path (its own vars and on_complete, the
        site's log callback added as the log directive adds it)."""
        request = copy_request(self.request, remote_port, start)
        if watched and self.watch is not None:
            self.watch(request)
        return request


def router_may(router: Any) -> bool:
    """Whether any site of this router may take the lane (asked once per router)."""
    if not ENABLED or type(router) is not Router:
        return False
    return any(type(handler_of(site.handler)[0]) is FastCGIHandler for site in router.routes)


def plan(server: Any, conn: Any, data: bytes, body: bool = False) -> Plan | None:
    """The plan of the request head `data` (one whole head) read on `conn`, or None when the
    lane does not take it (then the connection reads it). Without `body` nothing follows
    the head; with it, its Content-Length body follows (bodyhead.body_request)."""
    if not ENABLED:
        return None
    got = lane_request(server, conn, data, body, METHODS, BODY_METHODS)
    if got is None:
        return None
    router, request, site, length = got
    if not body and any(
        n in request.headers for n in ("content-length", "transfer-encoding", "expect")
    ):
        return None
    handler, watch = handler_of(site.handler)
    if type(handler) is not FastCGIHandler:
        return None
    path = request.path
    for rule in handler.rules:
        if not path.startswith(rule.base):
            continue
        # the first rule whose base takes the path decides (FastCGIHandler.__call__ goes on
        # to the next rule only when route() answers None: then the Python path runs)
        if rule.env_dynamic or len(rule.client.upstreams) != 1:
            return None
        kind, script, target = rule._plan(path)
        if kind != _CHECK or not isinstance(target, Target):
            return None
        return Plan(router, request, rule, target, script, watch, length)
    return None


def script_file(plan_: Plan) -> str:
    """The file name _Rule.is_file stats for the plan's script."""
    root = plan_.rule.site_root
    path = plan_.script.lstrip("/")
    return root + path if root.endswith("/") else root + "/" + path


# --- the rare paths -------------------------------------------------------------------------


def _done(sink: Any) -> Callable[[Reply | FastCGIError], None]:
    """_Ready's `done` for the lane's request: its Response through the pipeline."""
    request = sink.plan.fresh(sink.remote_port, sink.start)
    head_only = sink.plan.head_only

    def done(reply: Reply | FastCGIError) -> None:
        deliver(sink.conn, request, response_for(reply, head_only))

    return done


def ready(sink: Any, upconn: Connection) -> None:
    """The FastCGI connection has the reply head (not whole in one read), the end, or an
    error (the lane's sink was its on_ready): Client.start()'s rules from here on."""
    p: Plan = sink.plan
    r = _Ready(p.client, p.params(sink.remote_port), p.head_only, _done(sink), sink.stdin())
    r(upconn)


def fall_back(sink: Any) -> None:
    """The lane's request waited in the full pool's queue and was told to dial (a connection
    closed): Client.request() as the handler's fall-back runs it."""
    p: Plan = sink.plan
    r = _Ready(p.client, p.params(sink.remote_port), p.head_only, _done(sink), sink.stdin())
    r.fall_back([p.upstream])


async def _dial_anyway(plan_: Plan, params: bytes, stdin: bytes) -> Reply:
    """Client._on_upstream after _wait_for_conn timed out: a new connection, one exchange."""
    client = plan_.client
    up = plan_.upstream
    try:
        up.dialling += 1
        try:
            conn = await client._dial(up)
        finally:
            up.dialling -= 1
        return await client._exchange(conn, params, None, stdin, False, plan_.head_only)
    except FastCGIError as e:
        log.error("%s", e.message)  # as Client.request logs it
        raise


def dial(sink: Any) -> None:
    """The lane's request waited the connect timeout in the full pool's queue: dial."""
    p: Plan = sink.plan
    r = _Ready(p.client, p.params(sink.remote_port), p.head_only, _done(sink), sink.stdin())
    task = asyncio.get_running_loop().create_task(_dial_anyway(p, r.params, r.stdin))
    task.add_done_callback(r._retried)


def answered(
    sink: Any, status: int, items: list[tuple[str, str]], length: Any, body: bytes
) -> None:
    """A whole reply the compiled lane does not write itself (the upstream connection is
    already released): _Ready.whole's Reply, answered through the Python writer."""
    headers = Headers(items)
    if length is not None and length != len(body) and not (sink.plan.head_only and not body):
        headers.remove("Content-Length")  # as _Ready.whole
    _done(sink)(Reply(status, headers, body))


def partial(sink: Any, wire: bytes, head_len: int, sent: int, status: int, items: Any) -> None:
    """The client's socket took only `sent` bytes of the answer: the rest as a Job."""
    request = sink.plan.fresh(sink.remote_port, sink.start)
    response = Response(status, Headers(list(items)), wire[head_len:])
    queue_rest(sink.conn, request, response, wire, head_len, sent)


def logged(sink: Any, status: int, items: list[tuple[str, str]], body: bytes, sent: int) -> None:
    """The lane wrote a whole answer (`sent` body bytes) of a logged site: its lines, as the
    writer's on_complete calls would write them. Lines that read nothing per request (the log
    directive's `replayable`) are rendered once per answer shape, client port and second,
    as the proxy lane and the response cache replay them."""
    p: Plan = sink.plan
    now = time.time()
    second = int(now)
    memo = p.log_memo
    if p.log_second != second:
        memo.clear()
        p.log_second = second
    key = (status, sent, sink.remote_port, *items)
    got = memo.get(key)
    if got is not None:
        for out, line in got[1]:
            out.write(line)
        return
    request = p.fresh(sink.remote_port, sink.start)
    response = Response(status, Headers(list(items)), body)
    lines, replayable = complete(request, response, sent, now)
    if replayable:
        if len(memo) >= 64:
            memo.clear()
        memo[key] = (None, lines)
