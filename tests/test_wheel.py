"""Wheel and sdist packaging: the cibuildwheel selection, what the sdist carries, and (under
scripts/build-wheels) that the suite really runs against the installed wheel."""

from __future__ import annotations

import fnmatch
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

# tomllib is 3.11+; the wheels also test on 3.10, where the config checks skip.
tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
BUILD_SOURCE_SUFFIXES = (".pyx", ".pxd", ".pxi", ".c", ".h")
# Written by Cython at build time from _fastpath.pyx; a shipped copy could be stale.
GENERATED = {"src/meshkit/_fastpath.c", "src/meshkit/_h2ng.c"}  # Cython output, never shipped

needs_tree = pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree")


def _cibw() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        data = tomllib.load(f)
    config: dict[str, Any] = data["tool"]["cibuildwheel"]
    config["requires-python"] = data["project"]["requires-python"]
    return config


def _selected(config: dict[str, Any], identifier: str) -> bool:
    """cibuildwheel's rule: matched by a `build` pattern, by no `skip` pattern, and a Python
    version that requires-python admits (only >=3.X appears here)."""
    build = config["build"].split()
    skip = config.get("skip", "").split()
    floor = int(config["requires-python"].removeprefix(">=3."))
    minor = int(identifier.split("-")[0].removeprefix("cp").removeprefix("pp")[1:].rstrip("t"))
    return (
        any(fnmatch.fnmatch(identifier, p) for p in build)
        and not any(fnmatch.fnmatch(identifier, p) for p in skip)
        and minor >= floor
    )


@needs_tree
def test_cibuildwheel_builds_manylinux_cpython_310_and_newer_for_both_arches() -> None:
    config = _cibw()
    assert config["linux"]["archs"] == ["x86_64", "aarch64"]
    for arch in ("x86_64", "aarch64"):
        for minor in range(10, 16):
            assert _selected(config, f"cp3{minor}-manylinux_{arch}"), (minor, arch)
        for left_out in (
            f"cp39-manylinux_{arch}",
            f"pp310-manylinux_{arch}",
            f"cp312-musllinux_{arch}",
            f"cp314t-manylinux_{arch}",
        ):
            assert not _selected(config, left_out), left_out


@needs_tree
def test_cibuildwheel_tests_the_installed_wheel_with_the_test_extras() -> None:
    config = _cibw()
    assert config["test-extras"] == ["test"]
    # From the project root (the src/ layout keeps the source meshkit off sys.path), with the
    # check that the meshkit under test is the installed one.
    command = config["test-command"]
    assert command.startswith("cd {project} && ")
    assert "MESHKIT_WHEEL_SITE=" in command and "python -m pytest" in command
    assert "auditwheel repair" in config["linux"]["repair-wheel-command"]


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(
        "__pycache__",
        "*.so",
        "*.egg-info",
        "build",
        "dist",
        ".hypothesis",
        "_fastpath.c",
        "_h2ng.c",
    )
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("src", "tests", "bench"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)


@needs_tree
def test_sdist_carries_every_build_input_and_no_binaries(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    _copy_tree(tree)
    # setuptools' PEP 517 backend, as `python -m build --sdist` calls it (no build isolation:
    # the test extras pin the same setuptools and Cython as build-system requires).
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MESHKIT_NO_EXTENSIONS"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist = tmp_path / "dist" / proc.stdout.split()[-1]
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        members = {n.removeprefix(top + "/") for n in tf.getnames()}

    wanted = {
        str(p.relative_to(tree))
        for p in (tree / "src" / "meshkit").rglob("*")
        if p.is_file()
        and (p.suffix in BUILD_SOURCE_SUFFIXES or p.suffix == ".py")
        and "__pycache__" not in p.parts
    } - GENERATED
    assert "src/meshkit/_fastpath.pyx" in wanted and "src/meshkit/_vxlan.c" in wanted
    assert "src/meshkit/includes/vxlan.h" in wanted
    assert wanted - members == set()
    # The wheel's test command runs tests/ from the project; one e2e test runs bench/overlay.py.
    assert {
        "tests/conftest.py",
        "tests/test_wheel.py",
        "bench/overlay.py",
        "MANIFEST.in",
        "setup.py",
        "pyproject.toml",
    } <= members
    assert not GENERATED & members
    assert not [m for m in members if m.endswith((".so", ".pyc", ".o"))]


def test_meshkit_under_test_is_the_installed_wheel() -> None:
    """scripts/build-wheels sets MESHKIT_WHEEL_SITE to the venv it installed the wheel into: the
    suite must then exercise that meshkit and its compiled modules, never src/."""
    site = os.environ.get("MESHKIT_WHEEL_SITE")
    if not site:
        pytest.skip("not run by scripts/build-wheels (MESHKIT_WHEEL_SITE unset)")
    for name in ("meshkit", "meshkit._fastpath", "meshkit._vxlan_ffi"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().is_relative_to(Path(site).resolve()), (
            name,
            module.__file__,
        )
