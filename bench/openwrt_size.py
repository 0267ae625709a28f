"""Estimated flash cost of vpncrypt's OpenWrt package and everything its DEPENDS pull in
(and, for comparison, what python3-pyroute2 would add).

Run by hand (not part of the test suite), with the dev venv's interpreter so that the
standard library, docopt and pyroute2 are the ones the project is tested with:

    .venv/bin/python bench/openwrt_size.py                # Markdown table on stdout
    .venv/bin/python bench/openwrt_size.py --no-xz        # skip the compressed column

No OpenWrt build system or device is involved: this is an ESTIMATE made from the files
of this x86_64 machine, laid out the way OpenWrt's packages feed splits them.

Method
------
* The package split follows the packages feed's lang/python/python3 Makefile and its
  files/python3-package-*.mk (as read in stored copies of openwrt/packages; the lists
  move a little between feed versions): python3-base is the interpreter plus the ~15
  files it needs to start; libpython3 is libpython3.X.so; python3-light is the rest of
  lib/python3.X minus tests, idlelib, tkinter, turtledemo, ensurepip, the test
  extension modules and every split-out part; each split-out part (asyncio, ctypes,
  email, logging, xml, ...) is its own python3-* package. The full `python3` package
  is a meta package depending on python3-light and every split-out part except the
  ones marked not to be added (pip, setuptools, lib2to3, venv, dev), and
  python3-pyroute2 DEPENDS on `+python3`, so it pulls them all in.
* The standard library measured is the running interpreter's (sys.base_prefix), which
  should be an upstream `make install` layout (pyenv, or a source build) like the one
  OpenWrt packages; Debian's /usr/lib/python3.X is split into several .debs and
  partly built into the binary (the script stops when lib-dynload/_ctypes or
  distutils is missing, but cannot catch every difference). Its .py files are copied
  to a temporary directory and byte-compiled the
  way the feed does it (`compileall -b -d /`: unoptimised, level 0, legacy .pyc next
  to the source, which is then deleted), and the .pyc sizes are summed; data files
  the filespecs keep are counted as they are.
* Binaries (the interpreter, libpython, lib-dynload extension modules, vpncrypt's
  native extension, the system's C libraries) are counted after `strip --strip-all`
  into a temporary file, as OpenWrt strips what it installs (kernel module:
  `--strip-debug`). C libraries (libcrypto/libssl for libopenssl, zlib, libbz2,
  libffi, and the ones the full `python3` pulls: libsqlite3, libncursesw, libreadline,
  liblzma, libgdbm, libuuid) are Debian 12's x86_64 builds; kmod-tun is this machine's
  Debian tun.ko. docopt and pyroute2 come from the interpreter's site-packages (which
  may be newer than the feed's: the feed packages docopt 0.6.2 and an older pyroute2).
* vpncrypt is this repository's vpncrypt/ package as the feed Makefile's filespec keeps
  it (no _fast.pyx, _fast_*.pxi, _fast.c, tun/freebsd.py), byte-compiled, plus the built extension
  vpncrypt/_fast*.so (here or --extension) and the three files of openwrt/net/vpncrypt/files.
* "installed" is the sum of apparent file sizes of what the package would install.
  The "xz" column is a rough stand-in for flash: each package's files
  concatenated and xz-compressed in independent 256 KiB blocks (squashfs's block size
  in OpenWrt images). A package installed later with opkg lands on the JFFS2 or UBIFS
  overlay instead, whose compression (zlib/lzo/zstd) is weaker than xz.
* An import audit (fresh `python -S` processes) lists which OpenWrt packages the
  daemon, the operator CLI and the interface helper actually load modules from.

Limits
------
* x86_64 code stands in for MIPS and ARM. Byte code (.pyc) is the same on every
  architecture. Native code is not: MIPS32 is usually larger than x86_64 (fixed 4-byte
  instructions), ARM Thumb-2 smaller, AArch64 roughly comparable; OpenWrt also builds
  with -Os, LTO (except MIPS) and musl, and OpenSSL with many algorithms disabled,
  while Debian's and pyenv's builds use -O2/-O3 with glibc, so native sizes here are
  more likely too high than too low. No per-architecture factor is applied.
* No .ipk is built, nothing is installed on a device, and RAM is not measured here
  (bench/memory.py measures the daemon's resident memory on x86_64).
* Temporary files go to one directory under $TMPDIR that is removed at exit.
"""

