"""The package installs and runs compiled, and as pure Python with MESHKIT_NO_EXTENSIONS=1."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import meshkit
from meshkit._ext import load_fastpath

ROOT = Path(__file__).resolve().parent.parent


def test_installed_package_has_the_fast_path() -> None:
    # scripts/test installs meshkit compiled; the tests must not silently run without it.
    assert os.environ.get("MESHKIT_NO_EXTENSIONS", "") in ("", "0")
    assert load_fastpath() is not None


def test_no_extensions_switch_selects_the_twins() -> None:
    code = (
        "import meshkit.lb as lb, meshkit.l4.relay as r;"
        "print(type(lb.ConnTable()).__name__, type(r.make_relay()).__name__)"
    )
    env = {**os.environ, "MESHKIT_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["PyConnTable", "PyRelay"]
    env["MESHKIT_NO_EXTENSIONS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["ConnTable", "Relay"]


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree")
def test_pure_python_install_runs(tmp_path: Path) -> None:
    """MESHKIT_NO_EXTENSIONS=1 at build time gives a wheel without C that still works."""
    env = {**os.environ, "MESHKIT_NO_EXTENSIONS": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        env=env, check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("meshkit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names
    assert "py3-none-any" in wheel.name
    # A venv that sees this interpreter's dependencies (uvloop, typer) but not its meshkit.
    vdir = tmp_path / "venv"
    venv.create(vdir, system_site_packages=True, with_pip=False)
    py = vdir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
         "--target", str(tmp_path / "site"), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    run_env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "MESHKIT_NO_EXTENSIONS": "0"}
    out = subprocess.run(
        [str(py), "-c",
         "import meshkit, meshkit._ext as e, meshkit.lb as lb; "
         "print(meshkit.__file__, e.load_fastpath(), type(lb.ConnTable()).__name__)"],
        env=run_env, capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    where, fastpath, table = out.stdout.split()
    assert where.startswith(str(tmp_path / "site"))
    assert (fastpath, table) == ("None", "PyConnTable")
    out = subprocess.run([str(py), "-m", "meshkit", "--version"], env=run_env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"meshkit {meshkit.__version__}"
