"""Formatting for `meshkit doctor` and the OVERLAY column of `meshkit node ls` (pure).

Input is plain data the agent gathers:

- pair rows, one per (network, source node, target node)::

      {"network": "mynet1", "source": "198.18.0.2", "target": "198.18.0.3",
       "control": True, "vxlan": False, "mtu": 1450, "verdict": "198.18.0.2 -> ...",
       # optional: "source_id"/"target_id" (node ids, when source/target are addresses or
       # names), "overlay_mtu" (to spot a path MTU below it)}

  ``control``/``vxlan`` are True, False or None (not known yet), ``mtu`` an int or None.
- kernel check rows: mappings ``{"name", "ok", "detail"}``, ``(name, ok, detail)`` tuples or
  objects with those attributes.

Output: Docker-style text tables (meshkit.base.table with columns two spaces apart, the
last column never cut), a JSON-able dict for ``--json``, and ``overlay_column`` for ``node ls``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshkit.base.table import table as base_table
from meshkit.net.verdict import Health, PairFacts, judge

PAIR_HEADERS = ("SOURCE", "TARGET", "CONTROL", "VXLAN", "PATH MTU", "VERDICT")
CHECK_HEADERS = ("CHECK", "OK", "DETAIL")
GAP = "  "
PEERS_SHOWN = 2  # peers named in one OVERLAY cell before "+N more"

# How node ls words a problem, most serious first.
_SHORT = {
    Health.CUT: "cut off",
    Health.VXLAN_BLOCKED: "no vxlan",
    Health.MTU_LOW: "mtu {mtu}",
    Health.CONTROL_DOWN: "no control",
}


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """meshkit.base.table's table with the doctor's two-space gap."""
    return base_table(headers, rows, gap=GAP)


def yes_no(value: bool | None) -> str:
    """How a yes/no/unknown fact shows in a table."""
    if value is None:
        return "-"
    return "yes" if value else "no"


def _short_verdict(row: Mapping[str, Any]) -> str:
    """The verdict without the "SOURCE -> TARGET: " the table already shows."""
    text = str(row.get("verdict") or "")
    head = f"{row.get('source')} -> {row.get('target')}: "
    return text[len(head) :] if text.startswith(head) else text


def _has_networks(pairs: Sequence[Mapping[str, Any]]) -> bool:
    return any(row.get("network") for row in pairs)


def pair_table(pairs: Sequence[Mapping[str, Any]]) -> str:
    """The node-pair table; a NETWORK column leads when the rows name their networks."""
    with_net = _has_networks(pairs)
    headers = (("NETWORK",) if with_net else ()) + PAIR_HEADERS
    rows = []
    for row in pairs:
        mtu = row.get("mtu")
        cells = [
            str(row.get("source", "")),
            str(row.get("target", "")),
            yes_no(row.get("control")),
            yes_no(row.get("vxlan")),
            "-" if mtu is None else str(mtu),
            _short_verdict(row),
        ]
        rows.append(([str(row.get("network") or "-")] if with_net else []) + cells)
    return table(headers, rows)


def _check_fields(check: Any) -> tuple[str, bool | None, str]:
    if isinstance(check, Mapping):
        return str(check.get("name", "")), check.get("ok"), str(check.get("detail") or "")
    if isinstance(check, tuple):
        name, ok, detail = check
        return str(name), ok, str(detail or "")
    return str(check.name), check.ok, str(check.detail or "")


def check_table(checks: Iterable[Any]) -> str:
    """The kernel check table: what was tried, whether it worked, and what was found."""
    rows = []
    for check in checks:
        name, ok, detail = _check_fields(check)
        rows.append([name, yes_no(ok), detail])
    return table(CHECK_HEADERS, rows)


def render_doctor(
    pairs: Sequence[Mapping[str, Any]], checks: Iterable[Any], *, dataplane: str | None = None
) -> str:
    """The whole `meshkit doctor` text: kernel checks, the data plane, then node pairs."""
    parts = [check_table(checks)]
    if dataplane:
        parts.append(f"Data plane: {dataplane}")
    if pairs:
        parts.append(pair_table(pairs))
    else:
        parts.append("No overlay pairs probed yet (no overlay network with peers on this node).")
    return "\n\n".join(parts) + "\n"


def doctor_json(
    pairs: Sequence[Mapping[str, Any]], checks: Iterable[Any], *, dataplane: str | None = None
) -> dict[str, Any]:
    """The same facts for `meshkit doctor --json`; ``ok`` is False when anything failed."""
    kernel = []
    for check in checks:
        name, ok, detail = _check_fields(check)
        kernel.append({"name": name, "ok": ok, "detail": detail})
    out_pairs = []
    for row in pairs:
        health = judge(_facts(row))
        out_pairs.append(
            {
                "network": row.get("network"),
                "source": row.get("source"),
                "target": row.get("target"),
                "control": row.get("control"),
                "vxlan": row.get("vxlan"),
                "path_mtu": row.get("mtu"),
                "health": health.value,
                "verdict": row.get("verdict"),
            }
        )
    ok = all(c["ok"] is not False for c in kernel) and all(
        p["health"] in (Health.OK.value, Health.NOT_PROBED.value) for p in out_pairs
    )
    return {"ok": ok, "dataplane": dataplane, "kernel": kernel, "pairs": out_pairs}


def _facts(row: Mapping[str, Any]) -> PairFacts:
    return PairFacts(
        source=str(row.get("source", "")),
        target=str(row.get("target", "")),
        control=row.get("control"),
        vxlan=row.get("vxlan"),
        path_mtu=row.get("mtu"),
        overlay_mtu=row.get("overlay_mtu"),
    )


def overlay_column(node_id: str, pairs: Iterable[Mapping[str, Any]]) -> str:
    """The OVERLAY cell of ``node ls`` for one node: "ok", "-" (nothing probed yet), or the
    problems by peer, e.g. "no vxlan from 198.18.0.2" (both ways: "with")."""
    probed = False
    # (problem words, peer) -> directions seen ("to": this node probes the peer)
    found: dict[tuple[Health, str, str], set[str]] = {}
    for row in pairs:
        src = str(row.get("source_id") or row.get("source", ""))
        dst = str(row.get("target_id") or row.get("target", ""))
        if node_id == src:
            peer, way = str(row.get("target", "")), "to"
        elif node_id == dst:
            peer, way = str(row.get("source", "")), "from"
        else:
            continue
        if row.get("vxlan") is not None or row.get("control") is not None:
            probed = True
        health = judge(_facts(row))
        if health in _SHORT:
            words = _SHORT[health].format(mtu=row.get("mtu"))
            found.setdefault((health, words, peer), set()).add(way)
    if not found:
        return "ok" if probed else "-"
    grouped: dict[tuple[Health, str, str], list[str]] = {}
    for (health, words, peer), ways in found.items():
        prep = "with" if len(ways) > 1 else next(iter(ways))
        grouped.setdefault((health, words, prep), []).append(peer)
    order = list(_SHORT)
    parts = []
    for health, words, prep in sorted(grouped, key=lambda k: (order.index(k[0]), k[1], k[2])):
        peers = sorted(grouped[(health, words, prep)])
        shown = ", ".join(peers[:PEERS_SHOWN])
        more = len(peers) - PEERS_SHOWN
        parts.append(f"{words} {prep} {shown}" + (f" +{more} more" if more > 0 else ""))
    return "; ".join(parts)


GATEWAY_HEADERS = ("NODE", "BRIDGE", "SUBNET", "NAT", "FORWARDING", "OUTBOUND")


def gateway_table(gateways: Sequence[tuple[str, Mapping[str, Any] | None]]) -> str:
    """Per node, whether tasks get out through its gateway bridge, and what is missing.
    ``gateways``: (node name, the node's gateway status or None when it sent none)."""
    rows = []
    for name, gw in gateways:
        if gw is None:
            rows.append([name, "-", "-", "-", "-", "unknown (no report from this node yet)"])
            continue
        missing = list(gw.get("missing") or [])
        rows.append(
            [
                name,
                str(gw.get("bridge") or "-"),
                str(gw.get("subnet") or "-"),
                yes_no(gw.get("nat")),
                yes_no(gw.get("forwarding")),
                "ok" if gw.get("ok") else "no: " + "; ".join(missing),
            ]
        )
    return table(GATEWAY_HEADERS, rows)


# the drop reasons of sealed traffic, as the data planes count them (meshkit.net.vxlan.wire)
SEALING_DROPS = ("not_sealed", "unknown_key", "bad_tag", "replay", "too_old", "too_new", "no_key")


def encryption_report(stats: Mapping[str, Any]) -> dict[str, Any]:
    """This node's encrypted networks and the sealed-traffic drops, from its overlay stats
    (meshkit.net.overlay.NodeOverlay.stats): {"networks": {name: {key_ids, tx_key,
    dataplane}}, "drops": {reason: n}}; empty when the node has no encrypted network."""
    nets = dict(stats.get("encrypted") or {})
    if not nets:
        return {}
    drops = stats.get("drops") or {}
    return {"networks": nets, "drops": {r: int(drops.get(r, 0)) for r in SEALING_DROPS}}


def encryption_text(stats: Mapping[str, Any]) -> str:
    """The doctor's lines about encrypted networks ("" when there are none)."""
    report = encryption_report(stats)
    if not report:
        return ""
    lines = ["", "Encrypted networks (sealed by the userspace data plane, forced on every node):"]
    for name, facts in sorted(report["networks"].items()):
        ids = ", ".join(str(i) for i in facts.get("key_ids") or []) or "none yet"
        tx = facts.get("tx_key")
        lines.append(f"  {name}: keys {ids}; sending with {tx if tx else 'no key yet'}")
    counted = ", ".join(f"{r} {n}" for r, n in report["drops"].items())
    lines.append(f"  dropped: {counted}")
    return "\n".join(lines) + "\n"