from __future__ import annotations

import argparse
import compileall
import concurrent.futures
import datetime
import fnmatch
import glob
import importlib.util
import lzma
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

VER = f"{sys.version_info[0]}.{sys.version_info[1]}"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSLIB = "/usr/lib/x86_64-linux-gnu"
BLOCK = 256 * 1024

# ---------------------------------------------------------------------------------------
# How the packages feed splits lib/python3.X (paths relative to it). A trailing "/" is a
# directory; "*" globs; "lib-dynload/NAME" matches NAME.<any suffix>.so.

BASE_FILES = [
    "encodings/", "_collections_abc.py", "_sitebuiltins.py", "_sysconfigdata*.py",
    "_weakrefset.py", "abc.py", "codecs.py", "genericpath.py", "io.py", "os.py",
    "posixpath.py", "site.py", "sysconfig.py", "stat.py",
]

# Split-out packages that the `python3` meta package depends on, with their extra
# native-library DEPENDS (the ones beyond python3-light's).
SPLIT = {
    "python3-asyncio": (["asyncio/"], [], "asyncio"),
    "python3-cgi": (["cgi.py"], [], "cgi module"),
    "python3-cgitb": (["cgitb.py"], [], "cgitb module"),
    "python3-codecs": (["lib-dynload/_codecs_*", "lib-dynload/unicodedata"], [],
                       "CJK codecs, unicodedata"),
    "python3-ctypes": (["ctypes/", "lib-dynload/_ctypes"], [], "ctypes"),
    "python3-dbm": (["dbm/", "lib-dynload/_dbm", "lib-dynload/_gdbm"], ["libgdbm"], "dbm"),
    "python3-decimal": (["decimal.py", "lib-dynload/_decimal"], [], "decimal"),
    "python3-distutils": (["distutils/"], [], "distutils"),
    "python3-email": (["email/"], [], "email"),
    "python3-logging": (["logging/"], [], "logging"),
    "python3-lzma": (["lzma.py", "lib-dynload/_lzma"], ["liblzma"], "lzma"),
    "python3-multiprocessing": (["multiprocessing/", "lib-dynload/_multiprocessing"], [],
                                "multiprocessing"),
    "python3-ncurses": (["curses/", "lib-dynload/_curses", "lib-dynload/_curses_panel"],
                        ["libncursesw"], "curses"),
    "python3-openssl": (["lib-dynload/_hashlib", "lib-dynload/_ssl"], [],
                        "_ssl, _hashlib (ssl.py itself is in python3-light)"),
    "python3-pydoc": (["doctest.py", "pydoc.py", "pydoc_data/"], [], "pydoc, doctest"),
    "python3-readline": (["lib-dynload/readline"], ["libreadline"], "readline"),
    "python3-sqlite3": (["sqlite3/", "lib-dynload/_sqlite3"], ["libsqlite3"], "sqlite3"),
    "python3-unittest": (["unittest/"], [], "unittest"),
    "python3-urllib": (["urllib/"], [], "urllib"),
    "python3-uuid": (["uuid.py", "lib-dynload/_uuid"], ["libuuid"], "uuid"),
    "python3-webbrowser": (["webbrowser.py"], [], "webbrowser"),
    "python3-xml": (["xml/", "xmlrpc/", "lib-dynload/_elementtree", "lib-dynload/pyexpat"],
                    [], "xml, xmlrpc, pyexpat"),
}

# Split out too, but not depended on by `python3` (nor by vpncrypt): not counted.
NOT_PULLED = {
    "python3-lib2to3": ["lib2to3/"],
    "python3-venv": ["venv/", "ensurepip/"],
    "python3-dev": ["config-*/"],
}

