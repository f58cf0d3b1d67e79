"""`meshkit doctor` tables and JSON, and the OVERLAY column of `node ls`."""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

import pytest

from meshkit.net.doctor_report import (
    check_table,
    doctor_json,
    overlay_column,
    pair_table,
    render_doctor,
    table,
)
from meshkit.net.verdict import verdict

A, B, C = "198.18.0.2", "198.18.0.3", "198.18.0.4"


def row(src: str, dst: str, control: bool | None, vxlan: bool | None, mtu: int | None = None,
        network: str = "", overlay_mtu: int | None = 1450) -> dict[str, Any]:  # fmt: skip
    return {
        "source": src,
        "target": dst,
        "source_id": f"id-{src}",
        "target_id": f"id-{dst}",
        "control": control,
        "vxlan": vxlan,
        "mtu": mtu,
        "overlay_mtu": overlay_mtu,
        "network": network,
        "verdict": verdict(
            source=src,
            target=dst,
            control=control,
            vxlan=vxlan,
            path_mtu=mtu,
            overlay_mtu=overlay_mtu,
        ),
    }


def test_table_pads_columns_two_spaces_apart_without_trailing_blanks() -> None:
    assert table(["A", "LONG NAME", "C"], [["xyz", "1", ""], ["", "22", "end"]]) == (
        "A    LONG NAME  C\nxyz  1\n     22         end"
    )
    with pytest.raises(ValueError, match="2 cells, not 3"):
        table(["A", "B", "C"], [["1", "2"]])


def test_pair_table_shows_the_pair_once_and_the_whole_verdict() -> None:
    text = pair_table([row(A, B, True, True, 1450), row(B, A, True, False)])
    assert text.splitlines() == [
        "SOURCE      TARGET      CONTROL  VXLAN  PATH MTU  VERDICT",
        "198.18.0.2  198.18.0.3  yes      yes    1450      ok: control plane reachable, VXLAN "
        "udp/4789 reachable, path MTU 1450 = overlay MTU 1450",
        "198.18.0.3  198.18.0.2  yes      no     -         control plane reachable, VXLAN "
        "udp/4789 gets no answer: a firewall or security group between these hosts drops "
        "udp/4789",
    ]


def test_pair_table_leads_with_the_network_when_rows_name_one() -> None:
    lines = pair_table([row(A, B, None, None, network="mynet1")]).splitlines()
    assert lines[0].startswith("NETWORK  SOURCE      TARGET")
    assert lines[1].startswith("mynet1   198.18.0.2  198.18.0.3  -        -      -         ")
    assert lines[1].endswith("not probed yet")


def test_check_rows_may_be_mappings_tuples_or_objects() -> None:
    Check = namedtuple("Check", "name ok detail")

    class Obj:
        name, ok, detail = "tap", None, None

    text = check_table(
        [
            {"name": "bridge", "ok": True, "detail": "made br0"},
            ("vxlan in a namespace", False, "RTNETLINK: Operation not supported"),
            Check("veth", True, ""),
            Obj(),
        ]
    )
    assert text.splitlines() == [
        "CHECK                 OK   DETAIL",
        "bridge                yes  made br0",
        "vxlan in a namespace  no   RTNETLINK: Operation not supported",
        "veth                  yes",
        "tap                   -",
    ]


def test_render_doctor_puts_kernel_data_plane_and_pairs_in_order() -> None:
    text = render_doctor(
        [row(A, B, True, False)],
        [("vxlan in a namespace", False, "not supported: userspace data plane instead")],
        dataplane="userspace",
    )
    parts = text.split("\n\n")
    assert parts[0].startswith("CHECK")
    assert parts[1] == "Data plane: userspace"
    assert parts[2].startswith("SOURCE") and "drops udp/4789" in parts[2]
    assert text.endswith("\n") and not text.endswith("\n\n")
    empty = render_doctor([], [("bridge", True, "")])
    assert "No overlay pairs probed yet" in empty


def test_doctor_json_is_json_and_says_whether_all_is_well() -> None:
    good = doctor_json([row(A, B, True, True, 1450)], [("bridge", True, "")], dataplane="kernel")
    assert json.loads(json.dumps(good)) == good
    assert good["ok"] is True and good["dataplane"] == "kernel"
    assert good["kernel"] == [{"name": "bridge", "ok": True, "detail": ""}]
    (pair,) = good["pairs"]
    assert pair["health"] == "ok" and pair["path_mtu"] == 1450 and pair["source"] == A
    assert doctor_json([row(A, B, True, False)], [])["ok"] is False
    assert doctor_json([row(A, B, True, True, 1300)], [])["pairs"][0]["health"] == "mtu-low"
    assert doctor_json([], [("tap", False, "no /dev/net/tun")])["ok"] is False
    assert doctor_json([row(A, B, None, None)], [])["ok"] is True  # nothing known is no fault


def test_overlay_column_ok_and_nothing_probed() -> None:
    assert overlay_column("id-" + A, []) == "-"
    assert overlay_column("id-" + A, [row(A, B, None, None)]) == "-"
    assert overlay_column("id-" + A, [row(A, B, True, True, 1450), row(B, A, True, None)]) == "ok"
    assert overlay_column("id-" + C, [row(A, B, True, False)]) == "-"  # not its pair


def test_overlay_column_names_the_peer_and_the_direction() -> None:
    pairs = [row(B, A, True, False), row(A, B, True, True, 1450)]
    assert overlay_column("id-" + A, pairs) == f"no vxlan from {B}"
    assert overlay_column("id-" + B, pairs) == f"no vxlan to {A}"
    both = [row(B, A, True, False), row(A, B, True, False)]
    assert overlay_column("id-" + A, both) == f"no vxlan with {B}"


def test_overlay_column_groups_problems_and_peers() -> None:
    pairs = [
        row(A, B, False, False),
        row(A, C, True, True, 1300),
        row(C, A, True, True, 1300),
        row("198.18.0.5", A, True, False),
        row("198.18.0.6", A, True, False),
        row("198.18.0.7", A, True, False),
    ]
    assert overlay_column("id-" + A, pairs) == (
        f"cut off to {B}; no vxlan from 198.18.0.5, 198.18.0.6 +1 more; mtu 1300 with {C}"
    )


def test_overlay_column_matches_plain_rows_by_their_source_and_target() -> None:
    plain = {"source": A, "target": B, "control": True, "vxlan": False}
    assert overlay_column(B, [plain]) == f"no vxlan from {A}"
