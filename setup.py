"""Build script: compiles the Cython/C fast path unless MESHKIT_NO_EXTENSIONS=1.

Everything declarative lives in pyproject.toml; this file only describes the
extension modules, because their sources and flags are computed.
"""

import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join("src", "meshkit")


def extensions() -> list[Extension]:
    if os.environ.get("MESHKIT_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    csrc = os.path.join(PKG, "csrc")
    c_files = sorted(
        os.path.join(csrc, name)
        for name in os.listdir(os.path.join(HERE, csrc))
        if name.endswith(".c")
    )
    fastpath = Extension(
        "meshkit._fastpath",
        sources=[os.path.join(PKG, "_fastpath.pyx"), *c_files],
        include_dirs=[os.path.join(PKG, "includes")],
        libraries=["ssl", "crypto"],  # csrc/tls_conn.c: the HTTPS server's TLS connections
        extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    )
    return cythonize(
        [fastpath],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        include_path=[os.path.join(PKG, "includes"), PKG],
    )


def cffi_modules() -> list[str]:
    """The cffi builders (userspace VXLAN data plane), unless extensions are off."""
    if os.environ.get("MESHKIT_NO_EXTENSIONS") == "1":
        return []
    return [os.path.join(PKG, "net", "vxlan", "build.py") + ":ffibuilder"]


setup(
    ext_modules=extensions(),
    cffi_modules=cffi_modules(),
    # MANIFEST.in puts the C/Cython sources in the sdist; they are build inputs only, and the
    # wheel carries just the compiled modules.
    exclude_package_data={"": ["*.c", "*.h", "*.pyx", "*.pxd", "*.pxi"]},
)
