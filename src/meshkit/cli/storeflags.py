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


def store_spec(
    url: str | None, cacert: str | None, cert: str | None, key: str | None
) -> dict[str, Any]:
    """node.json's `store` entry ({} for the embedded raft); FlagError naming the flag."""
    from meshkit.cluster.raft.etcd_spec import StoreSpecError, parse_store

    if not url:
        for flag, value in (
            ("--store-cacert", cacert),
            ("--store-cert", cert),
            ("--store-key", key),
        ):
            if value:
                raise FlagError(flag, value, "needs --store etcd://... or etcds://...")
        return {}
    try:
        spec = parse_store(url, cacert=cacert or "", cert=cert or "", key=key or "")
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
            f", {status.get('log_entries')} log entries; {lead})"
        )
    members = status.get("members") or []
    health = "quorum" if status.get("has_quorum") else "NO QUORUM"
    return (
        f"Cluster store: embedded raft ({health}: {status.get('reachable')} of {len(members)} "
        f"managers reachable; leader {status.get('leader')}; index {status.get('last_applied')})"
    )
