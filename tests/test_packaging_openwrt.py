"""Tests of the OpenWrt package (openwrt/net/vpncrypt).

* the shell files (init script, netifd protocol handler, the UCI rendering they share,
  the uci-defaults script): `sh -n` under dash and BusyBox ash, and shellcheck;
* the Makefile: GNU make on it, with stand-ins for rules.mk / package.mk and for the
  packages feed's python3-package.mk whose install step does what the real one does
  (filespec copy and removal, byte-compilation, deletion of the .py sources and of
  empty directories, shebang rewrite); the real wheel goes through it into a package
  root, whose byte-compiled CLI then runs;
* the DEPENDS, against the modules the daemon and the CLI really import (measured with
  `python -X importtime` on a running server and client, a reload and the CLI);
* the init script's UCI -> INI rendering and procd calls, and the netifd handler's
  calls, under dash and BusyBox with stand-ins for OpenWrt's config_*, procd_* and
  proto_* shell functions; the files written are checked with `vpncrypt check-config`,
  and the handler starts a real vpncryptd in a network namespace that reaches a real
  server once the addresses netifd would add are in place.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pkgtest import (
    Built,
    data_files,
    project_version,
    python_env,
    REPO,
    OPENWRT_PKG,
    OPENWRT_INIT,
    OPENWRT_CONFIG,
    OPENWRT_UPGRADE,
    VERSION,
    require_tool,
    run,
    check_config,
    write_key,
)

FILES = OPENWRT_PKG / "files"
OPENWRT_PROTO = FILES / "vpncrypt.proto"
OPENWRT_UCI_LIB = FILES / "vpncrypt-uci.sh"
OPENWRT_UCI_DEFAULTS = FILES / "vpncrypt.uci-defaults"
SHELL_FILES = [OPENWRT_INIT, OPENWRT_PROTO, OPENWRT_UCI_LIB, OPENWRT_UCI_DEFAULTS]
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_openwrt_shell_syntax(path: Path) -> None:
    proc = run([require_tool("dash", "dash"), "-n", str(path)])
    assert proc.returncode == 0, proc.stderr
    proc = run([require_tool("busybox", "busybox"), "sh", "-n", str(path)])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_openwrt_shellcheck(path: Path) -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    # -x: follow the `. uci.sh` the scripts source, found next to them in files/.
    proc = run([shellcheck, "--norc", "-x", "-P", "SCRIPTDIR", path.name], cwd=FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- OpenWrt Makefile

STUB_RULES_MK = r"""
# Stub of OpenWrt's rules.mk: only what the vpncrypt Makefile and the stubs use.
INCLUDE_DIR:=$(TOPDIR)/include
BUILD_DIR:=$(TOPDIR)/build_dir
STAGING_DIR:=$(TOPDIR)/staging_dir/target
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
CP:=cp -fpR
TAR:=tar
FIND:=find
SED:=sed -i -e
"""

STUB_PACKAGE_MK = r"""
# Stub of OpenWrt's include/package.mk: BuildPackage evaluates Package/NAME like the
# real one and records its fields; stub-* targets run the package's rules.
PKG_BUILD_DIR?=$(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
PKG_INSTALL_DIR?=$(PKG_BUILD_DIR)/ipkg-install
STUB_ROOT?=$(TOPDIR)/root

define BuildPackage
TITLE:=
DEPENDS:=
URL:=
$$(eval $$(Package/$(1)))
STUB_PACKAGES+=$(1)
STUB_DEPENDS.$(1):=$$(DEPENDS)
STUB_TITLE.$(1):=$$(TITLE)
STUB_URL.$(1):=$$(URL)
STUB_SECTION.$(1):=$$(SECTION)
STUB_CATEGORY.$(1):=$$(CATEGORY)
stub-install-$(1):
	$$(call Package/$(1)/install,$$(STUB_ROOT)/$(1))
endef

define STUB_NL


endef

STUB_VARS=PKG_NAME PKG_VERSION PKG_RELEASE PKG_LICENSE PKG_LICENSE_FILES PKG_MAINTAINER \
	PKG_BUILD_DEPENDS PKG_FILE_DEPENDS PYTHON3_PKG_BUILD_VARS VPNCRYPT_SRC \
	PYTHON3_PACKAGE_MK STUB_PACKAGES

stub-dump:
	$(file >$(STUB_DUMP),$(foreach v,$(STUB_VARS),$(v)=$(strip $($(v)))$(STUB_NL))$(foreach p,$(STUB_PACKAGES),DEPENDS.$(p)=$(strip $(STUB_DEPENDS.$(p)))$(STUB_NL)TITLE.$(p)=$(strip $(STUB_TITLE.$(p)))$(STUB_NL)URL.$(p)=$(strip $(STUB_URL.$(p)))$(STUB_NL)SECTION.$(p)=$(STUB_SECTION.$(p))$(STUB_NL)CATEGORY.$(p)=$(STUB_CATEGORY.$(p))$(STUB_NL)))
	$(file >>$(STUB_DUMP),[conffiles]$(STUB_NL)$(Package/vpncrypt/conffiles))
	$(file >>$(STUB_DUMP),[filespec]$(STUB_NL)$(Py3Package/vpncrypt/filespec))
	@:

stub-prepare:
	$(Build/Prepare)
"""

# Stand-in for the packages feed's lang/python/python3-package.mk (and python3-version.mk),
# written from reading the real one: Py3Package makes the -src package and a
# Package/NAME/install that runs the same steps in the same order — the package's own
# Py3Package/NAME/install, the filespec (python-package-install.sh: `+|path` copies
# from the build's install dir, `-|path` removes, and either fails on a path that
# does not exist), deletion of *.exe, `compileall -b -d /` (legacy .pyc next to each
# source), deletion of every *.py, deletion of every empty directory, and the
# shebang rewrite of usr/bin/*.  STUB_VERSION is PYTHON3_VERSION.
STUB_PYTHON3_PACKAGE_MK = r"""
PYTHON3_VERSION_MAJOR:=$(word 1,$(subst ., ,$(STUB_VERSION)))
PYTHON3_VERSION_MINOR:=$(word 2,$(subst ., ,$(STUB_VERSION)))
PYTHON3_VERSION:=$(PYTHON3_VERSION_MAJOR).$(PYTHON3_VERSION_MINOR)
PYTHON3_PKG_DIR:=/usr/lib/python$(PYTHON3_VERSION)/site-packages
python3_mk_path:=$(dir $(lastword $(MAKEFILE_LIST)))

define Python3/CompileAll
	$(STUB_PYTHON) -m compileall -q -r 20 -b -d '/' $(1)
endef

define Python3/DeleteSourceFiles
	$(FIND) $(1) -type f -name '*.py' -delete
endef

define Python3/DeleteEmptyDirs
	$(FIND) $(1) -mindepth 1 -empty -type d -not -path '$(1)/CONTROL' -not -path '$(1)/CONTROL/*' -delete
endef

define Python3/FixShebang
	$(SED) "1"'!'"b;s,^#"'!'".*python.*,#"'!'"/usr/bin/python3," -i --follow-symlinks $(1)
endef

# (The real one hands the filespec over in an environment variable.)
define Py3Package/ProcessFilespec
	$(file >$(TOPDIR)/filespec.$(1),$(Py3Package/$(1)/filespec))
	$(STUB_PYTHON) $(python3_mk_path)package-install.py "$(2)" "$(3)" "$(TOPDIR)/filespec.$(1)"
endef

define Py3Package
  define Package/$(1)-src
    $(call Package/$(1))
    DEPENDS:=
    TITLE+= (sources)
  endef

  ifeq ($(origin Py3Package/$(1)/filespec),undefined)
    Py3Package/$(1)/filespec=+|$(PYTHON3_PKG_DIR)
  endif

  ifndef Package/$(1)/install
    define Package/$(1)/install
	$$(call Py3Package/$(1)/install,$$(1))
	$$(call Py3Package/ProcessFilespec,$(1),$(PKG_INSTALL_DIR),$$(1))
	$(FIND) $$(1) -name '*.exe' -delete
	$$(call Python3/CompileAll,$$(1))
	$$(call Python3/DeleteSourceFiles,$$(1))
	$$(call Python3/DeleteEmptyDirs,$$(1))
	if [ -d "$$(1)/usr/bin" ]; then $$(call Python3/FixShebang,$$(1)/usr/bin/*); fi
    endef

    define Package/$(1)-src/install
	$$(call Py3Package/$(1)/install,$$(1))
    endef
  endif
endef
"""

# python-package-install.sh's `+` and `-` (the only commands the package uses).
STUB_PACKAGE_INSTALL = r"""
import glob, os, shutil, sys
src, dest, spec = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
for line in spec.splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    cmd, path = (part.strip() for part in line.split("|")[:2])
    if cmd == "+":
        found = glob.glob(src + path)
        if not found:
            sys.exit(f'Error: "{src}{path}" not found')
        os.makedirs(os.path.dirname(dest + path), exist_ok=True)
        for item in found:
            target = dest + item[len(src):]
            if os.path.isdir(item):
                shutil.copytree(item, target, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
    elif cmd == "-":
        found = glob.glob(dest + path)
        if not found:
            sys.exit(f'Error: "{dest}{path}" not found')
        for item in found:
            shutil.rmtree(item) if os.path.isdir(item) else os.remove(item)
    else:
        sys.exit(f'Error: command "{cmd}" not modelled by this stand-in')
"""


@pytest.fixture
def openwrt_top(tmp_path: Path) -> Path:
    require_tool("make", "make")
    top = tmp_path / "openwrt"
    (top / "include").mkdir(parents=True)
    feed = top / "feeds" / "packages" / "lang" / "python"
    feed.mkdir(parents=True)
    (top / "rules.mk").write_text(STUB_RULES_MK)
    (top / "include" / "package.mk").write_text(STUB_PACKAGE_MK)
    (feed / "python3-package.mk").write_text(STUB_PYTHON3_PACKAGE_MK)
    (feed / "package-install.py").write_text(STUB_PACKAGE_INSTALL)
    return top


def openwrt_make(top: Path, *args: str, dry_run: bool = False,
                 version: str = PY_VERSION) -> subprocess.CompletedProcess[str]:
    argv = ["make", "--no-print-directory", "-C", str(OPENWRT_PKG), "-f", "Makefile",
            f"TOPDIR={top}", f"STUB_VERSION={version}", f"STUB_PYTHON={sys.executable}"]
    if dry_run:
        argv.append("-n")
    return run([*argv, *args], env={**os.environ, "MAKEFLAGS": ""})


def makefile_values(top: Path) -> tuple[dict[str, str], list[str], list[str]]:
    dump = top / "dump.txt"
    proc = openwrt_make(top, "stub-dump", f"STUB_DUMP={dump}")
    assert proc.returncode == 0, proc.stderr
    head, _, rest = dump.read_text().partition("[conffiles]\n")
    conffiles, _, filespec = rest.partition("[filespec]\n")
    # $(foreach) separates the lines it makes with a space: strip it.
    values = dict(line.strip().split("=", 1) for line in head.splitlines() if "=" in line)
    return values, conffiles.split(), filespec.split()


ROUTER_DEPENDS = {"+python3-light", "+python3-docopt", "+libopenssl", "+kmod-tun"}


def test_openwrt_makefile_variables(openwrt_top: Path) -> None:
    values, conffiles, filespec = makefile_values(openwrt_top)
    assert values["PKG_NAME"] == "vpncrypt"
    assert values["PKG_VERSION"] == project_version()
    assert values["PKG_RELEASE"].isdigit()
    assert values["PKG_LICENSE"] == "BSD-2-Clause"
    assert values["PKG_LICENSE_FILES"] == "LICENSE" and (REPO / "LICENSE").is_file()
    assert re.fullmatch(r"[^<>@]+ <[^<>@\s]+@[^<>@\s]+\.[a-z]+>", values["PKG_MAINTAINER"])
    assert values["URL.vpncrypt"].startswith("https://")
    assert "python-cython/host" in values["PKG_BUILD_DEPENDS"].split()
    # An edit of anything Build/Prepare copies must rebuild the package.
    watched = values["PKG_FILE_DEPENDS"].split()
    for rel in ("pyproject.toml", "setup.py", "vpncrypt", "docs/man", "LICENSE"):
        assert str(REPO / rel) in watched, rel
    assert all(Path(p).exists() for p in watched)
    assert values["PYTHON3_PACKAGE_MK"] == str(
        openwrt_top / "feeds/packages/lang/python/python3-package.mk")
    assert values["VPNCRYPT_SRC"] == str(REPO)
    assert values["PYTHON3_PKG_BUILD_VARS"] == (
        f'CPATH="{openwrt_top}/staging_dir/target/usr/include" VPNCRYPT_OPT=-Os')
    assert values["STUB_PACKAGES"].split() == ["vpncrypt", "vpncrypt-src"]
    assert set(values["DEPENDS.vpncrypt"].split()) == ROUTER_DEPENDS
    assert values["DEPENDS.vpncrypt-src"] == ""
    assert values["SECTION.vpncrypt"] == "net" and values["CATEGORY.vpncrypt"] == "Network"
    assert values["TITLE.vpncrypt-src"] == values["TITLE.vpncrypt"] + " (sources)"
    # Not /etc/vpncrypt/: the package does not ship it (see the install test).
    assert conffiles == ["/etc/config/vpncrypt"]
    assert filespec == [
        f"+|/usr/lib/python{PY_VERSION}/site-packages",
        f"-|/usr/lib/python{PY_VERSION}/site-packages/vpncrypt/_fast.pyx",
        f"-|/usr/lib/python{PY_VERSION}/site-packages/vpncrypt/_fast_*.pxi",
        f"-|/usr/lib/python{PY_VERSION}/site-packages/vpncrypt/tun/freebsd.py",
    ]


def test_setup_py_takes_the_optimisation_flag_from_the_makefile() -> None:
    """VPNCRYPT_OPT=-Os must reach the compiler after OpenWrt's CFLAGS, replacing -O2."""
    code = ("import os, sys, runpy, setuptools\n"
            "seen = {}\n"
            "setuptools.setup = lambda **kw: seen.update(kw)\n"
            "sys.argv = ['setup.py']\n"
            "runpy.run_path('setup.py')\n"
            "(ext,) = seen['ext_modules']\n"
            "print(' '.join(ext.extra_compile_args))\n")
    proc = run([sys.executable, "-c", code], cwd=REPO,
               env={**python_env(), "VPNCRYPT_OPT": "-Os", "VPNCRYPT_SKIP_HEADER_CHECK": "1"})
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert "-Os" in args and "-O2" not in args, args


@pytest.mark.parametrize("version", ["3.10", "2.7"])
def test_openwrt_makefile_refuses_releases_before_24_10(openwrt_top: Path, version: str) -> None:
    proc = openwrt_make(openwrt_top, "stub-dump", "STUB_DUMP=/dev/null", version=version)
    assert proc.returncode != 0
    assert f"vpncrypt needs Python 3.11 or later (OpenWrt 24.10 or later); this tree has {version}" \
        in proc.stderr, proc.stderr


def test_openwrt_makefile_install_dry_run(openwrt_top: Path) -> None:
    proc = openwrt_make(openwrt_top, "stub-install-vpncrypt", dry_run=True)
    assert proc.returncode == 0, proc.stderr
    root = f"{openwrt_top}/root/vpncrypt"
    lines = proc.stdout.splitlines()
    for expected in [
        f"install -m0755 ./files/vpncrypt.init {root}/etc/init.d/vpncrypt",
        f"install -m0600 ./files/vpncrypt.config {root}/etc/config/vpncrypt",
        f"install -m0755 ./files/vpncrypt.uci-defaults {root}/etc/uci-defaults/90-vpncrypt",
        f"install -m0755 ./files/vpncrypt.proto {root}/lib/netifd/proto/vpncrypt.sh",
        f"install -m0644 ./files/vpncrypt-uci.sh {root}/lib/vpncrypt/uci.sh",
        f"install -m0644 ./files/vpncrypt.upgrade {root}/lib/upgrade/keep.d/vpncrypt",
    ]:
        assert expected in lines, proc.stdout
    installed = set(re.findall(r"\./files/(\S+)", proc.stdout))
    assert installed == {p.name for p in FILES.iterdir()}  # every file, and only those


def test_openwrt_makefile_prepare_copies_the_sources(openwrt_top: Path) -> None:
    proc = openwrt_make(openwrt_top, "stub-prepare")
    assert proc.returncode == 0, proc.stderr
    build = openwrt_top / "build_dir" / f"vpncrypt-{VERSION}"
    copied = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "setup.py", "LICENSE", "vpncrypt/_fast.pyx",
            "vpncrypt/__init__.py"} <= copied
    assert data_files() <= copied  # the wheel build needs them
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "vpncrypt").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= copied
    assert not [p for p in copied if p.endswith((".so", ".pyc")) or "__pycache__" in p
                or p == "vpncrypt/_fast.c"]


def test_openwrt_package_from_the_real_wheel(openwrt_top: Path, built: Built,
                                             tmp_path: Path) -> None:
    """The wheel, installed as Py3Build/Install does, then the feed's install steps: the
    package root must hold what the router needs, and its byte-compiled CLI must run."""
    install_dir = openwrt_top / "build_dir" / f"vpncrypt-{VERSION}" / "ipkg-install"
    proc = run([str(built.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                "--no-deps", "--no-compile", "--ignore-installed", "--disable-pip-version-check",
                "--no-warn-script-location", "--root", str(install_dir), "--prefix", "/usr",
                str(built.wheel)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = install_dir / f"usr/lib/python{PY_VERSION}/site-packages"
    assert (site / "vpncrypt" / "__init__.py").is_file(), "unexpected pip layout"

    proc = openwrt_make(openwrt_top, "stub-install-vpncrypt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = openwrt_top / "root" / "vpncrypt"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}
    dirs = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}
    pkg = f"usr/lib/python{PY_VERSION}/site-packages/vpncrypt"

    def mode(rel: str) -> int:
        return stat.S_IMODE((root / rel).stat().st_mode)

    assert mode("etc/init.d/vpncrypt") == 0o755
    assert mode("etc/config/vpncrypt") == 0o600
    assert mode("etc/uci-defaults/90-vpncrypt") == 0o755
    assert mode("lib/netifd/proto/vpncrypt.sh") == 0o755
    assert mode("lib/vpncrypt/uci.sh") == 0o644
    assert mode("lib/upgrade/keep.d/vpncrypt") == 0o644
    for script in ("usr/bin/vpncryptd", "usr/bin/vpncrypt"):
        assert (root / script).read_text().splitlines()[0] == "#!/usr/bin/python3"
    assert not [f for f in files if f.endswith((".py", ".pyx", ".pxi", ".c", ".exe"))]
    assert {f"{pkg}/__init__.pyc", f"{pkg}/daemon/server.pyc", f"{pkg}/tun/linux.pyc"} <= files
    assert f"{pkg}/tun/freebsd.pyc" not in files
    assert [f for f in files if re.fullmatch(rf"{pkg}/_fast\..*\.so", f)]
    # The feed deletes empty directories: a keys directory shipped in the package would
    # never reach the router, so it is made at run time (uci-defaults, init, netifd).
    assert "etc/vpncrypt" not in dirs
    keys = tmp_path / "etc-vpncrypt"
    proc = run(["sh", str(root / "etc/uci-defaults/90-vpncrypt")],
               env={"PATH": os.environ["PATH"], "VPNCRYPT_KEY_DIR": str(keys),
                    "VPNCRYPT_UCI_LIB": str(root / "lib/vpncrypt/uci.sh")})
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700

    # The packaged CLI, from .pyc files only, with its native extension.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(root / pkg).rsplit("/", 1)[0],
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = run([sys.executable, str(root / "usr/bin/vpncrypt"), "genkey"], env=env, cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 44, proc.stderr
    probe = "import vpncrypt, vpncrypt._fast as f; print(vpncrypt.__file__, f.__file__)"
    proc = run([sys.executable, "-c", probe], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(p.startswith(str(root)) for p in proc.stdout.split()), proc.stdout


def test_openwrt_makefile_needs_the_packages_feed(openwrt_top: Path) -> None:
    shutil.rmtree(openwrt_top / "feeds")
    proc = openwrt_make(openwrt_top, "stub-dump", "STUB_DUMP=/dev/null")
    assert proc.returncode != 0
    assert "python3-package.mk" in proc.stderr and "packages" in proc.stderr

# --------------------------------------------------------------------------- DEPENDS, measured

# Standard-library modules that python3-light does not have, and the package that does
# (the packages feed's lang/python/python3/files/python3-package-*.mk and the
# python3-light filespec in lang/python/python3/Makefile, read in openwrt/packages
# master and openwrt-24.10).
OPENWRT_STDLIB_SPLIT = {
    "asyncio": "python3-asyncio", "_asyncio": "python3-asyncio",
    "ctypes": "python3-ctypes", "_ctypes": "python3-ctypes",
    "dbm": "python3-dbm", "_dbm": "python3-dbm", "_gdbm": "python3-dbm",
    "decimal": "python3-decimal", "_decimal": "python3-decimal",
    "logging": "python3-logging", "lzma": "python3-lzma", "_lzma": "python3-lzma",
    "multiprocessing": "python3-multiprocessing", "_multiprocessing": "python3-multiprocessing",
    "curses": "python3-ncurses", "_curses": "python3-ncurses",
    "ssl": "python3-openssl", "_ssl": "python3-openssl", "_hashlib": "python3-openssl",
    "pydoc": "python3-pydoc", "readline": "python3-readline",
    "sqlite3": "python3-sqlite3", "_sqlite3": "python3-sqlite3",
    "unittest": "python3-unittest", "urllib": "python3-urllib", "email": "python3-urllib",
    "uuid": "python3-uuid", "_uuid": "python3-uuid", "venv": "python3-venv",
    "xml": "python3-xml", "pyexpat": "python3-xml", "_elementtree": "python3-xml",
    "unicodedata": "python3-codecs", "_codecs_cn": "python3-codecs",
    "_codecs_hk": "python3-codecs", "_codecs_iso2022": "python3-codecs",
    "_codecs_jp": "python3-codecs", "_codecs_kr": "python3-codecs",
    "_codecs_tw": "python3-codecs",
    "webbrowser": None, "tkinter": None, "idlelib": None, "turtledemo": None,  # nowhere
}
THIRD_PARTY = {"docopt": "python3-docopt", "pyroute2": "python3-pyroute2"}
# Shown by importtime but not a dependency: the import of Jython's org.python.core that
# copy.py and pickle.py try inside try/except ImportError.
NOT_ON_A_ROUTER = {"org"}


def imported(log_text: str) -> set[str]:
    """Top-level names of the modules a `-X importtime` log shows being imported."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", log_text, re.M)
    return {name.split(".")[0] for name in names}


def packages_needed(modules: set[str]) -> tuple[set[str], list[str]]:
    needed, unknown = {"python3-light"}, []
    for module in sorted(modules):
        if module in ("vpncrypt", "encodings", "__future__") or module in NOT_ON_A_ROUTER:
            continue
        if module in OPENWRT_STDLIB_SPLIT:
            package = OPENWRT_STDLIB_SPLIT[module]
            if package is None:
                unknown.append(f"{module}: not packaged by OpenWrt at all")
            else:
                needed.add(package)
        elif module in THIRD_PARTY:
            needed.add(THIRD_PARTY[module])
        elif module not in sys.stdlib_module_names:
            unknown.append(f"{module}: neither standard library nor a known package")
    return needed, unknown


@pytest.mark.netns
def test_openwrt_depends_are_what_the_daemon_imports(netns_factory, tmp_path: Path,
                                                    openwrt_top: Path) -> None:
    """A server and a client run the router's way (configure_interface = no), carry
    traffic, reload, and the CLI runs each command a router uses; every module they
    import must come from the package's DEPENDS, and nothing in DEPENDS may go unused
    apart from libopenssl and kmod-tun (not Python)."""
    from vpnharness import SERVER_TUN4, Deployment

    # -S, and this venv's site-packages on PYTHONPATH instead: the venv's start-up hooks
    # (.pth files: the editable install's finder imports pathlib and urllib) would
    # otherwise preload modules and hide their import by vpncrypt.  site.py itself is
    # in python3-light.
    import sysconfig

    path = os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])
    wrapper = tmp_path / "vpncryptd"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={path} exec {sys.executable} -S "
                       "-m vpncrypt.cli.vpncryptd \"$@\"\n")
    wrapper.chmod(0o755)
    vpn = Deployment(netns_factory, tmp_path, configure=False, command=[str(wrapper)])
    vpn.env["PYTHONPROFILEIMPORTTIME"] = "1"
    vpn.start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    logs = ""
    for daemon in (vpn.server, *vpn.clients):
        mark = len(daemon.text())
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log(r"reload", after=mark)
    cli_env = {"PATH": os.environ["PATH"], "PYTHONPATH": path, "PYTHONPROFILEIMPORTTIME": "1"}
    for argv in (["genkey"], ["check-config", vpn.server_conf], ["check-config", vpn.client_confs[0]],
                 ["show", "--state-dir", vpn.state_dir("server")],
                 ["show", "--json", "--state-dir", vpn.state_dir("server")],
                 ["add-client", "router", f"--config={vpn.server_conf}"]):
        proc = run([sys.executable, "-S", "-m", "vpncrypt.cli.vpncrypt", *argv], env=cli_env,
                   cwd=tmp_path)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        logs += proc.stderr
    proc = run([sys.executable, "-S", "-m", "vpncrypt.cli.vpncryptd", "--version"], env=cli_env)
    logs += proc.stderr
    for daemon in (vpn.server, *vpn.clients):
        assert daemon.stop() == 0
        logs += daemon.text()

    modules = imported(logs)
    assert {"vpncrypt", "docopt", "selectors", "socket"} <= modules  # the log was read
    needed, unknown = packages_needed(modules)
    assert not unknown, unknown
    values, _, _ = makefile_values(openwrt_top)
    depends = {d.lstrip("+") for d in values["DEPENDS.vpncrypt"].split()}
    assert needed == depends - {"libopenssl", "kmod-tun"}, sorted(modules)


# --------------------------------------------------------------------------- OpenWrt init script

UCI_STUB = r"""
# Stand-in for the parts of OpenWrt's /lib/functions.sh and /lib/functions/procd.sh that
# /etc/init.d/vpncrypt uses, with the same calling conventions.  config_load sources the
# UCI file, whose `config`, `option` and `list` lines are calls of the functions below.
CONFIG_SECTIONS=""
CONFIG_SECTION=""
STUB_ANON=0

package() { :; }

config() {
	local __stub_type="$1" __stub_name="$2"
	if [ -z "$__stub_name" ]; then
		STUB_ANON=$((STUB_ANON + 1))
		__stub_name="cfg$STUB_ANON"
	fi
	CONFIG_SECTION="$__stub_name"
	CONFIG_SECTIONS="$CONFIG_SECTIONS $__stub_name"
	eval "CONFIG_${__stub_name}_TYPE=\$__stub_type"
}

option() {
	eval "CONFIG_${CONFIG_SECTION}_$1=\$2"
}

list() {
	local __stub_old
	eval "__stub_old=\${CONFIG_${CONFIG_SECTION}_$1:-}"
	eval "CONFIG_${CONFIG_SECTION}_$1=\"\${__stub_old:+\$__stub_old }\$2\""
}

config_load() {
	CONFIG_SECTIONS=""
	[ ! -f "$STUB_UCI_DIR/$1" ] || . "$STUB_UCI_DIR/$1"
}

config_get() {
	local __stub_v
	eval "__stub_v=\${CONFIG_${2}_${3}:-\$4}"
	eval "$1=\$__stub_v"
}

config_get_bool() {
	local __stub_b
	config_get __stub_b "$2" "$3" "$4"
	case "$__stub_b" in
	1 | on | true | yes | enabled) __stub_b=1 ;;
	0 | off | false | no | disabled) __stub_b=0 ;;
	*) __stub_b="$4" ;;
	esac
	eval "$1=\$__stub_b"
}

config_foreach() {
	local __stub_fn="$1" __stub_want="$2" __stub_s __stub_t
	shift 2
	for __stub_s in $CONFIG_SECTIONS; do
		eval "__stub_t=\${CONFIG_${__stub_s}_TYPE}"
		[ "$__stub_t" = "$__stub_want" ] || continue
		"$__stub_fn" "$__stub_s" "$@"
	done
}

procd_open_instance() { echo "open_instance $1"; }
procd_set_param() { echo "set_param $*"; }
procd_close_instance() { echo "close_instance"; }
procd_add_reload_trigger() { echo "reload_trigger $*"; }
ifup() { echo "ifup $*"; }
logger() { :; }
"""


SHELLS = ["dash", "busybox"]


class InitHarness:
    def __init__(self, tmp: Path, shell: str) -> None:
        if shell == "busybox":
            self.shell = [require_tool("busybox", "busybox"), "sh"]
        else:
            self.shell = [require_tool("dash", "dash")]
        self.uci = tmp / "uci"
        self.uci.mkdir()
        self.run_dir = tmp / "var-etc-vpncrypt"
        self.key_dir = tmp / "etc-vpncrypt"
        self.stub = tmp / "functions.sh"
        self.stub.write_text(UCI_STUB)

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "STUB_UCI_DIR": str(self.uci),
                "VPNCRYPT_RUN_DIR": str(self.run_dir), "VPNCRYPT_KEY_DIR": str(self.key_dir),
                "VPNCRYPT_UCI_LIB": str(OPENWRT_UCI_LIB)}

    def start(self, uci_text: str, network: str | None = None) -> subprocess.CompletedProcess[str]:
        (self.uci / "vpncrypt").write_text(uci_text)
        if network is not None:
            (self.uci / "network").write_text(network)
        script = f'. "{self.stub}"\n. "{OPENWRT_INIT}"\nstart_service\nservice_triggers\n'
        return run([*self.shell, "-c", script], env=self.env())

    def instances(self, stdout: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        current = None
        for line in stdout.splitlines():
            if line.startswith("open_instance "):
                current = line.split(" ", 1)[1]
                found[current] = []
            elif line == "close_instance":
                current = None
            elif current is not None:
                found[current].append(line)
        return found


@pytest.fixture(params=SHELLS)
def init(request: pytest.FixtureRequest, tmp_path: Path) -> InitHarness:
    return InitHarness(tmp_path, request.param)


def _full_uci(keys: Path, inline_key: str) -> str:
    return f"""
config server 'office'
	option enabled '1'
	option listen '[::]:51900'
	option interface 'vpn0'
	list address '10.77.0.1/24'
	list address 'fd00:77::1/64'
	option mtu '1400'
	option offload '0'

config peer 'laptop'
	option server 'office'
	option id '1'
	option key_file '{keys}/laptop.key'
	list allowed_ips '10.77.0.2/32'
	list allowed_ips 'fd00:77::2/128'

config peer
	option server 'office'
	option name 'phone.alice'
	option id '2'
	option key '{inline_key}'
	option allowed_ips '10.77.0.3/32 10.77.5.0/24'

config peer 'old'
	option server 'office'
	option enabled '0'
	option id '3'
	option key_file '/nonexistent.key'
	list allowed_ips '10.77.0.4/32'

config peer 'elsewhere'
	option server 'lab'
	option id '1'
	option key_file '/nonexistent.key'
	list allowed_ips '10.99.0.2/32'

config client 'home'
	option enabled 'yes'
	option id '2'
	option server 'vpn.example.org:51900'
	option key_file '{keys}/home.key'
	option interface 'vpn1'
	list address '10.78.0.2/24'
	list routes '10.0.0.0/16'
	list routes '192.168.50.0/24'
	option keepalive '15'
	option offload 'no'

config client 'spare'
	option id '3'
	option server '192.0.2.1:51900'
	option key_file '/nonexistent.key'
	option interface 'vpn2'
	list address '10.79.0.2/24'
"""


def _full_uci_with_keys(tmp_path: Path) -> tuple[str, Path, str]:
    """_full_uci's text with its key files written: (text, keys directory, inline key)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key(keys / "laptop.key")
    write_key(keys / "home.key")
    inline = write_key(tmp_path / "unused.key")
    return _full_uci(keys, inline), keys, inline


def test_init_renders_valid_configs(init: InitHarness, tmp_path: Path) -> None:
    text, keys, inline = _full_uci_with_keys(tmp_path)
    proc = init.start(text)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr

    instances = init.instances(proc.stdout)
    assert sorted(instances) == ["home", "office"]  # 'spare' has no enabled '1'
    for name in instances:
        conf = init.run_dir / f"{name}.conf"
        assert instances[name] == [
            f"set_param command /usr/bin/vpncryptd -c {conf} --foreground",
            "set_param respawn 3600 5 5",
            f"set_param file {conf}",
            "set_param stdout 1",
            "set_param stderr 1",
        ]
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert "reload_trigger vpncrypt" in proc.stdout
    assert stat.S_IMODE(init.run_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in init.run_dir.iterdir()) == ["home.conf", "office.conf"]

    office = (init.run_dir / "office.conf").read_text()
    assert office.splitlines()[2:] == [
        "[server]",
        "listen = [::]:51900",
        "interface = vpn0",
        "address = 10.77.0.1/24, fd00:77::1/64",
        "mtu = 1400",
        "offload = 0",
        "state_dir = /var/run/vpncrypt",
        "",
        "[client laptop]",
        "id = 1",
        f"key_file = {keys}/laptop.key",
        "allowed_ips = 10.77.0.2/32, fd00:77::2/128",
        "",
        "[client phone.alice]",
        "id = 2",
        f"key = {inline}",
        "allowed_ips = 10.77.0.3/32, 10.77.5.0/24",
    ]
    assert check_config(init.run_dir / "office.conf").endswith("OK (server, 2 clients)")
    assert check_config(init.run_dir / "home.conf").endswith(
        "OK (client id 2, server vpn.example.org:51900)")

    from vpncrypt import config

    server = config.load(init.run_dir / "office.conf")
    assert [(c.name, c.id) for c in server.clients] == [("laptop", 1), ("phone.alice", 2)]
    assert server.offload is False
    client = config.load(init.run_dir / "home.conf")
    assert [str(r) for r in client.routes] == ["10.0.0.0/16", "192.168.50.0/24"]
    assert client.keepalive == 15 and client.state_dir == "/var/run/vpncrypt"
    assert client.offload is False


def test_init_shipped_config_starts_nothing(init: InitHarness) -> None:
    proc = init.start(OPENWRT_CONFIG.read_text())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert init.instances(proc.stdout) == {}
    assert list(init.run_dir.iterdir()) == []


def test_init_shipped_examples_are_valid_once_enabled(init: InitHarness, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    text = OPENWRT_CONFIG.read_text().replace("option enabled '0'", "option enabled '1'")
    text = text.replace("/etc/vpncrypt/", f"{keys}/")
    for name in re.findall(rf"{re.escape(str(keys))}/(\S+?)'", text):
        write_key(keys / name)
    proc = init.start(text)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert sorted(init.instances(proc.stdout)) == ["home", "office"]
    assert check_config(init.run_dir / "office.conf").endswith("OK (server, 1 clients)")
    assert "OK (client id 2" in check_config(init.run_dir / "home.conf")


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("listen", "0.0.0.0:51900\n[client evil]", "not a single word"),
        ("interface", "vpn0 # comment", "not a single word"),
        ("mtu", "1400;x", "not a single word"),
        ("address", "10.77.0.1/24\n[client evil]\nid = 9", None),
        ("address", "10.77.0.1/24 10.0.0.1/8;", "list 'address'"),
    ],
)
def test_init_refuses_values_that_would_change_the_file(
    init: InitHarness, option: str, value: str, message: str | None
) -> None:
    text = f"""
config server 'office'
	option enabled '1'
	option listen '0.0.0.0:51900'
	option interface 'vpn0'
	option address '10.77.0.1/24'
	option {option} '{value}'
"""
    proc = init.start(text)
    if message is None:
        # A newline inside a list only separates entries: the file keeps its shape and
        # vpncrypt check-config is left to judge the entries.
        assert proc.returncode == 0
        lines = (init.run_dir / "office.conf").read_text().splitlines()
        assert [line for line in lines if line.startswith("[")] == ["[server]"]
        assert "address = 10.77.0.1/24, [client, evil], id, =, 9" in lines
        return
    assert "office" not in init.instances(proc.stdout)
    assert message in proc.stderr and "server 'office' not started" in proc.stderr
    assert list(init.run_dir.iterdir()) == []


def test_init_refuses_relative_key_files_and_bad_peer_names(init: InitHarness) -> None:
    text = """
config server 'office'
	option enabled '1'
	option listen '0.0.0.0:51900'
	option interface 'vpn0'
	list address '10.77.0.1/24'

config peer 'a'
	option server 'office'
	option id '1'
	option key_file 'a.key'
	list allowed_ips '10.77.0.2/32'

config client 'home'
	option enabled '1'
	option id '1'
	option server 'vpn.example.org:51900'
	option key_file '/k'
	option interface 'vpn1'
	list address '10.78.0.2/24'

config peer 'b'
	option server 'home'
	option name 'b]x'
"""
    proc = init.start(text)
    assert "key_file must be an absolute path" in proc.stderr
    assert sorted(init.instances(proc.stdout)) == ["home"]  # a peer of a client is ignored
    assert "b]x" not in (init.run_dir / "home.conf").read_text()

    text = text.replace("'a.key'", "'/a.key'") + "\nconfig peer 'c'\n\toption server 'office'\n\toption name 'x]\\n[y'\n"
    proc = init.start(text)
    assert "may only contain" in proc.stderr
    assert "office" not in init.instances(proc.stdout)


def test_init_removes_files_of_disabled_sections(init: InitHarness, tmp_path: Path) -> None:
    text, _, _ = _full_uci_with_keys(tmp_path)
    assert init.start(text).returncode == 0
    assert (init.run_dir / "home.conf").exists()
    proc = init.start(text.replace("option enabled 'yes'", "option enabled 'no'"))
    assert sorted(init.instances(proc.stdout)) == ["office"]
    assert not (init.run_dir / "home.conf").exists()


def test_openwrt_keep_list() -> None:
    entries = [line.strip() for line in OPENWRT_UPGRADE.read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert entries == ["/etc/vpncrypt/"]



def test_init_makes_the_key_directory(init: InitHarness) -> None:
    assert not init.key_dir.exists()
    proc = init.start(OPENWRT_CONFIG.read_text())
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(init.key_dir.stat().st_mode) == 0o700


# --------------------------------------------------------------------------- uci-defaults: server ids

# Stand-in for OpenWrt's uci(1), for what the uci-defaults script uses (-q, -X, show,
# get, set, commit) on $STUB_UCI_DIR/<package>: `set` is staged until `commit`, which
# rewrites the file in uci's own format (no comments), as the real one does.
UCI_CLI_STUB = r"""
import os, shlex, sys

args = [a for a in sys.argv[1:] if a not in ("-q", "-X")]
directory = os.environ["STUB_UCI_DIR"]


def load(package):
    sections = []  # [name, anonymous, type, [(kind, option, value)]]
    with open(os.path.join(directory, package)) as f:
        for line in f:
            words = shlex.split(line, comments=True)
            if words and words[0] == "config":
                name = words[2] if len(words) > 2 else "cfg%02x%04x" % (len(sections), 0)
                sections.append([name, len(words) < 3, words[1], []])
            elif words and words[0] in ("option", "list"):
                sections[-1][3].append((words[0], words[1], words[2]))
    staged = os.path.join(directory, "." + package + ".staged")
    if os.path.exists(staged):
        for line in open(staged):
            name, option, value = line.rstrip("\n").split("\t")
            section = next(s for s in sections if s[0] == name)
            section[3] = [e for e in section[3] if e[1] != option] + [("option", option, value)]
    return sections


def get(sections, name, option):
    section = next((s for s in sections if s[0] == name), None)
    values = [v for _, o, v in (section[3] if section else []) if o == option]
    return " ".join(values) if values else None


command, target = args[0], args[1] if len(args) > 1 else ""
package = target.split(".", 1)[0]
if command == "show":
    for name, _, kind, entries in load(package):
        print(f"{package}.{name}={kind}")
        for _, option, value in entries:
            print(f"{package}.{name}.{option}='{value}'")
elif command == "get":
    _, name, option = target.split(".", 2)
    value = get(load(package), name, option)
    if value is None:
        sys.exit(1)
    print(value)
elif command == "set":
    where, value = target.split("=", 1)
    _, name, option = where.split(".", 2)
    if not any(s[0] == name for s in load(package)):
        sys.exit(1)
    with open(os.path.join(directory, "." + package + ".staged"), "a") as f:
        f.write(f"{name}\t{option}\t{value}\n")
elif command == "commit":
    out = []
    for name, anonymous, kind, entries in load(package):
        out.append(f"\nconfig {kind}" + ("" if anonymous else f" '{name}'") + "\n")
        out += [f"\t{k} {o} '{v}'\n" for k, o, v in entries]
    with open(os.path.join(directory, package), "w") as f:
        f.write("".join(out))
    os.unlink(os.path.join(directory, "." + package + ".staged"))
else:
    sys.exit(f"uci stub: {command} not supported")
"""


def uci_defaults(init: InitHarness, tmp_path: Path, uci_text: str) -> subprocess.CompletedProcess[str]:
    """Run the uci-defaults script (as at installation) on uci_text with a stand-in uci
    and this checkout's vpncrypt."""
    (init.uci / "vpncrypt").write_text(uci_text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "uci").write_text(f"#!{sys.executable}\n{UCI_CLI_STUB}")
    (bin_dir / "vpncrypt").write_text(
        f"#!/bin/sh\nPYTHONPATH='{REPO}' exec '{sys.executable}' -m vpncrypt.cli.vpncrypt \"$@\"\n")
    for tool in ("uci", "vpncrypt"):
        (bin_dir / tool).chmod(0o755)
    env = {**init.env(), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "VPNCRYPT_TOOL": str(bin_dir / "vpncrypt")}
    return run([*init.shell, str(OPENWRT_UCI_DEFAULTS)], env=env)


def uci_options(text: str) -> dict[str, dict[str, str]]:
    """{section: {option: value}} of a uci file as the stand-in writes it."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for number, line in enumerate(text.splitlines()):
        words = line.split()
        if words[:1] == ["config"]:
            current = out.setdefault(words[2].strip("'") if len(words) > 2 else f"@{number}", {})
        elif words[:1] == ["option"]:
            current[words[1]] = words[2].strip("'")
    return out


UCI_MORE_SERVERS = """
config server
	option listen '0.0.0.0:51901'
	option interface 'vpn3'
	list address '10.80.0.1/24'

config server 'lab'
	option listen '0.0.0.0:51902'
	option interface 'vpn4'
	list address '10.81.0.1/24'
	option server_id '12345'
"""


def test_uci_defaults_gives_each_new_server_its_own_id(init: InitHarness, tmp_path: Path) -> None:
    """A first installation: every `config server` without server_id gets a random one,
    in /etc/config/vpncrypt (so it survives restarts and sysupgrade), never a constant
    shipped with the package; one that has an id keeps it; a client gets none."""
    shipped = OPENWRT_CONFIG.read_text()
    assert not re.search(r"^\s*option server_id", shipped, re.M)  # nothing shared to ship
    assert not init.key_dir.exists()
    proc = uci_defaults(init, tmp_path, shipped + UCI_MORE_SERVERS)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert stat.S_IMODE(init.key_dir.stat().st_mode) == 0o700
    committed = (init.uci / "vpncrypt").read_text()
    options = uci_options(committed)
    office = int(options["office"]["server_id"])
    anonymous = int(next(v for k, v in options.items() if k.startswith("@"))["server_id"])
    assert 1 <= office <= 0xFFFFFFFF and 1 <= anonymous <= 0xFFFFFFFF and office != anonymous
    assert options["lab"]["server_id"] == "12345"
    assert "server_id" not in options["home"] and "server_id" not in options["laptop"]

    # The rendered file carries it, and check-config has nothing to warn about.
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key(keys / "laptop.key")
    enabled = committed.replace("/etc/vpncrypt/", f"{keys}/").replace(
        "option enabled '0'", "option enabled '1'", 1)
    start = init.start(enabled)
    assert start.returncode == 0 and start.stderr == "", start.stderr
    conf = init.run_dir / "office.conf"
    assert f"server_id = {office}" in conf.read_text().splitlines()
    proc = run([sys.executable, "-m", "vpncrypt.cli.vpncrypt", "check-config", str(conf)],
               env=python_env())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr

    # Another router: another id.
    (tmp_path / "other").mkdir()
    other = InitHarness(tmp_path / "other", "busybox" if len(init.shell) == 2 else "dash")
    assert uci_defaults(other, tmp_path / "other", shipped).returncode == 0
    assert int(uci_options((other.uci / "vpncrypt").read_text())["office"]["server_id"]) != office


def test_uci_defaults_leaves_an_upgraded_installation_alone(init: InitHarness,
                                                            tmp_path: Path) -> None:
    """The key directory exists: an earlier version ran here, and a server without
    server_id has been using 0 with all its clients; a new id would cut them off."""
    init.key_dir.mkdir(mode=0o700)
    text = OPENWRT_CONFIG.read_text() + UCI_MORE_SERVERS
    proc = uci_defaults(init, tmp_path, text)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (init.uci / "vpncrypt").read_text() == text
    assert not (init.uci / ".vpncrypt.staged").exists()


NETWORK_CLAIMS_OFFICE = """
config interface 'lan'
	option proto 'static'
	option device 'br-lan'

config interface 'vpn'
	option proto 'vpncrypt'
	option tunnel 'office'
"""


def test_init_leaves_tunnels_that_netifd_runs_to_netifd(init: InitHarness, tmp_path: Path) -> None:
    text, _, _ = _full_uci_with_keys(tmp_path)
    proc = init.start(text, NETWORK_CLAIMS_OFFICE)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert sorted(init.instances(proc.stdout)) == ["home"]
    assert not (init.run_dir / "office.conf").exists()
    assert "ifup" not in proc.stdout  # netifd has not set 'vpn' up: nothing to restart

    # netifd runs 'office' (the handler wrote its file); a reload that changes nothing
    # leaves it alone, one that changes the tunnel restarts the interface.
    netifd_file = init.run_dir / "netifd" / "office.conf"
    netifd_file.parent.mkdir()
    assert proto_render(init, "office", "server", "vpn", netifd_file).returncode == 0
    proc = init.start(text, NETWORK_CLAIMS_OFFICE)
    assert "ifup" not in proc.stdout and netifd_file.exists()
    proc = init.start(text.replace("option mtu '1400'", "option mtu '1380'"), NETWORK_CLAIMS_OFFICE)
    assert proc.stdout.splitlines().count("ifup vpn") == 1, proc.stdout
    assert sorted(p.name for p in netifd_file.parent.iterdir()) == ["office.conf"]


# --------------------------------------------------------------------------- netifd handler

NETIFD_STUB = r"""
# Stand-in for the netifd-proto.sh functions the handler calls (same arguments): each
# prints what it was asked; proto_run_command starts the command as netifd would (in
# the background; its pid in $STUB_PIDFILE), proto_kill_command kills it.
json_get_vars() {
	local __stub_v
	for __stub_v in "$@"; do
		eval "$__stub_v=\${STUB_JSON_$__stub_v:-}"
	done
}
proto_config_add_string() { echo "config_add_string $*"; }
proto_init_update() { echo "init_update $*"; }
proto_add_ipv4_address() { echo "ipv4_address $*"; }
proto_add_ipv6_address() { echo "ipv6_address $*"; }
proto_add_ipv4_route() { echo "ipv4_route $*"; }
proto_add_ipv6_route() { echo "ipv6_route $*"; }
proto_send_update() { echo "send_update $*"; }
proto_notify_error() { echo "notify_error $*"; }
proto_block_restart() { echo "block_restart $*"; }
proto_run_command() {
	shift
	echo "run_command $*"
	"$@" >>"$STUB_DAEMON_LOG" 2>&1 &
	echo $! >"$STUB_PIDFILE"
}
proto_kill_command() {
	echo "kill_command $*"
	[ ! -f "$STUB_PIDFILE" ] || kill "$(cat "$STUB_PIDFILE")"
}
"""


def proto_script(init: InitHarness, body: str) -> str:
    stub = init.stub.parent / "netifd-proto.sh"
    stub.write_text(NETIFD_STUB)
    return f'. "{init.stub}"\n. "{stub}"\nINCLUDE_ONLY=1\n. "{OPENWRT_PROTO}"\n{body}\n'


def proto_env(init: InitHarness, **extra: str) -> dict[str, str]:
    tmp = init.stub.parent
    return {**init.env(), "STUB_DAEMON_LOG": str(tmp / "daemon.log"),
            "STUB_PIDFILE": str(tmp / "daemon.pid"), "VPNCRYPT_STATE_DIR": str(tmp / "state"),
            **extra}


def proto_setup(init: InitHarness, uci_text: str, tunnel: str | None,
                **extra: str) -> subprocess.CompletedProcess[str]:
    (init.uci / "vpncrypt").write_text(uci_text)
    env = proto_env(init, **extra)
    if tunnel is not None:
        env["STUB_JSON_tunnel"] = tunnel
    return run([*init.shell, "-c", proto_script(init, "proto_vpncrypt_setup vpn")], env=env)


def proto_render(init: InitHarness, section: str, kind: str, iface: str,
                 path: Path) -> subprocess.CompletedProcess[str]:
    body = (f'. "{OPENWRT_UCI_LIB}"\nconfig_load vpncrypt\n'
            f'VPNCRYPT_NETIFD={iface} vpncrypt_write {section} {kind} "{path}"')
    return run([*init.shell, "-c", proto_script(init, body)], env=init.env())


def test_proto_declares_its_option(init: InitHarness) -> None:
    body = "proto_vpncrypt_init_config\necho no_device=$no_device available=$available"
    proc = run([*init.shell, "-c", proto_script(init, body)], env=proto_env(init))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["config_add_string tunnel", "no_device=1 available=1"]


CLIENT_SECTION = """
config client 'home'
	option id '2'
	option server '192.0.2.1:51900'
	option key_file '/k'
	option interface 'vpn9'
	list address '10.78.0.2/24'
"""


@pytest.mark.parametrize(
    "uci_text, tunnel, code, message",
    [
        (CLIENT_SECTION, None, "MISSING_TUNNEL", "no 'option tunnel'"),
        (CLIENT_SECTION, "work", "NO_TUNNEL", "no 'config server' or 'config client' section 'work'"),
        (CLIENT_SECTION.replace("\toption interface 'vpn9'\n", ""), "home", "NO_DEVICE",
         "client 'home' has no valid 'option interface'"),
        (CLIENT_SECTION + "\toption mtu '1400 #'\n", "home", "INVALID_CONFIG",
         "option 'mtu' is not a single word"),
        (CLIENT_SECTION.replace("'/k'", "'k'"), "home", "INVALID_CONFIG",
         "key_file must be an absolute path"),
        ("config peer 'home'\n\toption server 'x'\n", "home", "NO_TUNNEL", "section 'home'"),
    ],
)
def test_proto_refuses_a_broken_tunnel(init: InitHarness, uci_text: str, tunnel: str | None,
                                       code: str, message: str) -> None:
    proc = proto_setup(init, uci_text, tunnel)
    assert proc.returncode != 0
    assert proc.stdout.splitlines() == [f"notify_error vpn {code}", "block_restart vpn"]
    assert message in proc.stderr and "network interface 'vpn'" in proc.stderr, proc.stderr
    assert not list(init.run_dir.glob("netifd/*.conf"))


def test_proto_gives_up_on_a_daemon_that_never_opens_its_device(init: InitHarness,
                                                                tmp_path: Path) -> None:
    write_key(tmp_path / "home.key")
    uci = CLIENT_SECTION.replace("'/k'", f"'{tmp_path}/home.key'")
    proc = proto_setup(init, uci, "home", VPNCRYPT_PROG="/bin/true",
                       VPNCRYPT_START_TIMEOUT="1")
    assert proc.returncode != 0
    lines = proc.stdout.splitlines()
    conf = init.run_dir / "netifd" / "home.conf"
    assert lines[0] == f"run_command /bin/true -c {conf} --foreground"
    assert lines[1:] == ["notify_error vpn NO_DEVICE", "kill_command vpn"]
    assert "vpncryptd did not open 'vpn9' within 1 s" in proc.stderr
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert check_config(conf).endswith(": OK (client id 2, server 192.0.2.1:51900)")


@pytest.mark.netns
@pytest.mark.parametrize("shell", ["busybox"])
def test_proto_runs_a_real_tunnel(netns_factory, tmp_path: Path, shell: str) -> None:
    """The handler starts a real vpncryptd in the client's namespace; once it returns,
    netifd's part (the addresses and routes it was handed, link up) is done with ip(8)
    as netifd would, and the tunnel carries pings both ways; teardown stops it."""
    from vpnharness import SERVER_TUN4, SERVER_TUN6, Deployment, client_tun4

    vpn = Deployment(netns_factory, tmp_path, configure=False)
    vpn.start_server()
    host = vpn.client_host()
    router = tmp_path / "router"
    router.mkdir()
    harness = InitHarness(router, shell)
    key_file = harness.key_dir / "home.key"
    harness.key_dir.mkdir(mode=0o700)
    key_file.write_text(vpn.keys[0] + "\n")
    key_file.chmod(0o600)
    addresses = "".join(f"\tlist address '{a}'\n" for a in vpn.client_addresses(1))
    uci = (f"config client 'home'\n\toption id '1'\n\toption server '{vpn.server_underlay(1)}'\n"
           f"\toption server_id '{vpn.server_id}'\n\toption key_file '{key_file}'\n"
           f"\toption interface 'vpn0'\n{addresses}"
           "\tlist routes '10.202.0.0/16'\n\tlist routes 'fd00:202::/48'\n"
           "\toption configure_interface 'yes'\n")  # ignored under netifd
    (harness.uci / "vpncrypt").write_text(uci)
    wrapper = router / "vpncryptd"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m vpncrypt.cli.vpncryptd \"$@\"\n")
    wrapper.chmod(0o755)
    env = proto_env(harness, STUB_JSON_tunnel="home", VPNCRYPT_PROG=str(wrapper),
                    PYTHONPATH=python_env()["PYTHONPATH"])
    pidfile = Path(env["STUB_PIDFILE"])
    try:
        proc = host.run([*harness.shell, "-c", proto_script(harness, "proto_vpncrypt_setup vpn")],
                        env=env, check=False, timeout=60)
        log = Path(env["STUB_DAEMON_LOG"])
        assert proc.returncode == 0, proc.stderr + (log.read_text() if log.exists() else "")
        conf = harness.run_dir / "netifd" / "home.conf"
        assert proc.stdout.splitlines() == [
            f"run_command {wrapper} -c {conf} --foreground",
            "init_update vpn0 1",
            "ipv4_address 10.201.0.2 24",
            "ipv6_address fd00:201::2 64",
            "ipv4_route 10.202.0.0 16",
            "ipv6_route fd00:202:: 48",
            "send_update vpn",
        ]
        text = conf.read_text()
        assert "configure_interface = no" in text and "configure_interface = yes" not in text
        assert "interface = vpn0" in text
        # The daemon set the MTU before the handler went on; link-local generation is
        # off before netifd brings the link up; nothing else is configured yet.
        link = host.run(["ip", "-o", "link", "show", "vpn0"]).stdout
        assert " mtu 1448 " in link and "state DOWN" in link, link
        assert host.run(["cat", "/proc/sys/net/ipv6/conf/vpn0/addr_gen_mode"]).stdout.strip() == "1"
        assert host.run(["ip", "-o", "addr", "show", "dev", "vpn0"]).stdout == ""

        # netifd's part.
        vpn.configure_externally(host, vpn.client_addresses(1))
        host.run(["ip", "route", "add", "10.202.0.0/16", "dev", "vpn0"])
        host.run(["ip", "-6", "route", "add", "fd00:202::/48", "dev", "vpn0"])
        vpn.wait_ping(host, SERVER_TUN4)
        vpn.ping(host, SERVER_TUN6)
        vpn.ping(vpn.server_host, client_tun4(1))
        assert "fe80" not in host.run(["ip", "-o", "addr", "show", "dev", "vpn0"]).stdout

        proc = host.run([*harness.shell, "-c", proto_script(harness, "proto_vpncrypt_teardown vpn")],
                        env=env, check=False)
        assert proc.stdout.splitlines() == ["kill_command vpn"], proc.stderr
        deadline = time.monotonic() + 10
        while "vpn0" in host.link_names() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "vpn0" not in host.link_names()
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
