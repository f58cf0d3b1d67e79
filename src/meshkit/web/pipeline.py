"""Requests of one connection in order (HTTP/1.1 pipelining): the queue of response slots,
handing requests to the handler, awaiting the handlers' answers, writing them in turn.

Pipeline is a base of meshkit.web.connection.Connection (one object, so the synchronous fast
path pays no extra call); it also holds the server's own answers (refused heads, malformed
bodies) because they take their turn in the same queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any

from meshkit.web.connstate import PARTS, ConnState, Event
from meshkit.web.http1 import CONTINUE_BYTES
from meshkit.web.message import BodyTooLarge, Request, Response
from meshkit.web.output import (
    Job,
    ResponseWriter,
    _cancel,
    _complete,
    _discard_body,
    _server_error,
    _too_large,
)
from meshkit.web.reqbody import BadRequestBody, RequestBody
from meshkit.web.respcache import CachedResponse

log = logging.getLogger("meshkit.web")

_BODY = ConnState.BODY
_CLOSING_BODY = ConnState.CLOSING_BODY
_UPGRADED = ConnState.UPGRADED
_IDLE = ConnState.IDLE


class Slot:
    """A response to be written in request order; `response` is None until it is ready.

    `deferred`: the request waits for its turn to reach the handler (see _may_dispatch);
    `awaited`: the handler answered with an awaitable (an upstream exchange, typically)."""

    __slots__ = ("awaited", "deferred", "keep", "request", "response", "task")

    def __init__(self, request: Request, keep: bool) -> None:
        self.request = request
        self.keep = keep
        self.response: Response | None = None
        # the task awaiting the handler's result, or the handler's own Future (see on_result)
        self.task: asyncio.Future[Any] | None = None
        self.deferred = False
        self.awaited = False


class Pipeline(ResponseWriter):
    """The response slots of a connection, in request order, and who fills them."""

    __slots__ = PARTS  # the fields are Connection's

    _queue: deque[Slot]
    # requests of _queue not handed to the handler yet (in order), and how many slots of
    # _queue wait on an awaitable: the bound on upstream work per connection
    _deferred: deque[Slot]
    _awaited: int
    _start_time: float
    _key: bytes | None
    _feed_msgs: int

    def _queued(self) -> bool:
        return bool(self._queue)

    def _call_handler(self, request: Request) -> Any:
        """The handler's result for request: a Response or an awaitable of one."""
        try:
            return self._server._handler(request)
        except BodyTooLarge:
            return _too_large()
        except BadRequestBody:
            return _bad_request()
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.uri)
            return _server_error()

    def _await_result(self, slot: Slot, result: Any) -> None:
        slot.awaited = True
        self._awaited += 1
        if isinstance(result, asyncio.Future):
            # A handler that answers from protocol callbacks (the proxy's and FastCGI's fast
            # paths) returns a plain Future: waiting on it with a callback instead of a task
            # saves a task, a coroutine and a loop turn per request.
            slot.task = result
            result.add_done_callback(functools.partial(self._future_done, slot))
        else:
            slot.task = self._loop.create_task(self._await_response(slot, result))

    def _may_dispatch(self) -> bool:
        """Whether a request may reach the handler now. Awaited results (proxy, FastCGI)
        of one connection run in order, at most one ahead of the response being written:
        two exchanges in flight at most, as nginx and Caddy (which serve the requests of a
        connection one after the other) come close to; synchronous answers (static files)
        keep their fast path while no exchange is pending."""
        n = self._awaited
        return n == 0 or (n == 1 and not (self._out or self._streaming))

    def _dispatch_deferred(self) -> bool:
        """Hand waiting requests to the handler, in order, while _may_dispatch allows;
        whether any was."""
        deferred = self._deferred
        dispatched = False
        while deferred and self._state < _UPGRADED and self._may_dispatch():
            slot = deferred.popleft()
            slot.deferred = False
            dispatched = True
            result = self._call_handler(slot.request)
            if type(result) is Response or isinstance(result, Response):
                slot.response = result
            else:
                self._await_result(slot, result)
        return dispatched

    def _future_done(self, slot: Slot, fut: asyncio.Future[Response]) -> None:
        if fut.cancelled():
            return  # the connection went away and cancelled it (_drop_slots)
        exc = fut.exception()
        response: Response
        if exc is None:
            result = fut.result()
            if isinstance(result, Response):
                response = result
            else:
                exc = TypeError(f"handler returned {type(result).__name__}, not a Response")
        if exc is not None:
            if isinstance(exc, BodyTooLarge):
                response = _too_large()
            elif isinstance(exc, BadRequestBody):
                response = _bad_request()
            else:
                if self._state >= _UPGRADED:
                    return
                log.error(
                    "handler failed for %s %s",
                    slot.request.method,
                    slot.request.uri,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
                response = _server_error()
        self._take_response(slot, response)

    async def _await_response(self, slot: Slot, result: Awaitable[Response]) -> None:
        try:
            response = await result
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not a Response")
        except asyncio.CancelledError:
            raise
        except BodyTooLarge:
            response = _too_large()
        except BadRequestBody:
            response = _bad_request()
        except Exception:
            if self._state >= _UPGRADED:
                return
            log.exception("handler failed for %s %s", slot.request.method, slot.request.uri)
            response = _server_error()
        self._take_response(slot, response)

    def _take_response(self, slot: Slot, response: Response) -> None:
        slot.task = None
        if self._state >= _UPGRADED or slot not in self._queue or slot.response is not None:
            # The connection went away meanwhile (nothing will write this response), or the
            # server answered in its place (a malformed body: _refuse_request).
            _discard_body(response.body)
            _complete(slot.request, response, 0)
            return
        slot.response = response
        self._flush_queue()

    def _flush_queue(self) -> None:
        # self._queue, not a local: a closing response empties it (_drop_slots)
        while self._state < _UPGRADED:
            queue = self._queue
            while queue and not self._streaming and self._state < _UPGRADED:
                slot = queue[0]
                response = slot.response
                if response is None:
                    break
                queue.popleft()
                if slot.awaited:
                    self._awaited -= 1
                self._write_response(slot.request, response, slot.keep)
            if not self._deferred or not self._dispatch_deferred():
                break
        if self._state < _UPGRADED:
            self._update_reading()
            if not self._busy():
                self._went_idle()

    def _refuse_request(self, status: int) -> None:
        """Answer a request the server refuses itself (after any earlier responses), close.

        A failure inside a body whose request was dispatched already fails that body with
        BadRequestBody, and the server answers 400 in place of the request's own response
        unless that response has begun to go out (then the connection just closes after
        it)."""
        state = self._state
        if _BODY <= state <= _CLOSING_BODY:
            body, self._body = self._body, None
            self._fire(Event.BAD_BODY)
            if body is not None:
                body.fail(BadRequestBody())
            slot = self._unstarted_slot(body)
            if slot is None:
                self._fire(Event.CLOSE_WHEN_DONE)
                if not self._busy():
                    self._close_gracefully()
                else:
                    self._update_reading()
                return
            self._replace_response(slot, _bad_request())
            self._flush_queue()
            return
        self._fire(Event.REFUSE)
        request = Request(
            method="GET",
            uri="",
            path="",
            remote_addr=self._remote_addr,
            remote_port=self._remote_port,
            server_addr=self._local_addr,
            server_port=self._local_port,
            start_time=self._start_time,
        )
        response = Response.error(status)
        response.close = True
        if not self._queue and not self._streaming:
            self._write_response(request, response, False)
        else:
            slot = Slot(request, False)
            slot.response = response
            self._queue.append(slot)
        self._update_reading()

    def _unstarted_slot(self, body: RequestBody | None) -> Slot | None:
        """The slot of body's request while its response has not begun to go out."""
        if body is None or body.request is None:
            return None
        for slot in self._queue:
            if slot.request is body.request:
                return slot
        return None

    def _replace_response(self, slot: Slot, response: Response) -> None:
        """Answer slot with response instead of what its handler gives (or gave)."""
        if slot.task is not None:
            task, slot.task = slot.task, None
            _cancel(self._loop, task)
        if slot.deferred:
            slot.deferred = False
            self._deferred.remove(slot)
        if slot.response is not None:
            _discard_body(slot.response.body)
        slot.response = response

    def _send_continue(self, body: RequestBody) -> None:
        if self._state > _BODY:
            return
        if self._queue and self._queue[0].request is body.request and not self._streaming:
            self._emit(Job(CONTINUE_BYTES))

    def _remember(self, data: bytes, cand: CachedResponse) -> None:
        """Keep `cand` for the request head `data` if this read held exactly that one whole
        request (so that the same bytes next time mean the same request)."""
        if (
            self._key is data
            and self._feed_msgs == 1
            and (self._state <= _IDLE or cand.closes)  # (a closing one ended the reading)
            and self._server._caching
        ):
            self._server._cache.put(data, cand)
        else:
            cand.close()

    def _drop_slots(self) -> None:
        """Forget responses that will not be written: cancel their handlers, release their
        files and tell their on_complete callbacks (0 bytes sent)."""
        queue = list(self._queue)
        self._queue.clear()  # in place: _flush_queue may be iterating it
        self._deferred.clear()
        self._awaited = 0
        for slot in queue:
            if slot.task is not None:
                _cancel(self._loop, slot.task)
            response = slot.response
            if response is not None:
                # a streamed body (a proxied response) holds its upstream connection
                _discard_body(response.body)
                _complete(slot.request, response, 0)


def _bad_request() -> Response:
    response = Response.error(400)
    response.close = True
    return response
