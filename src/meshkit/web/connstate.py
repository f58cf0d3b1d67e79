"""The life of one HTTP/1.1 server connection as an explicit state machine (sans-IO).

One enum (ConnState) says where a connection is: reading requests (NEW, IDLE, HEAD, BODY),
winding down (LAST_BODY, LAST, CLOSING_BODY, CLOSING), or gone (LINGERING, UPGRADED, CLOSED).
Every change of state goes through `transition(state, event)`, which returns the new state
and the actions the I/O shell (meshkit.web.connection) must take; an event that makes no
sense in a state raises IllegalTransition instead of leaving the connection inconsistent.

Facts that are not the connection's state stay with the shell: whether responses are in
flight ("busy"), whether the socket is watched for reading or writing, the deadline's clock.
Actions that depend on such a fact (ABORT_IF_IDLE, CLOSE_IF_IDLE) say so by name.
"""

from __future__ import annotations

import enum

__all__ = [
    "ABORT_IF_IDLE",
    "ANSWER",
    "ARM_HEAD",
    "CLOSE_IF_IDLE",
    "FAIL_BODY",
    "NONE",
    "STEPS",
    "STOP",
    "TABLE",
    "ConnState",
    "Event",
    "IllegalTransition",
    "closing",
    "dispatching",
    "gone",
    "parsing",
    "transition",
]


class ConnState(enum.IntEnum):
    """Where a connection is. IntEnum so that the hot path compares plain ints."""

    NEW = 0  # accepted, nothing received yet
    IDLE = 1  # between requests (responses may still be in flight)
    HEAD = 2  # a request head is arriving
    BODY = 3  # a dispatched request's body is arriving
    LAST_BODY = 4  # no request after this one: its body is still arriving
    CLOSING_BODY = 5  # close after the response being written; a body is still arriving
    CLOSING = 6  # close after the response being written; input is no longer parsed
    LAST = 7  # the last request is in: responses in flight go out, the last one closes
    LINGERING = 8  # our side is shut down; what the client still sends is discarded
    UPGRADED = 9  # the socket was handed to an upgrade taker (a 101)
    CLOSED = 10  # the socket is closed


class Event(enum.IntEnum):
    """What happened to a connection."""

    BEGIN = 0  # the parser saw the first byte of a request
    HEAD_KEEP = 1  # a request head is complete and the connection may serve more
    HEAD_LAST = 2  # a request head is complete and asks to close after its response
    MESSAGE_DONE = 3  # the parser finished a request (its body, if any)
    LAST_RESPONSE = 4  # a response that closes the connection was queued or written
    CLOSE_WHEN_DONE = 5  # close after the response being written (shutdown, EOF, limits)
    EOF = 6  # the client closed its side
    REFUSE = 7  # the server refuses a request head (4xx) or the head cannot be parsed
    BAD_BODY = 8  # a dispatched request's body cannot be parsed
    UPGRADE = 9  # the client asked to switch protocols: input is no longer HTTP/1.1
    LINGER = 10  # shut down our side and discard input for a moment
    HAND_OVER = 11  # the 101 went out: the socket belongs to the upgrade taker now
    ABORT = 12  # close the socket now
    CACHED = 13  # a request head was answered from the response cache (no parser)


# Actions: a bit set returned with the new state.
NONE = 0
ARM_HEAD = 1  # start the request-head deadline
STOP = 2  # stop parsing input (the rest of this read is not looked at)
FAIL_BODY = 4  # fail the request body in progress (its handler sees an error)
ABORT_IF_IDLE = 8  # if no response is in flight, close the socket at once
CLOSE_IF_IDLE = 16  # if no response is in flight, close gracefully (lingering)
ANSWER = 32  # answer with the server's own error response, which closes the connection

S = ConnState
E = Event


class IllegalTransition(RuntimeError):
    """An event that cannot happen in the connection's state (a bug in the shell)."""

    def __init__(self, state: ConnState, event: Event) -> None:
        super().__init__(f"event {event.name} is not allowed in state {state.name}")
        self.state = state
        self.event = event


