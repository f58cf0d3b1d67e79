"""raft/autolock.py: the unlock key format, the locked files (AES-GCM under an HKDF key, the
file name bound in), re-locking from one key to another or to clear, and the unlock gate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshkit.cluster.raft import autolock


def test_key_and_file_round_trip(tmp_path: Path) -> None:
    key = autolock.new_unlock_key()
    assert key.startswith("MKKEY-1-") and key != autolock.new_unlock_key()
    text = autolock.encrypt(b"raft-secret", key, "secret")
    assert text.startswith("mklock1:") and "raft-secret" not in text
    assert autolock.decrypt(text, key, "secret") == b"raft-secret"
    with pytest.raises(autolock.LockError, match="does not open"):
        autolock.decrypt(text, autolock.new_unlock_key(), "secret")
    with pytest.raises(autolock.LockError, match="does not open"):
        autolock.decrypt(text, key, "datakey")  # bound to its file name
    for bad in ("SWMKEY-1-abc", "MKKEY-1-abc", "MKKEY-1-!!!!"):
        with pytest.raises(autolock.LockError, match="invalid unlock key"):
            autolock.encrypt(b"x", bad, "secret")


def test_relock_between_keys_and_clear(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s1")
    (tmp_path / "datakey").write_text("d1")
    k1, k2 = autolock.new_unlock_key(), autolock.new_unlock_key()
    autolock.relock(tmp_path, None, k1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datakey.locked", "secret.locked"]
    assert autolock.is_locked(tmp_path) and autolock.in_clear(tmp_path) == []
    with pytest.raises(autolock.LockError, match="locked"):
        autolock.read_file(tmp_path / "secret", None)
    autolock.relock(tmp_path, k1, k2)
    assert autolock.read_file(tmp_path / "datakey", k2) == "d1"
    with pytest.raises(autolock.LockError):
        autolock.read_file(tmp_path / "datakey", k1)
    autolock.write_file(tmp_path / "secret", "s2", None)  # one file back in clear
    assert autolock.in_clear(tmp_path) == ["secret"] and autolock.is_locked(tmp_path)
    autolock.relock(tmp_path, k2, None)
    assert not autolock.is_locked(tmp_path)
    assert (tmp_path / "secret").read_text() == "s2" and (tmp_path / "datakey").read_text() == "d1"


def test_gate_checks_the_key_before_it_opens(tmp_path: Path) -> None:
    key = autolock.new_unlock_key()
    autolock.write_file(tmp_path / "secret", "s", key)
    gate = autolock.Gate(tmp_path)

    async def main() -> str:
        waiter = asyncio.ensure_future(gate.wait())
        await asyncio.sleep(0)
        assert gate.locked
        with pytest.raises(autolock.LockError):
            gate.unlock(autolock.new_unlock_key())
        assert gate.locked and not waiter.done()
        gate.unlock(key + "\n")
        return await waiter

    assert asyncio.run(main()) == key
    assert not gate.locked
    assert autolock.node_gate(tmp_path) is autolock.gate_for(tmp_path / "raft")
