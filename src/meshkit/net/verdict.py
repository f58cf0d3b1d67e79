"""Verdicts on a pair of nodes (pure): what the probes found, said in one sentence.

``judge`` sorts a pair's facts into a ``Health``; ``sentence`` (or ``verdict``, the same from
keyword arguments) words it, naming the pair, the port and what to do, e.g. "198.18.0.2 ->
198.18.0.3: control plane reachable, VXLAN udp/4789 gets no answer: a firewall or security
group between these hosts drops udp/4789".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_PORT = 4789


class Health(str, enum.Enum):
    """What is wrong between two nodes, most telling first."""

    OK = "ok"
    NOT_PROBED = "not-probed"  # no VXLAN answer or loss counted yet
    VXLAN_BLOCKED = "vxlan-blocked"  # control plane fine, VXLAN dropped
    CUT = "cut"  # neither plane answers
    CONTROL_DOWN = "control-down"  # VXLAN fine, the peer's API does not answer
    MTU_LOW = "mtu-low"  # VXLAN passes, but not at the overlay MTU


@dataclass(frozen=True)
class PairFacts:
    """What is known about traffic from ``source`` to ``target`` on one network.

    ``source``/``target`` are how the nodes are named in the sentence (their addresses, or
    names). None for ``control``/``vxlan``/``path_mtu`` means not known yet.
    """

    source: str
    target: str
    control: bool | None
    vxlan: bool | None
    path_mtu: int | None = None
    overlay_mtu: int | None = None
    port: int = DEFAULT_PORT
    dataplane: str = "kernel"  # "kernel", "userspace" (or both, "kernel/userspace"): who
    # sends VXLAN on these nodes; with userspace, a silent peer may also be a stopped agent


def judge(facts: PairFacts) -> Health:
    """The pair's health: the data plane decides first, since that is what tasks use."""
    if facts.vxlan is None:
        return Health.NOT_PROBED
    if facts.vxlan is False:
        return Health.CUT if facts.control is False else Health.VXLAN_BLOCKED
    if facts.control is False:
        return Health.CONTROL_DOWN
    if _mtu_low(facts):
        return Health.MTU_LOW
    return Health.OK


def _mtu_low(facts: PairFacts) -> bool:
    return (
        facts.path_mtu is not None
        and facts.overlay_mtu is not None
        and facts.path_mtu < facts.overlay_mtu
    )


def _control_words(control: bool | None) -> str:
    if control is None:
        return "control plane not checked yet"
    return "control plane reachable" if control else "control plane unreachable"


def _mtu_words(facts: PairFacts) -> str:
    if facts.path_mtu is None:
        return "path MTU not measured yet"
    if facts.overlay_mtu is None:
        return f"path MTU {facts.path_mtu}"
    return f"path MTU {facts.path_mtu} = overlay MTU {facts.overlay_mtu}"


def diagnosis(facts: PairFacts) -> str:
    """The sentence without the pair in front of it (for a table that shows the pair)."""
    vx = f"VXLAN udp/{facts.port}"
    control = _control_words(facts.control)
    health = judge(facts)
    if health is Health.NOT_PROBED:
        if facts.control is None:
            return "not probed yet"
        return f"{control}, {vx} not probed yet"
    if health is Health.VXLAN_BLOCKED:
        cause = f"a firewall or security group between these hosts drops udp/{facts.port}"
        if "userspace" in facts.dataplane:
            cause += " (or meshkit's userspace data plane is not running on the target)"
        return f"{control}, {vx} gets no answer: {cause}"
    if health is Health.CUT:
        return (
            f"control plane and {vx} both unreachable: the host is down or the network "
            "between them is cut"
        )
    if health is Health.CONTROL_DOWN:
        return (
            f"control plane unreachable, {vx} reachable: the target's agent is down or its "
            "API port is blocked; the overlay still carries traffic"
        )
    if health is Health.MTU_LOW:
        # The probes are IP packets inside the overlay, so the size they found is the MTU
        # the overlay network itself can use.
        mtu = facts.path_mtu
        return (
            f"{control}, {vx} reachable but path MTU {mtu} is below the overlay MTU "
            f"{facts.overlay_mtu}: packets over {mtu} bytes are lost; lower the network's "
            f"mtu (--opt mtu={mtu}) or raise the MTU of the network between these hosts"
        )
    return f"ok: {control}, {vx} reachable, {_mtu_words(facts)}"


def sentence(facts: PairFacts) -> str:
    """One sentence naming the pair and saying what is wrong between them, and why."""
    return f"{facts.source} -> {facts.target}: {diagnosis(facts)}"


def verdict(
    *,
    source: str,
    target: str,
    control: bool | None,
    vxlan: bool | None,
    path_mtu: int | None = None,
    overlay_mtu: int | None = None,
    port: int = DEFAULT_PORT,
    dataplane: str = "kernel",
) -> str:
    """``sentence`` for facts given one by one (see ``PairFacts`` for what each means)."""
    return sentence(
        PairFacts(source, target, control, vxlan, path_mtu, overlay_mtu, port, dataplane)
    )
