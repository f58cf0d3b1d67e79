"""meshkit.lb.pick: the web proxy's policies over both connection tables (C and Python)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.lb import PyConnTable
from meshkit.lb.pick import POLICIES, Picker, Ticket

try:
    from meshkit._fastpath import ConnTable as CConnTable
except ImportError:  # pragma: no cover - the extension is built in CI
    CConnTable = None

IMPLS = [
    pytest.param(PyConnTable, id="python"),
    pytest.param(
        CConnTable,
        id="c",
        marks=pytest.mark.skipif(CConnTable is None, reason="meshkit._fastpath not built"),
    ),
]


def _pick(p: Picker, **kw: Any) -> Ticket:
    t = p.pick(0.0, **kw)
    assert t is not None
    return t


def test_round_robin_cycles(impl: Any) -> None:
    p = Picker(3, "round_robin", table=impl)
    order = []
    for _ in range(6):
        t = _pick(p)
        order.append(t.index)
        p.release(t)
    assert order == [0, 1, 2, 0, 1, 2]


def test_random_spreads(impl: Any) -> None:
    p = Picker(3, "random", seed=7, table=impl)
    seen = Counter()
    for _ in range(300):
        t = _pick(p)
        seen[t.index] += 1
        p.release(t)
    assert set(seen) == {0, 1, 2}
    assert min(seen.values()) > 50


def test_least_conn_counts_in_flight(impl: Any) -> None:
    p = Picker(3, "least_conn", table=impl)
    held = [_pick(p) for _ in range(3)]
    assert sorted(t.index for t in held) == [0, 1, 2]
    p.release(held[1])  # upstream held[1].index is now the least loaded
    assert _pick(p).index == held[1].index


def test_first_takes_first_up_under_max_conns(impl: Any) -> None:
    p = Picker(3, "first", max_conns=2, table=impl)
    a, b, c = _pick(p), _pick(p), _pick(p)
    assert (a.index, b.index, c.index) == (0, 0, 1)
    p.set_healthy(0, False)
    p.release(a)
    assert _pick(p).index == 1
    assert _pick(p).index == 2


def test_max_conns_everywhere_full_is_none(impl: Any) -> None:
    p = Picker(2, "round_robin", max_conns=1, table=impl)
    a, b = _pick(p), _pick(p)
    assert {a.index, b.index} == {0, 1}
    assert p.pick(0.0) is None
    p.release(a)
    p.release(a)  # idempotent
    assert p.in_flight(a.index) == 0
    assert _pick(p).index == a.index


@pytest.mark.parametrize("policy,key", [("ip_hash", "client_ip"), ("uri_hash", "uri")])
def test_hash_policies_are_sticky_and_spread(impl: Any, policy: str, key: str) -> None:
    p = Picker(4, policy, table=impl)
    spots = {}
    for n in range(200):
        value = f"198.51.100.{n}" if key == "client_ip" else f"/item/{n}"
        first = _pick(p, **{key: value})
        again = _pick(p, **{key: value})
        assert first.index == again.index
        spots[value] = first.index
        p.release(first)
        p.release(again)
    assert len(set(spots.values())) == 4


def test_hash_moves_only_when_its_upstream_goes(impl: Any) -> None:
    p = Picker(3, "uri_hash", table=impl)
    before = {u: _pick(p, uri=u).index for u in (f"/{n}" for n in range(100))}
    p.set_healthy(1, False)
    after = {u: _pick(p, uri=u).index for u in before}
    for u, i in before.items():
        if i != 1:
            assert after[u] == i
        else:
            assert after[u] != 1


def test_header_policy_hashes_value_and_falls_back_to_round_robin(impl: Any) -> None:
    p = Picker(3, "header", table=impl)
    a = _pick(p, header_value="alice")
    assert all(_pick(p, header_value="alice").index == a.index for _ in range(10))
    rr = []
    for _ in range(6):
        t = _pick(p)
        rr.append(t.index)
        p.release(t)
    assert rr == [0, 1, 2, 0, 1, 2]


def test_exclude_skips_upstreams(impl: Any) -> None:
    for policy in POLICIES:
        p = Picker(3, policy, table=impl)
        t = _pick(p, client_ip="192.0.2.1", uri="/x", header_value="v", exclude={0, 1})
        assert t.index == 2
        assert p.pick(0.0, exclude={0, 1, 2}) is None


def test_passive_failures_take_down_and_expire(impl: Any) -> None:
    p = Picker(2, "round_robin", max_fails=2, fail_timeout=10.0, table=impl)
    p.fail(0, now=100.0)
    assert p.is_up(0)
    p.fail(0, now=101.0)
    assert not p.is_up(0)
    assert all(p.pick(105.0).index == 1 for _ in range(4))  # type: ignore[union-attr]
    t = p.pick(110.5)  # first failure expired: 1 < max_fails again
    assert p.is_up(0)
    assert t is not None


def test_passive_off_when_fail_timeout_zero(impl: Any) -> None:
    p = Picker(1, "random", table=impl)
    for _ in range(5):
        p.fail(0, now=1.0)
    assert p.is_up(0)


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        Picker(2, "fastest")


@pytest.mark.skipif(CConnTable is None, reason="meshkit._fastpath not built")
@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    ops=st.lists(
        st.tuples(st.sampled_from(["pick", "release", "down", "up", "fail"]), st.integers(0, 3)),
        max_size=40,
    ),
)
def test_c_and_python_tables_pick_alike(policy: str, ops: list[tuple[str, int]]) -> None:
    pickers = [
        Picker(4, policy, max_conns=3, fail_timeout=5.0, seed=3, table=t)
        for t in (PyConnTable, CConnTable)
    ]
    held: list[list[Ticket]] = [[], []]
    now = 0.0
    for op, arg in ops:
        now += 1.0
        results = []
        for side, p in enumerate(pickers):
            if op == "pick":
                t = p.pick(now, client_ip=f"203.0.113.{arg}", uri=f"/{arg}", header_value=str(arg))
                if t is not None:
                    held[side].append(t)
                results.append(None if t is None else t.index)
            elif op == "release" and held[side]:
                p.release(held[side].pop(arg % len(held[side])))
            elif op == "down":
                p.set_healthy(arg, False)
            elif op == "up":
                p.set_healthy(arg, True)
            elif op == "fail":
                p.fail(arg, now)
            results.append([p.is_up(i) for i in range(4)])
        assert results[: len(results) // 2] == results[len(results) // 2 :]
