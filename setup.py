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


# -O2 unless the packager says otherwise: OpenWrt builds for size (its CFLAGS carry -Os,
# which a later -O2 here would override), so its Makefile sets VPNCRYPT_OPT=-Os.
OPT = os.environ.get("VPNCRYPT_OPT", "-O2").split()


def _sources():
    """The .pyx through Cython; without Cython, the C it generated (in the sdist, or
    copied in by scripts/cross-test.sh, whose Debian 12 chroots have only Cython 0.29)."""
    try:
        from Cython.Build import cythonize
    except ImportError:
        if os.path.exists("vpncrypt/_fast.c"):
            return None
        sys.exit("vpncrypt: Cython >= 3.0 is needed to build the native core "
                 "(pip install 'Cython>=3.0'), or set VPNCRYPT_NO_EXT=1")
    return cythonize


ext_modules = []
if os.environ.get("VPNCRYPT_NO_EXT") != "1":
    if not _have_openssl_headers() and not os.environ.get("VPNCRYPT_SKIP_HEADER_CHECK"):
        sys.exit(OPENSSL_HINT)
    cythonize = _sources()
    # The protocol rules' numbers come from the Python modules that own them; regenerate
    # them before Cython reads them (an sdist has no scripts/ and ships the file).
    if cythonize and os.path.exists("scripts/gen_fast_rules.py"):
        import runpy
        if runpy.run_path("scripts/gen_fast_rules.py")["main"]([]):
            sys.exit("vpncrypt: could not generate vpncrypt/_fast_rules.pxi")
    source = "vpncrypt/_fast.pyx" if cythonize else "vpncrypt/_fast.c"
    ext = Extension(
        "vpncrypt._fast",
        [source],
        libraries=["crypto"],
        extra_compile_args=OPT + ["-Werror=implicit-function-declaration"],
    )
    ext_modules = [ext] if cythonize is None else cythonize(
        [ext],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
