"""`--store` and its TLS flags on `meshkit node init|join`, and doctor's store line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.base.durations import DurationError
from meshkit.base.errors import FlagError
from meshkit.cli.storeflags import store_line, store_spec


def test_store_spec_names_the_flag() -> None:
    assert store_spec(None, None, None, None) == {}
    spec = store_spec("etcd://127.0.0.1:2379", None, None, None)
    assert spec["endpoints"] == ["127.0.0.1:2379"] and spec["tls"] is False
    with pytest.raises(FlagError, match="--store") as info:
        store_spec("http://127.0.0.1:2379", None, None, None)
    assert "expected etcd://HOST:PORT" in str(info.value)
    with pytest.raises(FlagError, match="--store-cacert"):
        store_spec(None, "/etc/hostname", None, None)


def test_store_lease_flag() -> None:
    from meshkit.cluster.raft.etcd_replica import EtcdTimings
    from meshkit.cluster.raft.etcd_spec import StoreSpec

    spec = store_spec("etcd://127.0.0.1:2379", None, None, None, "12s")
    assert spec["lease_ttl"] == 12
    back = StoreSpec.from_dict(spec)
    assert back.lease_ttl == 12
    timings = EtcdTimings.for_lease(back.lease_ttl)
    assert (timings.lease_ttl, timings.keepalive) == (12, 3.6)
    assert EtcdTimings.for_lease(0) == EtcdTimings()
    assert store_spec("etcd://127.0.0.1:2379", None, None, None)["lease_ttl"] == 0
    for bad in ("1s", "61s", "2500ms"):
        with pytest.raises(FlagError, match="--store-lease"):
            store_spec("etcd://127.0.0.1:2379", None, None, None, bad)
    with pytest.raises(DurationError, match="--store-lease"):
        store_spec("etcd://127.0.0.1:2379", None, None, None, "soon")
    with pytest.raises(FlagError, match="--store-lease") as info:
        store_spec(None, None, None, None, "10s")
    assert "needs --store" in str(info.value)


def test_store_line() -> None:
    etcd = {
        "store": "etcd", "store_url": "etcd://127.0.0.1:2379", "healthy": False,
        "error": "cannot reach etcd at http://127.0.0.1:2379: refused", "is_leader": False,
        "leader": "127.0.0.1:2378", "last_applied": 12, "snapshot_revision": 0, "log_entries": 3,
        "lease_ttl": 5,
    }  # fmt: skip
    assert store_line(etcd) == (
        "Cluster store: etcd etcd://127.0.0.1:2379 (unreachable: cannot reach etcd at "
        "http://127.0.0.1:2379: refused; revision 12 applied, snapshot at 0, 3 log entries; "
        "leader 127.0.0.1:2378; lease 5s)"
    )
    raft = {"members": ["a", "b", "c"], "has_quorum": True, "reachable": 3, "leader": "a",
            "last_applied": 7}  # fmt: skip
    assert store_line(raft) == (
        "Cluster store: embedded raft (quorum: 3 of 3 managers reachable; leader a; index 7)"
    )


def test_init_refuses_a_bad_store_without_a_traceback(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshkit", "node", "init", "--store", "etcd://127.0.0.1",
         "--data-dir", str(tmp_path / "d"), "--host", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--store" in r.stderr and "is not HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "d" / "node.json").exists()