# Left out of every package (python3-light's filespec exclusions, the feed's
# --disable-test-modules, modules OpenWrt does not build, and this machine's extras).
DROPPED = [
    "site-packages/", "__pycache__/", "*/__pycache__/", "test/", "*/test/", "*/tests/",
    "idlelib/", "tkinter/", "turtledemo/", "pdb.doc", "_osx_support.py",
    "distutils/cygwinccompiler.py", "distutils/command/wininst*",
    "lib-dynload/_test*", "lib-dynload/_ctypes_test", "lib-dynload/xxlimited*",
    "lib-dynload/_xxtestfuzz", "lib-dynload/_tkinter",
]

# System libraries: OpenWrt package -> Debian x86_64 files standing in for it.
CLIBS = {
    "libopenssl": (["libcrypto.so.3", "libssl.so.3"], "libcrypto + libssl (OpenSSL 3)"),
    "zlib": (["libz.so.1.*"], "zlib"),
    "libbz2": (["libbz2.so.1.0.*"], "bzip2 library"),
    "libffi": (["libffi.so.8.*"], "libffi"),
    "libgdbm": (["libgdbm.so.6.*"], "GNU dbm"),
    "liblzma": (["liblzma.so.5.*"], "xz library"),
    "libncursesw": (["libncursesw.so.6.*", "libtinfo.so.6.*"],
                    "ncurses (Debian splits off libtinfo; both counted)"),
    "libreadline": (["libreadline.so.8.*"], "GNU readline"),
    "libsqlite3": (["libsqlite3.so.0.*"], "SQLite"),
    "libuuid": (["libuuid.so.1.*"], "libuuid"),
}


def _match(rel: str, pattern: str) -> bool:
    if pattern.endswith("/"):
        d = pattern[:-1]
        return any(fnmatch.fnmatch(rel[: i], d) for i in range(len(rel)) if rel[i] == "/")
    if pattern.startswith("lib-dynload/") and not pattern.endswith((".py", ".so")):
        return fnmatch.fnmatch(rel, pattern + ".*so")
    return fnmatch.fnmatch(rel, pattern)


def classify(rel: str) -> str | None:
    """OpenWrt package of a path relative to lib/python3.X; None if dropped."""
    if any(_match(rel, p) for p in DROPPED):
        return None
    for pkg, pats in NOT_PULLED.items():
        if any(_match(rel, p) for p in pats):
            return "~" + pkg
    for pkg, (pats, _libs, _what) in SPLIT.items():
        if any(_match(rel, p) for p in pats):
            return pkg
    if any(_match(rel, p) for p in BASE_FILES):
        return "python3-base"
    return "python3-light"


# ---------------------------------------------------------------------------------------

class Collector:
    """Files as they would be installed, per package, in one temporary directory."""

    def __init__(self, tmp: str, strip: str | None):
        self.tmp = tmp
        self.strip = strip
        self.files: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self.n = 0

    def _dest(self, name: str) -> str:
        self.n += 1
        d = os.path.join(self.tmp, "bin", str(self.n))
        os.makedirs(d)
        return os.path.join(d, os.path.basename(name))

    def add(self, pkg: str, path: str) -> None:
        self.files.setdefault(pkg, []).append(path)

    def add_binary(self, pkg: str, src: str, kmod: bool = False) -> None:
        src = os.path.realpath(src)
        dst = self._dest(src)
        if src.endswith(".xz"):
            with lzma.open(src) as f, open(dst[:-3], "wb") as out:
                shutil.copyfileobj(f, out)
            src, dst = dst[:-3], dst[:-3] + ".stripped"
        if self.strip:
            flag = "--strip-debug" if kmod else "--strip-all"
            r = subprocess.run([self.strip, flag, "-o", dst, src], capture_output=True)
            if r.returncode == 0:
                self.add(pkg, dst)
                return
            self.notes.append(f"strip failed on {src}; counted unstripped")
        self.add(pkg, src)

    def size(self, pkg: str) -> int:
        return sum(os.path.getsize(f) for f in self.files.get(pkg, []))


def compile_tree(root: str, workers: int) -> None:
    """compileall -b -d / on root, then delete the sources (the feed's Python3/CompileAll)."""
    ok = compileall.compile_dir(root, maxlevels=20, ddir="/", quiet=2, legacy=True,
                                optimize=0, workers=workers)
    if not ok:
        raise SystemExit(f"byte-compiling {root} failed")
    for d, _dirs, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                os.unlink(os.path.join(d, n))


