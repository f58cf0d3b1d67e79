"""cffi builder (API mode, out of line) for the userspace VXLAN data plane `meshkit._vxlan_ffi`.

setup.py hands `ffibuilder` to cffi through ``cffi_modules`` (skipped with
MESHKIT_NO_EXTENSIONS=1); ``python setup.py build_ext --inplace`` puts the module beside the
sources. Paths are relative to the project root, where setup.py runs.
"""

from __future__ import annotations

import os

from cffi import FFI  # type: ignore[import-untyped]

_PKG = os.path.join("src", "meshkit")

HEADER = os.path.join(_PKG, "includes", "vxlan.h")


def read_cdef(path: str = HEADER) -> str:
    """The declarations cffi needs, taken from the C header itself (between its includes and
    its closing guard) so that the two can never disagree; cffi drops the comments."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index("#include <stdint.h>") + len("#include <stdint.h>")
    end = text.index("#endif /* MESHKIT_VXLAN_H */")
    return text[start:end]


CDEF = read_cdef()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "meshkit._vxlan_ffi",
    '#include "vxlan.h"',
    # seal.c: AEAD sealing for encrypted networks, with OpenSSL's libcrypto (libssl-dev)
    sources=[os.path.join(_PKG, "_vxlan.c"), os.path.join(_PKG, "csrc", "vxlan", "seal.c")],
    include_dirs=[os.path.join(_PKG, "includes")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread", "crypto"],
)
