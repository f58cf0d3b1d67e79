"""The one table printer (meshkit.base.table): Docker's layout, cells made printable."""

from __future__ import annotations

import pytest

from meshkit.base.table import table


def test_columns_padded_three_spaces_apart_without_trailing_blanks() -> None:
    assert table(["ID", "NAME", "X"], [["a1", "web", ""], ["b", "", "end"]]) == (
        "ID   NAME   X\na1   web\nb           end"
    )


def test_no_rows_prints_the_headers() -> None:
    assert table(["ID", "NAME"], []) == "ID   NAME"


def test_control_characters_are_escaped_in_every_cell() -> None:
    text = table(["NAME", "STATE"], [["evil\x1b[31m", "a\nb"]])
    assert "\x1b" not in text
    assert text.splitlines() == ["NAME           STATE", "evil\\x1b[31m   a\\x0ab"]


def test_non_string_cells_are_shown_with_str() -> None:
    assert table(["N"], [[3]]) == "N\n3"


def test_gap_can_be_chosen() -> None:
    assert table(["A", "B"], [["xyz", "1"]], gap="  ") == "A    B\nxyz  1"


def test_row_of_the_wrong_width_is_a_bug() -> None:
    with pytest.raises(ValueError, match="has 1 cells, not 2"):
        table(["A", "B"], [["x"]])