def _build() -> dict[tuple[int, int], tuple[ConnState, int]]:
    t: dict[tuple[int, int], tuple[ConnState, int]] = {}

    def on(states: tuple[ConnState, ...], event: Event, new: ConnState | None, acts: int) -> None:
        for s in states:
            t[s, event] = (s if new is None else new, acts)

    between = (S.NEW, S.IDLE)
    bodies = (S.BODY, S.LAST_BODY, S.CLOSING_BODY)
    winding = (S.LAST, S.CLOSING)
    ended = (S.LINGERING, S.CLOSED, S.UPGRADED)
    live = (*between, S.HEAD, *bodies, *winding)

    on(between, E.BEGIN, S.HEAD, ARM_HEAD)
    on(between, E.CACHED, S.IDLE, NONE)
    on((S.HEAD,), E.HEAD_KEEP, S.BODY, NONE)
    on((S.HEAD,), E.HEAD_LAST, S.LAST_BODY, NONE)
    # A request ends: more may follow on an open connection; a closing one parses no more.
    # (A response written from inside the parser callbacks may have closed the connection
    # already; the parser still reports the end of the message it is in.)
    on((S.BODY,), E.MESSAGE_DONE, S.IDLE, NONE)
    on((S.LAST_BODY,), E.MESSAGE_DONE, S.LAST, STOP | CLOSE_IF_IDLE)
    on((S.CLOSING_BODY,), E.MESSAGE_DONE, S.CLOSING, STOP | CLOSE_IF_IDLE)
    on(ended, E.MESSAGE_DONE, None, STOP)
    # A response that closes: no later request is served (a partial head is dropped).
    on((*between, S.HEAD), E.LAST_RESPONSE, S.LAST, STOP)
    on((S.BODY,), E.LAST_RESPONSE, S.LAST_BODY, NONE)
    on((S.LAST_BODY, S.CLOSING_BODY, *winding, *ended), E.LAST_RESPONSE, None, NONE)
    # Close after the response being written; a body in progress is still read to its end.
    on((*between, S.HEAD), E.CLOSE_WHEN_DONE, S.CLOSING, STOP | CLOSE_IF_IDLE)
    on(winding, E.CLOSE_WHEN_DONE, S.CLOSING, CLOSE_IF_IDLE)
    on(bodies, E.CLOSE_WHEN_DONE, S.CLOSING_BODY, CLOSE_IF_IDLE)
    on((S.LINGERING,), E.CLOSE_WHEN_DONE, None, NONE)
    # The client is gone for input: what is in flight is still written.
    on((*between, S.HEAD), E.EOF, S.CLOSING, STOP | ABORT_IF_IDLE)
    on(winding, E.EOF, S.CLOSING, ABORT_IF_IDLE)
    on(bodies, E.EOF, S.CLOSING, STOP | FAIL_BODY | ABORT_IF_IDLE)
    # A refused head: the error response goes out after the earlier ones, then close.
    on((*between, S.HEAD), E.REFUSE, S.LAST, STOP | ANSWER)
    on(bodies, E.BAD_BODY, S.LAST, STOP | FAIL_BODY | ANSWER)
    on((*between, S.HEAD, *bodies, S.LAST), E.UPGRADE, S.CLOSING, STOP | CLOSE_IF_IDLE)
    on((*live, S.LINGERING), E.LINGER, S.LINGERING, STOP)
    on((S.CLOSING,), E.HAND_OVER, S.UPGRADED, STOP)
    on((*live, S.LINGERING), E.ABORT, S.CLOSED, STOP | FAIL_BODY)
    return t


# (state, event) -> (new state, actions); a missing key is an illegal transition
TABLE = _build()

Step = tuple[ConnState, int]
# The same table indexed STEPS[event][state] (None: illegal), for the shell's hot path: two
# subscripts instead of building and hashing a key.
STEPS: tuple[tuple[Step | None, ...], ...] = tuple(
    tuple(TABLE.get((s, e)) for s in ConnState) for e in Event
)


def transition(state: ConnState, event: Event) -> Step:
    """The state after `event` in `state`, and the actions to take (a bit set)."""
    step = STEPS[event][state]
    if step is None:
        raise IllegalTransition(state, event)
    return step


def dispatching(state: int) -> bool:
    """Whether a request head completed now would be handed to the handler."""
    return state <= S.HEAD


def parsing(state: int) -> bool:
    """Whether input is still fed to the request parser."""
    return state <= S.CLOSING_BODY


def closing(state: int) -> bool:
    """Whether the response being written is the last one (its keep-alive is dropped)."""
    return state == S.CLOSING or state == S.CLOSING_BODY


def gone(state: int) -> bool:
    """Whether the socket is no longer the connection's (closed or handed over)."""
    return state >= S.UPGRADED


# `__slots__ = PARTS` on the parts of a connection (meshkit.web.output, pipeline,
# lifecycle): no fields of their own, so that Connection, which lists them all in its
# __slots__, has no instance dict. A name rather than a literal `()`: mypy would check each
# part's assignments against its own (empty) slots, not the whole Connection's.
PARTS: tuple[str, ...] = ()
