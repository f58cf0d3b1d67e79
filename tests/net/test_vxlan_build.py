"""Which AEAD library the C plane's sealing is built with (net/vxlan/build.py)."""

from __future__ import annotations

import pytest

from meshkit.net.vxlan import build


def test_the_environment_forces_a_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_VXLAN_CRYPTO", "openssl")
    assert build.sealing_library() == "crypto"
    monkeypatch.setenv("MESHKIT_VXLAN_CRYPTO", " GCrypt ")
    assert build.sealing_library() == "gcrypt"


def test_a_bad_choice_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_VXLAN_CRYPTO", "sodium")
    with pytest.raises(ValueError, match="MESHKIT_VXLAN_CRYPTO='sodium'"):
        build.sealing_library()


def test_the_probe_picks_gcrypt_only_when_it_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a choice the probe compiles and links a libgcrypt program with the build's own
    compiler; a compiler that cannot (here: one that does not exist) means OpenSSL."""
    monkeypatch.delenv("MESHKIT_VXLAN_CRYPTO", raising=False)
    assert build.sealing_library() in ("gcrypt", "crypto")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert build.sealing_library() == "crypto"
