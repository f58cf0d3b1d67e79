"""Headers.set changes its list in place: the same fields, order and spelling as the
rebuilt list it used to make, for any mix of cases and duplicates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshkit.web.message import Headers

_NAMES = st.sampled_from(["A", "a", "B", "b", "Content-Type", "content-type", "Z"])


def _reference(items: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    low = name.lower()
    out: list[tuple[str, str]] = []
    placed = False
    for k, v in items:
        if k.lower() == low:
            if not placed:
                out.append((name, value))
                placed = True
        else:
            out.append((k, v))
    if not placed:
        out.append((name, value))
    return out


@given(st.lists(st.tuples(_NAMES, st.text(max_size=3)), max_size=8), _NAMES, st.text(max_size=3))
def test_set_matches_the_rebuilt_list(items: list[tuple[str, str]], name: str, value: str) -> None:
    h = Headers(items)
    copy = h.copy()
    h.set(name, value)
    assert h.items() == _reference(items, name, value)
    assert copy.items() == items  # a copy never sees the change