def copy_tree(src: str, dst: str, keep) -> list[str]:
    """Copy the files under src for which keep(rel) is true; return their relative paths."""
    out = []
    for d, dirs, names in os.walk(src):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        for n in names:
            full = os.path.join(d, n)
            rel = os.path.relpath(full, src)
            if n.endswith(".pyc") or os.path.islink(full) or not keep(rel):
                continue
            os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(full, os.path.join(dst, rel))
            out.append(rel)
    return out


def pyc_or_file(root: str, rel: str) -> str | None:
    p = os.path.join(root, rel)
    if rel.endswith(".py"):
        p += "c"
    return p if os.path.exists(p) else None


def stdlib_dir() -> str:
    d = os.path.join(sys.base_prefix, "lib", f"python{VER}")
    dyn = os.path.join(d, "lib-dynload")
    if not glob.glob(os.path.join(dyn, "_ctypes.*so")) or not os.path.isdir(
            os.path.join(d, "distutils")):
        raise SystemExit(f"{d} does not look like an upstream `make install` standard "
                         "library (no lib-dynload/_ctypes or distutils); run this with "
                         "a pyenv or source-built interpreter, e.g. the dev venv's")
    return d


def collect_stdlib(col: Collector, workers: int) -> dict[str, int]:
    std = stdlib_dir()
    root = os.path.join(col.tmp, "root", "usr", "lib", f"python{VER}")
    counted: dict[str, int] = {}
    sos: list[tuple[str, str]] = []

    def keep(rel: str) -> bool:
        pkg = classify(rel)
        if pkg is None or pkg.startswith("~"):
            if pkg:
                counted[pkg] = counted.get(pkg, 0) + 1
            return False
        if rel.startswith("lib-dynload/") and rel.endswith(".so"):
            sos.append((pkg, os.path.join(std, rel)))
            return False
        return True

    rels = copy_tree(std, root, keep)
    compile_tree(os.path.join(col.tmp, "root"), workers)
    for rel in rels:
        p = pyc_or_file(root, rel)
        if p:
            col.add(classify(rel), p)
    for pkg, so in sos:
        col.add_binary(pkg, so)
    libdir = os.path.join(sys.base_prefix, "lib")
    exe = os.path.join(sys.base_prefix, "bin", f"python{VER}")
    col.add_binary("python3-base", exe)
    libpy = glob.glob(os.path.join(libdir, f"libpython{VER}.so.*"))
    if libpy:
        col.add_binary("libpython3", libpy[0])
    else:
        col.notes.append(f"no libpython{VER}.so in {libdir}: the interpreter is static, "
                         "so its binary (python3-base row) holds libpython3 too")
    missing = [n for n in ("_dbm", "_gdbm") if not glob.glob(os.path.join(
        std, "lib-dynload", n + ".*so"))]
    if missing:
        col.notes.append(f"not built in {std}: {', '.join(missing)} (python3-dbm's "
                         "extension modules); counted as 0")
    return counted


def site_module_dir(name: str, site: str | None) -> str:
    if site:
        for cand in (os.path.join(site, name), os.path.join(site, name + ".py")):
            if os.path.exists(cand):
                return cand
        raise SystemExit(f"{name} not found in {site}")
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{name} is not importable; pass --site-packages")
    return os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin


def dist_version(name: str, moddir: str) -> str:
    site = os.path.dirname(moddir)
    for pat in (f"{name}-*.dist-info", f"{name}_*.dist-info"):
        for d in glob.glob(os.path.join(site, pat)):
            return os.path.basename(d)[: -len(".dist-info")]
    return name


def collect_pure(col: Collector, pkg: str, src: str, workers: int) -> None:
    """A pure-Python site-packages module or package, byte-compiled."""
    root = os.path.join(col.tmp, "site", pkg)
    base = os.path.join(root, "usr", "lib", f"python{VER}", "site-packages")
    if os.path.isdir(src):
        rels = copy_tree(src, os.path.join(base, os.path.basename(src)), lambda r: True)
        rels = [os.path.join(os.path.basename(src), r) for r in rels]
    else:
        os.makedirs(base, exist_ok=True)
        shutil.copy2(src, base)
        rels = [os.path.basename(src)]
    compile_tree(root, workers)
    for rel in rels:
        p = pyc_or_file(base, rel)
        if p:
            col.add(pkg, p)


