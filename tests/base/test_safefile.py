"""meshkit.base.safefile: only regular files, never more than the cap, never a hang."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.base.errors import MeshkitError
from meshkit.base.safefile import KIB, FileReadError, read_regular_file, read_text_file


def quickly(fn: Callable[[], object], timeout: float = 5.0) -> object:
    """Run fn in a thread; fail (instead of hanging the test run) if it blocks."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed back to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the read blocked"
    return out[0]


def test_regular_file_and_symlink_to_it(tmp_path: Path) -> None:
    f = tmp_path / "a"
    f.write_bytes(b"hello\n")
    (tmp_path / "link").symlink_to(f)
    assert read_regular_file(str(f), KIB) == b"hello\n"
    assert read_text_file(str(tmp_path / "link"), KIB) == "hello\n"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    for path in (fifo, tmp_path / "link"):
        exc = quickly(lambda p=path: read_regular_file(str(p), KIB, "backends file"))
        assert isinstance(exc, FileReadError) and isinstance(exc, MeshkitError)
        assert exc.reason == "not a regular file (a FIFO)"
        assert str(exc) == f"cannot read the backends file {path}: not a regular file (a FIFO)"


def test_devices_are_refused() -> None:
    with pytest.raises(FileReadError, match=r"not a regular file \(a character device\)"):
        read_regular_file("/dev/zero", KIB)


def test_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileReadError, match="Is a directory"):
        read_regular_file(str(tmp_path), KIB)
    with pytest.raises(FileReadError, match="No such file or directory"):
        read_regular_file(str(tmp_path / "nope"), KIB)


def test_size_cap(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * KIB)
    assert len(read_regular_file(str(f), KIB)) == KIB  # exactly the cap is fine
    f.write_bytes(b"x" * (KIB + 1))
    with pytest.raises(FileReadError, match=r"larger than the 1 KiB limit for a Caddyfile"):
        read_regular_file(str(f), KIB, "Caddyfile")


def test_proc_files_report_size_zero_but_are_still_capped() -> None:
    # /proc files are "regular" with st_size 0: the read itself must stop at the cap
    with pytest.raises(FileReadError, match="larger than"):
        read_regular_file("/proc/self/maps", 16)


def test_not_utf8_names_the_offset_only(tmp_path: Path) -> None:
    f = tmp_path / "bin"
    f.write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(FileReadError, match=r"not UTF-8 text \(byte 3\)"):
        read_text_file(str(f), KIB)
