"""bench/cluster_chaos.py's own parts: its options and how it counts lost, duplicated and
unknown writes and the stretches without one (the run itself is the bench's --quick smoke)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cluster_chaos.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cluster_chaos", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cluster_chaos"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chaos = _load()


def test_quick_is_one_kill_without_partition() -> None:
    args = chaos.parse_args(["--quick"])
    assert (args.kills, args.partition, args.deadline) == (1, False, 90.0)
    full = chaos.parse_args([])
    assert full.kills == 4 and full.partition and full.deadline is None


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--kills", "-1"], "--kills"),
        (["--kills", "0", "--no-partition"], "no fault"),
        (["--dwell", "-2"], "--dwell"),
        (["--warmup", "1"], "--warmup"),
    ],
)
def test_bad_options_name_the_flag(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        chaos.parse_args(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_longest_gap_counts_from_the_fault() -> None:
    assert chaos.longest_gap(10.0, 20.0, [9.0, 11.5, 12.0, 19.0]) == pytest.approx(7.0)
    assert chaos.longest_gap(10.0, 20.0, [10.5, 12.0]) == pytest.approx(1.5)
    assert chaos.longest_gap(10.0, 14.0, []) == pytest.approx(4.0)  # nothing after it at all


def _writer(client: int, acked: list[bool]) -> object:
    w = chaos.Writer(client, None, 0.0)
    for seq, ok in enumerate(acked, 1):
        write = chaos.Write(client, seq, f"r{client}-{seq}", 0.0, attempts=1)
        if ok:
            write.acked_at, write.service_id = 1.0, f"id{seq}"
        w.writes.append(write)
    return w


def _view(op: str | None, name: str) -> dict[str, object]:
    return {"Name": name, "Labels": {"chaos.op": op} if op else {}}


def test_tally_finds_lost_duplicated_unknown_and_strays() -> None:
    writers = [_writer(1, [True, True, False]), _writer(2, [True, False])]
    services = [
        _view("c1-1", "chaos-c1-1-a1"),
        _view("c1-1", "chaos-c1-1-a2"),  # the same logical write twice
        # c1-2 acked but missing: lost
        _view("c1-3", "chaos-c1-3-a1"),  # unacked, applied
        _view("c2-1", "chaos-c2-1-a1"),
        # c2-2 unacked, not applied
        _view(None, "someone-else"),
    ]
    out = chaos.tally(writers, services)
    assert out.acked == 3
    assert out.lost == ["c1-2"]
    assert out.duplicates == {"c1-1": 2}
    assert (out.unknown, out.unknown_applied) == (2, 1)
    assert out.strays == ["someone-else"]
    verdict = dict(chaos.verdicts(out))
    assert verdict["0 acknowledged writes lost"] is False
    assert verdict["0 duplicated writes"] is False


def test_tally_of_a_clean_run() -> None:
    writers = [_writer(1, [True]), _writer(2, [True])]
    services = [_view("c1-1", "chaos-c1-1-a1"), _view("c2-1", "chaos-c2-1-a2")]
    out = chaos.tally(writers, services)
    assert (out.acked, out.lost, out.duplicates, out.unknown) == (2, [], {}, 0)
