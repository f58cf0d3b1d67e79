"""What a FastCGI site hands the HTTP server for a request sent with Client.start(): a
Future resolved from the FastCGI connection's callbacks, and the Response for a reply.

    fut = Pending(loop)                        # the handler returns it
    client.start(params, head_only, Answer(fut, head_only))

Pending is an asyncio.Future whose one done-callback (the server pipeline's, added right
after the handler returned it) runs at once when the reply is in, from the connection's
data_received: the response is written to the client in the same loop turn as php-fpm's
reply was read, not one turn later through call_soon (a Handle and a loop iteration per
request, about a tenth of the server's CPU on a Hello World). Any further callback, or one
added after the Future is done, runs through asyncio as usual. Cancelling it (the client went
away) leaves the reply to Answer, which drops a streamed body's connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from meshkit.web.fastcgi.client import FastCGIError, Reply, StreamBody
from meshkit.web.message import Response

__all__ = ["Answer", "Pending", "response_for"]


class Pending(asyncio.Future):  # type: ignore[type-arg]  # Future[Response] at runtime too
    """A Future[Response] whose first done-callback is called synchronously by resolve()."""

    _then: Callable[[Any], object] | None = None  # class default: no __init__ to run

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        if self._then is None and context is None and not self.done():
            self._then = fn
            return
        super().add_done_callback(fn, context=context)

    def resolve(self, response: Response) -> None:
        """Set the result and run the kept callback now (nothing when already cancelled)."""
        if self.done():
            return
        self.set_result(response)
        then = self._then
        if then is not None:
            self._then = None
            try:
                then(self)
            except Exception as exc:
                # as asyncio reports a failing callback: the FastCGI connection whose
                # data_received runs this must not be torn down by the HTTP side's error
                self.get_loop().call_exception_handler(
                    {"message": "Pending callback failed", "exception": exc, "future": self}
                )

    def cancel(self, msg: Any = None) -> bool:
        self._then = None  # a cancelled request's callback is asyncio's business
        return super().cancel(msg)


def response_for(reply: Reply | FastCGIError, head_only: bool) -> Response:
    """What the client gets for a reply (or a failed exchange)."""
    if isinstance(reply, FastCGIError):
        return Response.error(reply.status)
    if head_only and "Content-Length" not in reply.headers:
        if isinstance(reply.body, StreamBody):
            reply.body.close()
        # an empty bytes body would make the server announce Content-Length: 0, which is
        # not the length a GET would get; a stream leaves the length out
        return Response(reply.status, reply.headers, _nothing())
    return Response(reply.status, reply.headers, reply.body)


class Answer:
    """Client.start()'s callback: resolves a request's Pending with the Response."""

    __slots__ = ("fut", "head_only")

    def __init__(self, fut: Pending, head_only: bool) -> None:
        self.fut = fut
        self.head_only = head_only

    def __call__(self, reply: Reply | FastCGIError) -> None:
        fut = self.fut
        if fut.done():
            # cancelled: the client went away; a streamed reply's connection is dropped
            if isinstance(reply, Reply) and isinstance(reply.body, StreamBody):
                reply.body.close()
            return
        if type(reply) is Reply and type(reply.body) is bytes and not self.head_only:
            fut.resolve(Response(reply.status, reply.headers, reply.body))
            return
        fut.resolve(response_for(reply, self.head_only))


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