def collect_vpncrypt(col: Collector, extension: str | None, workers: int) -> str:
    src = os.path.join(REPO, "vpncrypt")
    dropped = {"_fast.pyx", "_fast.c", os.path.join("tun", "freebsd.py")}
    root = os.path.join(col.tmp, "site", "vpncrypt")
    base = os.path.join(root, "usr", "lib", f"python{VER}", "site-packages", "vpncrypt")
    rels = copy_tree(src, base, lambda r: r not in dropped and not r.endswith((".so", ".pxi")))
    compile_tree(root, workers)
    for rel in rels:
        p = pyc_or_file(base, rel)
        if p:
            col.add("vpncrypt", p)
    for n in sorted(os.listdir(os.path.join(REPO, "openwrt", "net", "vpncrypt", "files"))):
        col.add("vpncrypt", os.path.join(REPO, "openwrt", "net", "vpncrypt", "files", n))
    if extension is None:
        found = glob.glob(os.path.join(src, "_fast*.so"))
        if not found:
            spec = importlib.util.find_spec("vpncrypt._fast")
            found = [spec.origin] if spec and spec.origin else []
        if not found:
            raise SystemExit("no built vpncrypt/_fast*.so: build it (pip install -e .) "
                             "or pass --extension")
        extension = found[0]
    col.add_binary("vpncrypt", extension)
    return extension


def collect_clibs(col: Collector) -> None:
    for pkg, (pats, _what) in CLIBS.items():
        for pat in pats:
            hits = sorted(glob.glob(os.path.join(SYSLIB, pat)))
            if not hits:
                col.notes.append(f"{pkg}: no {pat} in {SYSLIB}; counted as 0")
                continue
            col.add_binary(pkg, hits[0])
    kmods = glob.glob(f"/lib/modules/{platform.release()}/kernel/drivers/net/tun.ko*") or \
        sorted(glob.glob("/lib/modules/*/kernel/drivers/net/tun.ko*"))
    if kmods:
        col.add_binary("kmod-tun", kmods[0], kmod=True)
        col.notes.append(f"kmod-tun: {kmods[0]}")
    else:
        col.notes.append("kmod-tun: no tun.ko on this machine; counted as 0")


# ---------------------------------------------------------------------------------------
# Compressed size: a rough stand-in for squashfs-xz.

def _xz_block(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                             preset=6))


def xz_sizes(col: Collector, workers: int) -> dict[str, int]:
    jobs: list[tuple[str, bytes]] = []
    for pkg, files in col.files.items():
        buf = bytearray()
        for f in sorted(files):
            with open(f, "rb") as fh:
                buf += fh.read()
        for i in range(0, len(buf), BLOCK):
            jobs.append((pkg, bytes(buf[i: i + BLOCK])))
    out = {pkg: 0 for pkg in col.files}
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as ex:
        for (pkg, _), n in zip(jobs, ex.map(_xz_block, (d for _, d in jobs), chunksize=8)):
            out[pkg] += n
    return out


def overlay_sizes(col: Collector) -> dict[str, int]:
    """What `opkg install` costs on a JFFS2 overlay: each file zlib-compressed in 4 KiB
    pages, a page kept raw when compression does not help (UBIFS's lzo/zstd differ)."""
    import zlib

    out = {}
    for pkg, files in col.files.items():
        n = 0
        for f in files:
            with open(f, "rb") as fh:
                data = fh.read()
            for i in range(0, len(data), 4096):
                page = data[i: i + 4096]
                n += min(len(page), len(zlib.compress(page, 6)))
        out[pkg] = n
    return out


# ---------------------------------------------------------------------------------------
# Import audit: which packages do the three programs load modules from?

