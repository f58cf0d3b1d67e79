"""The server connection's state machine (meshkit.web.connstate) without sockets: every
transition pinned, illegal ones refused, and generated event sequences that never reach an
inconsistent state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.web.connstate import (
    ABORT_IF_IDLE,
    ANSWER,
    ARM_HEAD,
    CLOSE_IF_IDLE,
    FAIL_BODY,
    NONE,
    STEPS,
    STOP,
    TABLE,
    ConnState,
    Event,
    IllegalTransition,
    closing,
    dispatching,
    gone,
    parsing,
    transition,
)

S, E = ConnState, Event
BETWEEN = (S.NEW, S.IDLE)
BODIES = (S.BODY, S.LAST_BODY, S.CLOSING_BODY)
WINDING = (S.LAST, S.CLOSING)
ENDED = (S.LINGERING, S.CLOSED, S.UPGRADED)
LIVE = (*BETWEEN, S.HEAD, *BODIES, *WINDING)


def _expected() -> dict[tuple[ConnState, Event], tuple[ConnState, int]]:
    """The table written out a second time, by event (what the shell relies on)."""
    t: dict[tuple[ConnState, Event], tuple[ConnState, int]] = {}

    def on(states: tuple[ConnState, ...], e: Event, new: ConnState | None, acts: int) -> None:
        for s in states:
            t[s, e] = (s if new is None else new, acts)

    on(BETWEEN, E.BEGIN, S.HEAD, ARM_HEAD)
    on(BETWEEN, E.CACHED, S.IDLE, NONE)
    on((S.HEAD,), E.HEAD_KEEP, S.BODY, NONE)
    on((S.HEAD,), E.HEAD_LAST, S.LAST_BODY, NONE)
    on((S.BODY,), E.MESSAGE_DONE, S.IDLE, NONE)
    on((S.LAST_BODY,), E.MESSAGE_DONE, S.LAST, STOP | CLOSE_IF_IDLE)
    on((S.CLOSING_BODY,), E.MESSAGE_DONE, S.CLOSING, STOP | CLOSE_IF_IDLE)
    on(ENDED, E.MESSAGE_DONE, None, STOP)
    on((*BETWEEN, S.HEAD), E.LAST_RESPONSE, S.LAST, STOP)
    on((S.BODY,), E.LAST_RESPONSE, S.LAST_BODY, NONE)
    on((S.LAST_BODY, S.CLOSING_BODY, *WINDING, *ENDED), E.LAST_RESPONSE, None, NONE)
    on((*BETWEEN, S.HEAD), E.CLOSE_WHEN_DONE, S.CLOSING, STOP | CLOSE_IF_IDLE)
    on(WINDING, E.CLOSE_WHEN_DONE, S.CLOSING, CLOSE_IF_IDLE)
    on(BODIES, E.CLOSE_WHEN_DONE, S.CLOSING_BODY, CLOSE_IF_IDLE)
    on((S.LINGERING,), E.CLOSE_WHEN_DONE, None, NONE)
    on((*BETWEEN, S.HEAD), E.EOF, S.CLOSING, STOP | ABORT_IF_IDLE)
    on(WINDING, E.EOF, S.CLOSING, ABORT_IF_IDLE)
    on(BODIES, E.EOF, S.CLOSING, STOP | FAIL_BODY | ABORT_IF_IDLE)
    on((*BETWEEN, S.HEAD), E.REFUSE, S.LAST, STOP | ANSWER)
    on(BODIES, E.BAD_BODY, S.LAST, STOP | FAIL_BODY | ANSWER)
    on((*BETWEEN, S.HEAD, *BODIES, S.LAST), E.UPGRADE, S.CLOSING, STOP | CLOSE_IF_IDLE)
    on((*LIVE, S.LINGERING), E.LINGER, S.LINGERING, STOP)
    on((S.CLOSING,), E.HAND_OVER, S.UPGRADED, STOP)
    on((*LIVE, S.LINGERING), E.ABORT, S.CLOSED, STOP | FAIL_BODY)
    return t


EXPECTED = _expected()
PAIRS = [(s, e) for s in ConnState for e in Event]


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED))
def test_every_transition(state: ConnState, event: Event) -> None:
    assert transition(state, event) == EXPECTED[state, event]
    assert STEPS[event][state] == EXPECTED[state, event]


def test_the_table_has_nothing_else() -> None:
    assert dict(TABLE) == EXPECTED


@pytest.mark.parametrize(("state", "event"), [p for p in PAIRS if p not in EXPECTED])
def test_illegal_transitions_raise(state: ConnState, event: Event) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(state, event)
    assert info.value.state is state and info.value.event is event
    assert STEPS[event][state] is None


def test_the_predicates() -> None:
    assert {s for s in S if dispatching(s)} == {S.NEW, S.IDLE, S.HEAD}
    assert {s for s in S if parsing(s)} == {*BETWEEN, S.HEAD, *BODIES}
    assert {s for s in S if closing(s)} == {S.CLOSING, S.CLOSING_BODY}
    assert {s for s in S if gone(s)} == {S.CLOSED, S.UPGRADED}


def _phase(s: ConnState) -> int:
    """0 serving requests, 1 winding down, 2 lingering, 3 gone."""
    if s in (*BETWEEN, S.HEAD, S.BODY):
        return 0
    if s in (S.LAST_BODY, S.CLOSING_BODY, *WINDING):
        return 1
    return 2 if s is S.LINGERING else 3


@given(st.lists(st.sampled_from(list(Event)), max_size=60))
def test_generated_sequences_stay_consistent(events: list[Event]) -> None:
    state = S.NEW
    for event in events:
        step = STEPS[event][state]
        if step is None:
            with pytest.raises(IllegalTransition):
                transition(state, event)
            continue  # refused: the state is unchanged
        new, actions = transition(state, event)
        assert isinstance(new, ConnState)
        # a connection only ever winds down: never back to serving, never reopened
        assert _phase(new) >= _phase(state) or (state is S.HEAD and new is S.BODY)
        if not dispatching(state) and state is not S.BODY:
            assert not dispatching(new)
        # input that stops being parsed is stopped by the action the shell obeys
        if parsing(state) and not parsing(new):
            assert actions & STOP
        if not parsing(state):
            assert not parsing(new)
        # a body in progress ends with its message, or is failed, or the connection stops
        if state in BODIES and new not in BODIES and event is not E.MESSAGE_DONE:
            assert actions & (FAIL_BODY | STOP)
        # only a request head starts the head deadline; only a 101 hands the socket over
        assert bool(actions & ARM_HEAD) == (new is S.HEAD and event is E.BEGIN)
        assert (new is S.UPGRADED) == (event is E.HAND_OVER) or state is S.UPGRADED
        if gone(state):
            assert new is state  # terminal
        state = new


@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_a_closed_connection_can_always_be_reached_and_stays_closed(events: list[Event]) -> None:
    state = S.NEW
    for event in events:
        step = STEPS[event][state]
        if step is not None:
            state = step[0]
    if not gone(state):
        state, _ = transition(state, E.ABORT)
        assert state is S.CLOSED
    for event in Event:
        step = STEPS[event][state]
        assert step is None or step[0] is state
