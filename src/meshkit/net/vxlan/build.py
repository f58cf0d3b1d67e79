"""cffi builder (API mode, out of line) for the userspace VXLAN data plane `meshkit._vxlan_ffi`.

setup.py hands `ffibuilder` to cffi through ``cffi_modules`` (skipped with
MESHKIT_NO_EXTENSIONS=1); ``python setup.py build_ext --inplace`` puts the module beside the
sources. Paths are relative to the project root, where setup.py runs.
"""

from __future__ import annotations

import os
import tempfile

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

GCRYPT_PROBE = """#include <gcrypt.h>
int main(void)
{
    gcry_cipher_hd_t h;
    return gcry_check_version(GCRYPT_VERSION) == 0 ||
           gcry_cipher_open(&h, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_GCM, 0) != 0;
}
"""


def sealing_library() -> str:
    """The AEAD library seal.c is built with: "gcrypt" when this build's compiler (the target's,
    in a cross build) finds libgcrypt's header and library, else "crypto" (OpenSSL).

    Why libgcrypt first: per sealed frame it costs a third less CPU than OpenSSL 3.0's EVP
    (csrc/vxlan/seal.c says what was measured). MESHKIT_VXLAN_CRYPTO=openssl|gcrypt forces one."""
    forced = os.environ.get("MESHKIT_VXLAN_CRYPTO", "").strip().lower()
    if forced == "openssl":
        return "crypto"
    if forced == "gcrypt":
        return "gcrypt"
    if forced:
        raise ValueError(f"MESHKIT_VXLAN_CRYPTO={forced!r}: expected openssl or gcrypt")
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w", encoding="utf-8") as f:
            f.write(GCRYPT_PROBE)
        try:
            objs = cc.compile([src], output_dir=tmp)
            cc.link_executable(objs, os.path.join(tmp, "probe"), libraries=["gcrypt"])
        except (CCompilerError, DistutilsError):
            return "crypto"
    return "gcrypt"


CRYPTO_LIB = sealing_library()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "meshkit._vxlan_ffi",
    '#include "vxlan.h"',
    # csrc/vxlan/: route.c tables and ARP, offload.c checksums/TSO/GRO, datapath.c the
    # threads, seal.c AEAD sealing for encrypted networks with libgcrypt (libgcrypt20-dev)
    # where the build finds it, else OpenSSL's libcrypto (libssl-dev)
    sources=[os.path.join(_PKG, "_vxlan.c")]
    + [
        os.path.join(_PKG, "csrc", "vxlan", f"{name}.c")
        for name in ("route", "offload", "datapath", "seal")
    ],
    include_dirs=[os.path.join(_PKG, "includes")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    define_macros=[("VX_SEAL_GCRYPT", "1")] if CRYPTO_LIB == "gcrypt" else [],
    libraries=["pthread", CRYPTO_LIB],
)