AUDIT = {
    "daemon": ["vpncrypt.cli.vpncryptd", "vpncrypt.config", "vpncrypt.control",
               "vpncrypt.daemon.server", "vpncrypt.daemon.client",
               "vpncrypt.daemon.runtime", "vpncrypt.daemon.fastpath",
               "vpncrypt.daemon.privileges", "vpncrypt.daemon.sockfilter",
               "vpncrypt.daemon.logs", "vpncrypt.protocol.aead", "vpncrypt.tun.linux",
               "docopt", "json"],
    "CLI": ["vpncrypt.cli.vpncrypt", "vpncrypt.provision", "vpncrypt.status",
            "vpncrypt.config", "docopt", "json", "difflib"],
    "helper": ["vpncrypt.tun.netlink", "pyroute2:IPRoute"],
}

_AUDIT_CODE = r"""
import sys
sys.path[:0] = sys.argv[1].split(":")
for m in sys.argv[2:]:
    mod, _, attr = m.partition(":")
    x = __import__(mod, fromlist=[attr] if attr else [])
    if attr:
        getattr(x, attr)
files = {getattr(v, "__file__", None) or "" for v in list(sys.modules.values())}
sys.stdout.write(repr(sorted(files)))
"""


def audit(paths: list[str], std: str, site_dirs: dict[str, str]) -> dict[str, list[str]]:
    import ast
    res = {}
    for prog, mods in AUDIT.items():
        r = subprocess.run([sys.executable, "-S", "-c", _AUDIT_CODE, ":".join(paths)] + mods,
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            res[prog] = ["(import failed: " + r.stderr.strip().splitlines()[-1] + ")"]
            continue
        pkgs = set()
        for f in ast.literal_eval(r.stdout):
            if not f:
                continue
            f = os.path.realpath(f)
            if f.startswith(std + os.sep):
                p = classify(os.path.relpath(f, std))
                if p:
                    pkgs.add(p)
            elif f.startswith(os.path.join(REPO, "vpncrypt") + os.sep):
                pkgs.add("vpncrypt")
            else:
                for pkg, d in site_dirs.items():
                    if f == d or f.startswith(d + os.sep):
                        pkgs.add(pkg)
        res[prog] = sorted(pkgs)
    return res


# ---------------------------------------------------------------------------------------

def mib(n: int) -> str:
    return f"{n / 1048576:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site-packages", help="where docopt and pyroute2 are (default: "
                    "wherever this interpreter imports them from)")
    ap.add_argument("--extension", help="vpncrypt's built _fast*.so (default: "
                    "vpncrypt/_fast*.so of this repository, else the importable one)")
    ap.add_argument("--no-xz", action="store_true", help="skip the compressed column")
    args = ap.parse_args()
    t0 = time.monotonic()
    workers = os.cpu_count() or 1
    strip = shutil.which("strip")
    std = os.path.realpath(stdlib_dir())

    with tempfile.TemporaryDirectory(prefix="openwrt_size.") as tmp:
        col = Collector(tmp, strip)
        if not strip:
            col.notes.append("no strip: binaries counted unstripped (too high)")
        not_pulled = collect_stdlib(col, workers)
        docopt_src = site_module_dir("docopt", args.site_packages)
        pyroute2_src = site_module_dir("pyroute2", args.site_packages)
        collect_pure(col, "python3-docopt", docopt_src, workers)
        collect_pure(col, "python3-pyroute2", pyroute2_src, workers)
        ext = collect_vpncrypt(col, args.extension, workers)
        collect_clibs(col)
        sizes = {pkg: col.size(pkg) for pkg in col.files}
        xz = {} if args.no_xz else xz_sizes(col, workers)
        overlay = overlay_sizes(col)
        site_dirs = {"python3-docopt": os.path.realpath(docopt_src),
                     "python3-pyroute2": os.path.realpath(pyroute2_src)}
        paths = [REPO, os.path.dirname(os.path.realpath(pyroute2_src)),
                 os.path.dirname(os.path.realpath(docopt_src))]
        used = audit(paths, std, site_dirs)

    docopt_v = dist_version("docopt", docopt_src)
    pyroute2_v = dist_version("pyroute2", pyroute2_src)
    # Row order, with "what" and "needed by".
    # The package's closure: its DEPENDS (python3-light, python3-docopt, libopenssl,
    # kmod-tun) and what they depend on (python3-light: python3-base, libbz2, zlib;
    # python3-base: libpython3).
    daemon_rows = [
        ("kmod-tun", "tun.ko (/dev/net/tun)", "daemon"),
        ("libopenssl", CLIBS["libopenssl"][1], "daemon (the native extension links libcrypto)"),
        ("zlib", "zlib", "interpreter (python3-light)"),
        ("libbz2", "bzip2 library", "interpreter (python3-light's _bz2)"),
        ("libpython3", f"libpython{VER}.so", "daemon, CLI"),
        ("python3-base", f"python{VER} + the files it needs to start", "daemon, CLI"),
        ("python3-light", "the rest of the standard library, minus the split-out parts",
         "daemon, CLI"),
        ("python3-docopt", f"{docopt_v} (the feed ships docopt 0.6.2)",
         "daemon and CLI command lines"),
        ("vpncrypt", "byte code, native extension, init script, netifd handler, UCI "
         "renderer, uci-defaults, UCI config, keep list", "daemon, CLI"),
    ]
    # Not dependencies: what python3-pyroute2 would add, for a daemon that configures
    # its own interface (configure_interface = yes) instead of leaving it to netifd.
    meta_rows = [("python3-pyroute2", f"{pyroute2_v} (the feed's version may be older)",
                  "interface set-up helper only"),
                 ("python3-logging", "logging", "helper only (pyroute2)"),
                 ("python3-ctypes", "ctypes, _ctypes", "pyroute2; the daemon only without "
                  "its native extension"),
                 ("libffi", "libffi", "python3-ctypes")]
    meta_rows += [(p, SPLIT[p][2], "pulled by python3 (for pyroute2)") for p in SPLIT
                  if p not in ("python3-logging", "python3-ctypes")]
    meta_rows += [(lib, CLIBS[lib][1],
                   "pulled by " + ", ".join(p for p in SPLIT if lib in SPLIT[p][1]))
                  for lib in ("libgdbm", "liblzma", "libncursesw", "libreadline",
                              "libsqlite3", "libuuid")]

    def row(pkg, what, needed):
        z = f" | {mib(xz.get(pkg, 0))}" if xz else ""
        print(f"| `{pkg}` | {what} | {mib(sizes.get(pkg, 0))} | {mib(overlay.get(pkg, 0))}{z}"
              f" | {needed} |")

    def total(label, pkgs):
        s = sum(sizes.get(p, 0) for p in pkgs)
        z = f" | **{mib(sum(xz.get(p, 0) for p in pkgs))}**" if xz else ""
        o = sum(overlay.get(p, 0) for p in pkgs)
        print(f"| **{label}** | | **{mib(s)}** | **{mib(o)}**{z} | |")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        osname = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        osname = platform.system()
    print(f"Estimated by bench/openwrt_size.py, {now}, {platform.machine()} {osname}, "
          f"Python {platform.python_version()} ({std}), extension {ext}.\n")
    head = "| package | contains | installed MiB (x86_64) | JFFS2 overlay MiB |"
    sep = "|---|---|---:|---:|"
    if xz:
        head += " xz MiB |"
        sep += "---:|"
    print(head + " needed by |")
    print(sep + "---|")
    for r in daemon_rows:
        row(*r)
    a_pkgs = [r[0] for r in daemon_rows]
    total("(a) everything vpncrypt's DEPENDS pull in", a_pkgs)
    for r in meta_rows:
        row(*r)
    print("| `python3` | meta package, no files of its own | 0 | 0 |" + (" 0 |" if xz else "")
          + " pulled by python3-pyroute2 |")
    b_pkgs = [r[0] for r in meta_rows]
    total("(b) what python3-pyroute2 would add (not a dependency)", b_pkgs)
    print()
    print("Modules actually loaded (import audit, fresh `python -S` processes), by "
          "package outside python3-base/light/libpython3:")
    for prog, pkgs in used.items():
        extra = [p for p in pkgs if p not in ("python3-base", "python3-light")]
        print(f"- {prog}: {', '.join(extra) or '(none)'}")
    print()
    skipped = ", ".join(f"{k[1:]} ({n} files)" for k, n in sorted(not_pulled.items()))
    print(f"Not counted (split out but pulled by nothing here): {skipped}.")
    for n in col.notes:
        print(f"Note: {n}")
    print(f"\n({time.monotonic() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
