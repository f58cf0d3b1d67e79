"""The one text table printer: Docker's `ls` layout, every cell made printable.

Columns are padded to their widest cell and separated by `gap` (three spaces, as Docker's
tabwriter does for `docker node ls`); trailing blanks are cut. Cells often carry what nodes and
clients sent (hostnames, service names), so each one goes through `printable`: a value cannot
move the cursor, colour the terminal or forge a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshkit.base.text import printable

__all__ = ["GAP", "table"]

GAP = "   "
"""Docker's column gap (tabwriter padding 3)."""


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, gap: str = GAP) -> str:
    """`headers` and `rows` as aligned text lines (no final newline).

    A row with a different number of cells than `headers` is a bug in the caller: ValueError.
    """
    body = [[printable(c) for c in row] for row in rows]
    head = [printable(h) for h in headers]
    widths = [len(h) for h in head]
    for row in body:
        if len(row) != len(head):
            raise ValueError(f"table row {row!r} has {len(row)} cells, not {len(head)}")
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        gap.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *body]
    ]
    return "\n".join(lines)
