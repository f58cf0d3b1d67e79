"""`--store URL` and its TLS files for `meshkit node init` / `node join`: where the cluster's
replicated log lives when it is not the embedded raft (meshkit.cluster.raft.etcd_spec)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Keep the cluster's replicated log in an existing etcd cluster: "
        "etcd://HOST:2379[,HOST2:2379...] (etcds:// for TLS). Default: the embedded raft.",
    ),
]
StoreCaOpt = Annotated[
    str | None, typer.Option("--store-cacert", help="CA file that verifies etcd (TLS).")
]
StoreCertOpt = Annotated[
    str | None, typer.Option("--store-cert", help="Client certificate for etcd (TLS).")
]
StoreKeyOpt = Annotated[
    str | None, typer.Option("--store-key", help="Client certificate's key for etcd (TLS).")
]
StoreLeaseOpt = Annotated[
    str | None,
    typer.Option(
        "--store-lease",
        help="This manager's etcd lease (2s to 60s, default 5s): how long etcd waits before "
        "another manager takes the leader duties if this one dies; a leader whose loop is held "
        "longer than about 70% of it stops acting as leader.",
    ),
]


def store_spec(
    url: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    lease: str | None = None,
) -> dict[str, Any]:
    """node.json's `store` entry ({} for the embedded raft); FlagError naming the flag."""
    from meshkit.base.durations import parse_duration
    from meshkit.cluster.raft.etcd_spec import LEASE_MAX, LEASE_MIN, StoreSpecError, parse_store

    if not url:
        for flag, value in (
            ("--store-cacert", cacert),
            ("--store-cert", cert),
            ("--store-key", key),
            ("--store-lease", lease),
        ):
            if value:
                raise FlagError(flag, value, "needs --store etcd://... or etcds://...")
        return {}
    ttl = 0
    if lease is not None:
        seconds = parse_duration(lease, "--store-lease")
        if not (LEASE_MIN <= seconds <= LEASE_MAX) or seconds != int(seconds):
            raise FlagError(
                "--store-lease", lease, f"expected whole seconds from {LEASE_MIN}s to {LEASE_MAX}s"
            )
        ttl = int(seconds)
    try:
        spec = parse_store(url, cacert=cacert or "", cert=cert or "", key=key or "", lease_ttl=ttl)
    except StoreSpecError as exc:
        raise FlagError("--store", url, str(exc)) from None
    return spec.to_dict()


def store_line(status: dict[str, Any]) -> str:
    """`meshkit doctor`'s line about the manager's replicated store (`cluster_status`)."""
    if status.get("store") == "etcd":
        health = "healthy" if status.get("healthy") else f"unreachable: {status.get('error')}"
        lead = "this manager leads" if status.get("is_leader") else f"leader {status.get('leader')}"
        return (
            f"Cluster store: etcd {status.get('store_url')} ({health}; revision "
            f"{status.get('last_applied')} applied, snapshot at {status.get('snapshot_revision')}"
            f", {status.get('log_entries')} log entries; {lead}; lease "
            f"{status.get('lease_ttl', '?')}s)"
        )
    members = status.get("members") or []
    health = "quorum" if status.get("has_quorum") else "NO QUORUM"
    return (
        f"Cluster store: embedded raft ({health}: {status.get('reachable')} of {len(members)} "
        f"managers reachable; leader {status.get('leader')}; index {status.get('last_applied')})"
    )
