"""Verdict sentences on node pairs: each case, in words, with the real port."""

from __future__ import annotations

import pytest

from meshkit.net.verdict import Health, PairFacts, diagnosis, judge, sentence, verdict

A, B = "198.18.0.2", "198.18.0.3"


def say(**kw: object) -> str:
    return verdict(source=A, target=B, **kw)  # type: ignore[arg-type]


def test_vxlan_blocked_while_the_control_plane_works() -> None:
    assert say(control=True, vxlan=False) == (
        "198.18.0.2 -> 198.18.0.3: control plane reachable, VXLAN udp/4789 gets no answer: "
        "a firewall or security group between these hosts drops udp/4789"
    )


def test_the_port_named_is_the_data_path_port_in_use() -> None:
    text = say(control=True, vxlan=False, port=7789)
    assert "VXLAN udp/7789 gets no answer" in text and "drops udp/7789" in text
    assert "4789" not in text


def test_userspace_data_plane_adds_its_own_suspect() -> None:
    text = say(control=True, vxlan=False, dataplane="userspace")
    assert text.endswith(
        "drops udp/4789 (or meshkit's userspace data plane is not running on the target)"
    )
    assert "userspace" in say(control=True, vxlan=False, dataplane="kernel/userspace")
    assert "userspace" not in say(control=True, vxlan=False, dataplane="kernel")


def test_both_planes_unreachable() -> None:
    assert say(control=False, vxlan=False) == (
        "198.18.0.2 -> 198.18.0.3: control plane and VXLAN udp/4789 both unreachable: "
        "the host is down or the network between them is cut"
    )


def test_control_plane_down_but_overlay_working() -> None:
    assert say(control=False, vxlan=True, path_mtu=1450, overlay_mtu=1450) == (
        "198.18.0.2 -> 198.18.0.3: control plane unreachable, VXLAN udp/4789 reachable: "
        "the target's agent is down or its API port is blocked; the overlay still carries "
        "traffic"
    )


def test_path_mtu_below_the_overlay_mtu() -> None:
    assert say(control=True, vxlan=True, path_mtu=1300, overlay_mtu=1450) == (
        "198.18.0.2 -> 198.18.0.3: control plane reachable, VXLAN udp/4789 reachable but "
        "path MTU 1300 is below the overlay MTU 1450: packets over 1300 bytes are lost; "
        "lower the network's mtu (--opt mtu=1300) or raise the MTU of the network between "
        "these hosts"
    )


@pytest.mark.parametrize(
    ("kw", "tail"),
    [
        (
            {"control": True, "vxlan": True, "path_mtu": 1450, "overlay_mtu": 1450},
            "ok: control plane reachable, VXLAN udp/4789 reachable, path MTU 1450 = overlay "
            "MTU 1450",
        ),
        (
            {"control": True, "vxlan": True},
            "ok: control plane reachable, VXLAN udp/4789 reachable, path MTU not measured yet",
        ),
        (
            {"control": None, "vxlan": True, "path_mtu": 1400},
            "ok: control plane not checked yet, VXLAN udp/4789 reachable, path MTU 1400",
        ),
    ],
)
def test_ok_cases(kw: dict[str, object], tail: str) -> None:
    assert say(**kw) == f"{A} -> {B}: {tail}"


@pytest.mark.parametrize(
    ("control", "tail"),
    [
        (None, "not probed yet"),
        (True, "control plane reachable, VXLAN udp/4789 not probed yet"),
        (False, "control plane unreachable, VXLAN udp/4789 not probed yet"),
    ],
)
def test_not_probed_yet(control: bool | None, tail: str) -> None:
    assert say(control=control, vxlan=None) == f"{A} -> {B}: {tail}"


@pytest.mark.parametrize(
    ("control", "vxlan", "mtu", "health"),
    [
        (True, True, 1450, Health.OK),
        (True, True, None, Health.OK),
        (None, None, None, Health.NOT_PROBED),
        (False, None, None, Health.NOT_PROBED),
        (True, False, None, Health.VXLAN_BLOCKED),
        (None, False, None, Health.VXLAN_BLOCKED),
        (False, False, None, Health.CUT),
        (False, True, 1450, Health.CONTROL_DOWN),
        (False, True, 1300, Health.CONTROL_DOWN),  # the agent is the bigger news
        (True, True, 1300, Health.MTU_LOW),
        (None, True, 1300, Health.MTU_LOW),
    ],
)
def test_judge(control: bool | None, vxlan: bool | None, mtu: int | None, health: Health) -> None:
    assert judge(PairFacts(A, B, control, vxlan, mtu, 1450)) is health


def test_sentence_and_diagnosis_agree() -> None:
    facts = PairFacts("node-1", "node-2", True, False, port=4790)
    assert sentence(facts) == f"node-1 -> node-2: {diagnosis(facts)}"
    assert diagnosis(facts).startswith("control plane reachable, VXLAN udp/4790 gets no answer")
