"""FastCGI's entry for the C client lane: a request without a body for a `fastcgi` site sent
with Client.start() (written at once on a kept connection; a whole small reply decoded by
the C record layer, meshkit.web.fastcgi.fast) and its Response handed to a sink from the
connection's callbacks: no Future and no coroutine per request.

    taken = send(handler, request, sink)      # sink.on_response(response)

`handler` is the site's FastCGIHandler (meshkit.web.directives.fastcgi). send() returns
False without doing anything when the lane does not apply (the request has a body, no rule
takes the path, or the split rule sends it to the file server): call the handler as usual
then. The Response is what the handler would have answered: the script's status, fields and
body (bytes for a reply that came whole, a StreamBody otherwise), or the 502/504 page;
failures keep the client's rules (a stale kept connection is sent again on a fresh one,
an unreachable responder fails over to the next). Works in both modes (the record layer has
its pure-Python twin).
"""

from __future__ import annotations

from typing import Protocol

from meshkit.web.directives.fastcgi import _REFUSED, FastCGIHandler, _response
from meshkit.web.fastcgi.client import FastCGIError, Reply
from meshkit.web.fastcgi.env import Target
from meshkit.web.message import Request, Response

__all__ = ["ResponseSink", "send"]


class ResponseSink(Protocol):
    def on_response(self, response: Response) -> None: ...


class _Told:
    """Client.start()'s callback: the Response for the reply, to the sink."""

    __slots__ = ("head_only", "sink")

    def __init__(self, sink: ResponseSink, head_only: bool) -> None:
        self.sink = sink
        self.head_only = head_only

    def __call__(self, reply: Reply | FastCGIError) -> None:
        self.sink.on_response(_response(reply, self.head_only))


def send(handler: FastCGIHandler, request: Request, sink: ResponseSink) -> bool:
    """Send `request` (no body) to the responder of the rule that takes it and give `sink`
    the Response; False when the lane does not apply."""
    if request.body.length != 0:
        return False
    path = request.path
    for rule in handler.rules:
        if not path.startswith(rule.base):
            continue
        target = rule.target(path)
        if target is _REFUSED:
            return False  # the file server refuses it: the handler answers
        if target is None:
            continue
        assert isinstance(target, Target)
        content_length = 0 if "Content-Length" in request.headers else None
        head_only = request.method == "HEAD"
        params = rule.params(request, target, content_length)
        rule.client.start(params, head_only, _Told(sink, head_only))
        return True
    return False
