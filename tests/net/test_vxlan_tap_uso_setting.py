"""$MESHKIT_VXLAN_TAP_USO, read when a plane is made: 0 keeps the C plane from ever writing USO
super-frames into its TAPs, 1 or unset lets it try; anything else is refused by name. The
Python twin never writes USO, so it reports tap_uso 0 whatever the setting."""

from __future__ import annotations

import socket

import pytest

from meshkit.net.vxlan.plane import DataplaneError, UserspaceDataplane, load_vxlan_ffi
from support.peers import free_port

IMPLS = [
    pytest.param("c", marks=pytest.mark.skipif(load_vxlan_ffi() is None, reason="no C plane")),
    "python",
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("setting", [None, "1", "0"])
def test_tap_uso_setting(impl: str, setting: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if setting is None:
        monkeypatch.delenv("MESHKIT_VXLAN_TAP_USO", raising=False)
    else:
        monkeypatch.setenv("MESHKIT_VXLAN_TAP_USO", setting)
    with UserspaceDataplane("127.0.0.1", free_port(socket.SOCK_DGRAM), impl) as plane:
        monkeypatch.setenv("MESHKIT_VXLAN_TAP_USO", "0")  # read once: a later change is not seen
        want = 1 if impl == "c" and setting != "0" else 0
        assert plane.stats()["offload"]["tap_uso"] == want


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_tap_uso_setting_is_named(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_VXLAN_TAP_USO", "yes")
    with pytest.raises(DataplaneError, match=r"MESHKIT_VXLAN_TAP_USO='yes': expected 0"):
        UserspaceDataplane("127.0.0.1", free_port(socket.SOCK_DGRAM), impl)
