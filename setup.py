"""Builds the native extension vpncrypt._fast against the system libcrypto (OpenSSL >= 3.0).

Everything else about the package lives in pyproject.toml.
"""
import os
import sys

from setuptools import Extension, setup

OPENSSL_HINT = (
    "vpncrypt: OpenSSL >= 3.0 headers not found (openssl/evp.h). Install them: "
    "Debian/Ubuntu 'apt-get install libssl-dev', OpenWrt 'libopenssl' (build dep), "
    "FreeBSD base system or 'pkg install openssl'. Set VPNCRYPT_NO_EXT=1 to build "
    "without the native core (pure-Python fallback, slower)."
)


def _have_openssl_headers():
    dirs = [d for d in os.environ.get("CPATH", "").split(":") if d]
    dirs += ["/usr/include", "/usr/local/include", "/opt/homebrew/include"]
    return any(os.path.exists(os.path.join(d, "openssl", "evp.h")) for d in dirs)


ext_modules = []
if os.environ.get("VPNCRYPT_NO_EXT") != "1":
    if not _have_openssl_headers() and not os.environ.get("VPNCRYPT_SKIP_HEADER_CHECK"):
        sys.exit(OPENSSL_HINT)
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(
                "vpncrypt._fast",
                ["vpncrypt/_fast.pyx"],
                libraries=["crypto"],
                extra_compile_args=["-O2", "-Werror=implicit-function-declaration"],
            )
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
