"""Build script: compiles the Cython/C fast path unless MESHKIT_NO_EXTENSIONS=1.

Everything declarative lives in pyproject.toml; this file only describes the
extension modules, because their sources and flags are computed.
"""

import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join("src", "meshkit")


def _has_nghttp2() -> bool:
    """libnghttp2's headers are there (Debian: libnghttp2-dev)."""
    if os.environ.get("MESHKIT_NO_NGHTTP2") == "1":
        return False
    import sysconfig

    dirs = [sysconfig.get_config_var("INCLUDEDIR") or "/usr/include", "/usr/include"]
    dirs += os.environ.get("CPATH", "").split(os.pathsep)
    return any(os.path.exists(os.path.join(d, "nghttp2", "nghttp2.h")) for d in dirs if d)


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
    modules = [fastpath]
    if _has_nghttp2():
        # HTTP/2 framing by libnghttp2 (meshkit.web.h2ng); without its headers the h2 layer
        # uses python-hyper's h2 alone
        modules.append(
            Extension(
                "meshkit._h2ng",
                sources=[os.path.join(PKG, "_h2ng.pyx")],
                include_dirs=[os.path.join(PKG, "includes")],
                libraries=["nghttp2"],
                extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
            )
        )
    return cythonize(
        modules,
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
