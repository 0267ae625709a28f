"""Tests of the packaging: OpenWrt package, FreeBSD port, systemd unit, sdist and wheel.

What runs here is real where it can be and a stand-in where the platform is missing:

* shell scripts: `sh -n` (dash, and BusyBox ash for the OpenWrt one) and shellcheck;
* the OpenWrt Makefile: GNU make on it, with stub rules.mk / package.mk /
  python3-package.mk that provide what it uses (the real ones need an OpenWrt tree);
  its Build/Prepare and install steps are also run for real into a temporary root;
* the OpenWrt init script: its UCI -> INI rendering and procd calls, run under dash and
  BusyBox with a stand-in for OpenWrt's config_* and procd_* shell functions; the files
  it writes are checked with the real `vpncrypt check-config`;
* the FreeBSD port: bsd.port.mk cannot run under GNU make, so a small parser checks the
  variables; the rc.d script runs under sh against a stand-in rc.subr and ifconfig;
* the systemd unit: its keys, and `systemd-analyze verify`;
* the Python packages: `python -m build` makes an sdist and a wheel (needs PyPI for
  build isolation), the wheel goes into a fresh venv, and vpncryptd/vpncrypt and the
  native seal/open run from there; the CLIs are also run with classic docopt 0.6.2,
  which is what OpenWrt packages.

With CI set, a missing tool (shellcheck, busybox, systemd-analyze, the `build` module)
fails the test instead of skipping it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OPENWRT_PKG = REPO / "openwrt" / "net" / "vpncrypt"
OPENWRT_INIT = OPENWRT_PKG / "files" / "vpncrypt.init"
OPENWRT_CONFIG = OPENWRT_PKG / "files" / "vpncrypt.config"
OPENWRT_UPGRADE = OPENWRT_PKG / "files" / "vpncrypt.upgrade"
FREEBSD_PORT = REPO / "freebsd-port" / "net" / "vpncrypt"
FREEBSD_RC = FREEBSD_PORT / "files" / "vpncryptd.in"
SYSTEMD_UNIT = REPO / "packaging" / "systemd" / "vpncryptd@.service"
SHELL_SCRIPTS = [OPENWRT_INIT, FREEBSD_RC]

CI = bool(os.environ.get("CI"))
VERSION = "0.1.0"


def require_tool(name: str, debian_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {debian_package})"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(argv, **kwargs)


def python_env(**extra: str) -> dict[str, str]:
    """An environment in which `python -m vpncrypt...` imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def check_config(path: Path) -> str:
    proc = run([sys.executable, "-m", "vpncrypt.cli.vpncrypt", "check-config", str(path)],
               env=python_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def write_key(path: Path) -> str:
    from vpncrypt.protocol.keys import generate_key

    key = generate_key()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_versions_agree() -> None:
    import vpncrypt

    assert _project_version() == vpncrypt.__version__ == VERSION


# --------------------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_syntax(script: Path) -> None:
    proc = run(["sh", "-n", str(script)])
    assert proc.returncode == 0, proc.stderr
    assert os.access(script, os.R_OK)


def test_openwrt_init_syntax_busybox() -> None:
    busybox = require_tool("busybox", "busybox")
    proc = run([busybox, "sh", "-n", str(OPENWRT_INIT)])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    proc = run([shellcheck, "--norc", str(script)])
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
$$(eval $$(Package/$(1)))
STUB_PACKAGES+=$(1)
STUB_DEPENDS.$(1):=$$(DEPENDS)
STUB_TITLE.$(1):=$$(TITLE)
STUB_SECTION.$(1):=$$(SECTION)
STUB_CATEGORY.$(1):=$$(CATEGORY)
stub-install-$(1):
	$$(call Package/$(1)/install,$$(STUB_ROOT)/$(1))
endef

define STUB_NL


endef

STUB_VARS=PKG_NAME PKG_VERSION PKG_RELEASE PKG_LICENSE PKG_BUILD_DEPENDS \
	PYTHON3_PKG_BUILD_VARS VPNCRYPT_SRC PYTHON3_PACKAGE_MK STUB_PACKAGES

stub-dump:
	$(file >$(STUB_DUMP),$(foreach v,$(STUB_VARS),$(v)=$(strip $($(v)))$(STUB_NL))$(foreach p,$(STUB_PACKAGES),DEPENDS.$(p)=$(strip $(STUB_DEPENDS.$(p)))$(STUB_NL)TITLE.$(p)=$(strip $(STUB_TITLE.$(p)))$(STUB_NL)SECTION.$(p)=$(STUB_SECTION.$(p))$(STUB_NL)CATEGORY.$(p)=$(STUB_CATEGORY.$(p))$(STUB_NL)))
	$(file >>$(STUB_DUMP),[conffiles]$(STUB_NL)$(Package/vpncrypt/conffiles))
	$(file >>$(STUB_DUMP),[filespec]$(STUB_NL)$(Py3Package/vpncrypt/filespec))
	@:

stub-prepare:
	$(Build/Prepare)
"""

STUB_PYTHON3_PACKAGE_MK = r"""
# Stub of the packages feed's lang/python/python3-package.mk: Py3Package defines the
# -src package and Package/NAME/install from Py3Package/NAME/install, like the real one.
PYTHON3_VERSION:=3.11
PYTHON3_PKG_DIR:=/usr/lib/python$(PYTHON3_VERSION)/site-packages

define Py3Package
  define Package/$(1)-src
    $(call Package/$(1))
    DEPENDS:=
    TITLE+= (sources)
  endef

  ifndef Package/$(1)/install
    define Package/$(1)/install
	$$(call Py3Package/$(1)/install,$$(1))
    endef

    define Package/$(1)-src/install
	$$(call Py3Package/$(1)/install,$$(1))
    endef
  endif
endef
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
    return top


def openwrt_make(top: Path, *args: str, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    argv = ["make", "--no-print-directory", "-C", str(OPENWRT_PKG), "-f", "Makefile",
            f"TOPDIR={top}"]
    if dry_run:
        argv.append("-n")
    return run([*argv, *args], env={**os.environ, "MAKEFLAGS": ""})


def test_openwrt_makefile_variables(openwrt_top: Path) -> None:
    dump = openwrt_top / "dump.txt"
    proc = openwrt_make(openwrt_top, "stub-dump", f"STUB_DUMP={dump}")
    assert proc.returncode == 0, proc.stderr
    text = dump.read_text()
    head, _, rest = text.partition("[conffiles]\n")
    conffiles, _, filespec = rest.partition("[filespec]\n")
    # $(foreach) separates the lines it makes with a space: strip it.
    values = dict(line.strip().split("=", 1) for line in head.splitlines() if "=" in line)

    assert values["PKG_NAME"] == "vpncrypt"
    assert values["PKG_VERSION"] == _project_version()
    assert values["PKG_RELEASE"].isdigit()
    assert values["PKG_LICENSE"] == "BSD-2-Clause"
    assert "python-cython/host" in values["PKG_BUILD_DEPENDS"].split()
    assert values["PYTHON3_PACKAGE_MK"] == str(
        openwrt_top / "feeds/packages/lang/python/python3-package.mk")
    assert values["VPNCRYPT_SRC"] == str(REPO)
    assert values["PYTHON3_PKG_BUILD_VARS"] == f'CPATH="{openwrt_top}/staging_dir/target/usr/include"'
    assert values["STUB_PACKAGES"].split() == ["vpncrypt", "vpncrypt-src"]
    assert set(values["DEPENDS.vpncrypt"].split()) == {
        "+python3-light", "+python3-logging", "+python3-ctypes", "+python3-docopt",
        "+python3-pyroute2", "+libopenssl", "+kmod-tun",
    }
    assert values["DEPENDS.vpncrypt-src"] == ""
    assert values["SECTION.vpncrypt"] == "net" and values["CATEGORY.vpncrypt"] == "Network"
    assert values["TITLE.vpncrypt-src"] == values["TITLE.vpncrypt"] + " (sources)"
    assert conffiles.split() == ["/etc/config/vpncrypt", "/etc/vpncrypt/"]
    assert filespec.split() == [
        "+|/usr/lib/python3.11/site-packages",
        "-|/usr/lib/python3.11/site-packages/vpncrypt/_fast.pyx",
        "-|/usr/lib/python3.11/site-packages/vpncrypt/_fast.c",
        "-|/usr/lib/python3.11/site-packages/vpncrypt/tun/freebsd.py",
    ]


def test_openwrt_makefile_install_dry_run(openwrt_top: Path) -> None:
    proc = openwrt_make(openwrt_top, "stub-install-vpncrypt", dry_run=True)
    assert proc.returncode == 0, proc.stderr
    root = f"{openwrt_top}/root/vpncrypt"
    lines = proc.stdout.splitlines()
    for expected in [
        f"install -m0755 ./files/vpncrypt.init {root}/etc/init.d/vpncrypt",
        f"install -m0600 ./files/vpncrypt.config {root}/etc/config/vpncrypt",
        f"install -m0644 ./files/vpncrypt.upgrade {root}/lib/upgrade/keep.d/vpncrypt",
        f"chmod 0700 {root}/etc/vpncrypt",
    ]:
        assert expected in lines, proc.stdout
    for ref in re.findall(r"\./files/\S+", proc.stdout):
        assert (OPENWRT_PKG / ref).is_file(), ref


def _data_files() -> set[str]:
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {f for files in setuptools.get("data-files", {}).values() for f in files}


def test_openwrt_makefile_prepare_and_install_for_real(openwrt_top: Path) -> None:
    proc = openwrt_make(openwrt_top, "stub-prepare")
    assert proc.returncode == 0, proc.stderr
    build = openwrt_top / "build_dir" / f"vpncrypt-{VERSION}"
    copied = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "setup.py", "vpncrypt/_fast.pyx", "vpncrypt/__init__.py"} <= copied
    assert _data_files() <= copied  # the wheel build needs them
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "vpncrypt").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= copied
    assert not [p for p in copied if p.endswith((".so", ".pyc")) or "__pycache__" in p
                or p == "vpncrypt/_fast.c"]

    # What Py3Build/Install would have left for the install step.
    bindir = build / "ipkg-install" / "usr" / "bin"
    bindir.mkdir(parents=True)
    for script in ("vpncryptd", "vpncrypt"):
        (bindir / script).write_text("#!/usr/bin/python3\n")
        (bindir / script).chmod(0o755)
    proc = openwrt_make(openwrt_top, "stub-install-vpncrypt")
    assert proc.returncode == 0, proc.stderr
    root = openwrt_top / "root" / "vpncrypt"

    def mode(rel: str) -> int:
        return stat.S_IMODE((root / rel).stat().st_mode)

    assert mode("etc/init.d/vpncrypt") == 0o755
    assert mode("etc/config/vpncrypt") == 0o600
    assert mode("lib/upgrade/keep.d/vpncrypt") == 0o644
    assert mode("etc/vpncrypt") == 0o700
    assert (root / "usr/bin/vpncryptd").is_file() and (root / "usr/bin/vpncrypt").is_file()


def test_openwrt_makefile_needs_the_packages_feed(openwrt_top: Path) -> None:
    shutil.rmtree(openwrt_top / "feeds")
    proc = openwrt_make(openwrt_top, "stub-dump", "STUB_DUMP=/dev/null")
    assert proc.returncode != 0
    assert "python3-package.mk" in proc.stderr and "packages" in proc.stderr


OPENWRT_STDLIB_SPLIT = {
    # Standard-library modules that OpenWrt does NOT ship in python3-light, and the
    # package that has them (lang/python/python3/files/python3-package-*.mk).
    "asyncio": "python3-asyncio", "cgi": "python3-cgi", "cgitb": "python3-cgi",
    "ctypes": "python3-ctypes", "dbm": "python3-dbm", "decimal": "python3-decimal",
    "distutils": "python3-distutils", "email": "python3-email", "lib2to3": "python3-lib2to3",
    "logging": "python3-logging", "lzma": "python3-lzma",
    "multiprocessing": "python3-multiprocessing", "curses": "python3-ncurses",
    "ssl": "python3-openssl", "_hashlib": "python3-openssl", "_ssl": "python3-openssl",
    "pydoc": "python3-pydoc", "readline": "python3-readline", "sqlite3": "python3-sqlite3",
    "unittest": "python3-unittest", "urllib": "python3-urllib", "uuid": "python3-uuid",
    "venv": "python3-venv", "webbrowser": "python3-webbrowser", "xml": "python3-xml",
    "xmlrpc": "python3-xml", "ensurepip": "python3-pip",
}
THIRD_PARTY = {
    "docopt": "python3-docopt",
    "pyroute2": "python3-pyroute2",
    # Optional: only the pure-Python fallback crypto path; not a dependency.
    "cryptography": None,
}


def _imported_modules() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / "vpncrypt").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_openwrt_depends_cover_every_import(openwrt_top: Path) -> None:
    dump = openwrt_top / "dump.txt"
    assert openwrt_make(openwrt_top, "stub-dump", f"STUB_DUMP={dump}").returncode == 0
    depends = next(line.split("=", 1)[1].split() for line in dump.read_text().splitlines()
                   if line.strip().startswith("DEPENDS.vpncrypt="))
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in ("vpncrypt", "__future__"):
            continue
        if module in OPENWRT_STDLIB_SPLIT:
            needed = OPENWRT_STDLIB_SPLIT[module]
        elif module in sys.stdlib_module_names:
            continue  # in python3-light
        elif module in THIRD_PARTY:
            needed = THIRD_PARTY[module]
            if needed is None:
                continue
        else:
            missing.append(f"{module} (imported by {sorted(where)}): unknown to this test")
            continue
        if f"+{needed}" not in depends:
            missing.append(f"{module} needs +{needed} (imported by {sorted(where)})")
    assert not missing, "\n".join(missing)


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
	. "$STUB_UCI_DIR/$1"
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
        self.stub = tmp / "functions.sh"
        self.stub.write_text(UCI_STUB)

    def start(self, uci_text: str) -> subprocess.CompletedProcess[str]:
        (self.uci / "vpncrypt").write_text(uci_text)
        script = f'. "{self.stub}"\n. "{OPENWRT_INIT}"\nstart_service\nservice_triggers\n'
        env = {"PATH": os.environ["PATH"], "STUB_UCI_DIR": str(self.uci),
               "VPNCRYPT_RUN_DIR": str(self.run_dir)}
        return run([*self.shell, "-c", script], env=env)

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


def test_init_renders_valid_configs(init: InitHarness, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key(keys / "laptop.key")
    write_key(keys / "home.key")
    inline = write_key(tmp_path / "unused.key")
    proc = init.start(_full_uci(keys, inline))
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
    keys = tmp_path / "keys"
    keys.mkdir()
    write_key(keys / "laptop.key")
    write_key(keys / "home.key")
    text = _full_uci(keys, write_key(tmp_path / "k"))
    assert init.start(text).returncode == 0
    assert (init.run_dir / "home.conf").exists()
    proc = init.start(text.replace("option enabled 'yes'", "option enabled 'no'"))
    assert sorted(init.instances(proc.stdout)) == ["office"]
    assert not (init.run_dir / "home.conf").exists()


def test_openwrt_keep_list() -> None:
    entries = [line.strip() for line in OPENWRT_UPGRADE.read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert entries == ["/etc/vpncrypt/"]


# --------------------------------------------------------------------------- FreeBSD port


def parse_bsd_makefile(text: str) -> tuple[dict[str, str], list[str]]:
    """Variable assignments (VAR= / VAR+= / VAR?=) and the other non-comment lines.

    A small subset of bmake syntax, enough to check a port's Makefile here, where
    bsd.port.mk cannot run.  Continuation lines are joined; values are not expanded.
    """
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        joined.append(line)
    assert not pending, "the file ends with a continuation line"
    variables: dict[str, str] = {}
    other: list[str] = []
    assignment = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*([+?:!]?=)(.*)$")
    for line in joined:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        mo = assignment.match(line)
        if mo and not line.startswith("\t"):
            name, op, value = mo.group(1), mo.group(2), " ".join(mo.group(3).split())
            if op == "+=" and name in variables:
                variables[name] = f"{variables[name]} {value}".strip()
            else:
                variables[name] = value
        else:
            other.append(line)
    return variables, other


DEPENDS_ENTRY = re.compile(
    r"^(?:\$\{PYTHON_PKGNAMEPREFIX\})?[A-Za-z0-9_.+-]+(?:[<>]=?|=)[0-9][0-9.]*"
    r":[a-z0-9-]+/[A-Za-z0-9_.+-]+(?:@\$\{PY_FLAVOR\})?$"
)


def test_freebsd_makefile() -> None:
    text = (FREEBSD_PORT / "Makefile").read_text()
    variables, other = parse_bsd_makefile(text)
    assert variables["PORTNAME"] == "vpncrypt"
    assert variables["DISTVERSION"] == _project_version()
    assert variables["CATEGORIES"].split()[0] == "net"
    assert variables["MASTER_SITES"] == "PYPI"
    assert variables["PKGNAMEPREFIX"] == "${PYTHON_PKGNAMEPREFIX}"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", variables["MAINTAINER"])
    comment = variables["COMMENT"]
    assert comment and len(comment) <= 70 and not comment.endswith(".") and comment[0].isupper()
    assert re.fullmatch(r"https://\S+", variables["WWW"])
    assert variables["LICENSE"] == "BSD2CLAUSE"
    assert set(variables["USES"].split()) >= {"ssl"}
    assert any(u.startswith("python") for u in variables["USES"].split())
    use_python = set(variables["USE_PYTHON"].split())
    assert use_python == {"autoplist", "concurrent", "cython3", "pep517"}
    assert "cython" not in use_python  # that would be lang/cython, Cython 0.29
    assert variables["USE_RC_SUBR"] == "vpncryptd"
    assert (FREEBSD_PORT / "files" / "vpncryptd.in").is_file()
    run_depends = variables["RUN_DEPENDS"].split()
    build_depends = variables["BUILD_DEPENDS"].split()
    for entry in run_depends + build_depends:
        assert entry == "${PY_SETUPTOOLS}" or DEPENDS_ENTRY.match(entry), entry
    assert "${PYTHON_PKGNAMEPREFIX}docopt-ng>0:devel/py-docopt-ng@${PY_FLAVOR}" in run_depends
    assert not [e for e in run_depends if "pyroute2" in e]  # Linux-only
    assert other[-1] == ".include <bsd.port.mk>"
    # ports style: a tab after the assignment operator of the leading variables
    for name in ("PORTNAME", "DISTVERSION", "CATEGORIES", "MAINTAINER", "COMMENT", "LICENSE"):
        assert re.search(rf"^{name}=\t", text, re.MULTILINE), name


def test_freebsd_distinfo_and_descr() -> None:
    lines = (FREEBSD_PORT / "distinfo").read_text().splitlines()
    distfile = f"vpncrypt-{VERSION}.tar.gz"
    assert lines[0].startswith("TIMESTAMP = ")
    sha = next(line for line in lines if line.startswith(f"SHA256 ({distfile}) = "))
    size = next(line for line in lines if line.startswith(f"SIZE ({distfile}) = "))
    # A placeholder until the sdist is published: `make makesum` regenerates the file.
    assert "PLACEHOLDER" in sha and "make-makesum" in sha
    assert size.endswith(" = 0")
    descr = (FREEBSD_PORT / "pkg-descr").read_text()
    assert descr.strip() and all(len(line) <= 80 for line in descr.splitlines())


RC_SUBR_STUB = r"""
# Stand-in for /etc/rc.subr: runs the start/stop/reload steps the script defines.
load_rc_config() { :; }
run_rc_command() {
	case "$1" in
	start)
		if [ -n "$start_precmd" ] && ! $start_precmd; then
			echo "start_precmd failed"
			return 1
		fi
		echo "START $command $command_args"
		echo "MODULES $required_modules FILES $required_files PROCNAME $procname PIDFILE $pidfile"
		;;
	stop) echo "STOP"; $stop_postcmd ;;
	reload) $reload_cmd ;;
	esac
}
"""

IFCONFIG_STUB = r"""#!/bin/sh
# Stand-in for ifconfig: vpn0 is a tun (group "tun"), em0 an Ethernet interface.
case "$1 $2" in
"vpn0 ") printf 'vpn0: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> metric 0 mtu 1400\n\toptions=80000<LINKSTATE>\n\tgroups: tun\n' ;;
"em0 ") printf 'em0: flags=8843<UP,BROADCAST,RUNNING> metric 0 mtu 1500\n\tmedia: Ethernet autoselect\n' ;;
*" destroy") echo "$1" >> "$IFCONFIG_LOG" ;;
*) exit 1 ;;
esac
"""


class RcHarness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = tmp / "usr-local"
        (self.prefix / "bin").mkdir(parents=True)
        (self.prefix / "etc").mkdir()
        self.run_dir = tmp / "var-run"
        self.run_dir.mkdir()
        self.ifconfig_log = tmp / "ifconfig.log"
        rc_subr = tmp / "rc.subr"
        rc_subr.write_text(RC_SUBR_STUB)
        ifconfig = tmp / "ifconfig"
        ifconfig.write_text(IFCONFIG_STUB)
        ifconfig.chmod(0o755)
        # The port's vpncrypt-3.11 script, here running this checkout's real CLI.
        tool = self.prefix / "bin" / "vpncrypt-3.11"
        tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vpncrypt.cli.vpncrypt "$@"\n')
        tool.chmod(0o755)
        # What `make` does with SUB_LIST (PREFIX, PYTHON_VER), plus the stand-ins' paths.
        text = FREEBSD_RC.read_text()
        assert set(re.findall(r"%%(\w+)%%", text)) == {"PREFIX", "PYTHON_VER"}
        text = (text.replace("%%PREFIX%%", str(self.prefix)).replace("%%PYTHON_VER%%", "3.11")
                .replace("/etc/rc.subr", str(rc_subr)).replace("/sbin/ifconfig", str(ifconfig))
                .replace("/var/run/", f"{self.run_dir}/"))
        self.script = tmp / "vpncryptd"
        self.script.write_text(text)

    def __call__(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        full_env = python_env(IFCONFIG_LOG=str(self.ifconfig_log), **env)
        return run(["sh", str(self.script), command], env=full_env, cwd=REPO)


def test_freebsd_rc_script(tmp_path: Path) -> None:
    rc = RcHarness(tmp_path)
    proc = run(["sh", "-n", str(rc.script)])
    assert proc.returncode == 0, proc.stderr

    conf = rc.prefix / "etc" / "vpncrypt.conf"
    key = write_key(tmp_path / "k")
    conf.write_text(f"[client]\nid = 1\nserver = 192.0.2.1:51900\nkey = {key}\n"
                    "interface = vpn0  # the tunnel\naddress = 10.9.0.2/24\n")
    conf.chmod(0o600)
    proc = rc("start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pid, child = rc.run_dir / "vpncryptd.pid", rc.run_dir / "vpncryptd.child.pid"
    assert f"START /usr/sbin/daemon -r -R 5 -P {pid} -p {child} -S -T vpncryptd -t vpncryptd " \
           f"{rc.prefix}/bin/vpncryptd-3.11 -c {conf} --foreground" in proc.stdout
    assert f"MODULES if_tun FILES {conf} PROCNAME /usr/sbin/daemon PIDFILE {pid}" in proc.stdout

    proc = rc("start", vpncryptd_args="--verbose", vpncryptd_restart_delay="9")
    assert "-r -R 9 " in proc.stdout and "--foreground --verbose" in proc.stdout

    # A broken file: the precmd's check-config refuses to start, with vpncrypt's reason.
    bad = tmp_path / "bad.conf"
    bad.write_text("[client]\nid = 0\n")
    proc = rc("start", vpncryptd_config=str(bad))
    assert "start_precmd failed" in proc.stdout and "START" not in proc.stdout
    assert "bad.conf" in proc.stderr

    # stop destroys the tun named in the file, and nothing that is not a tun.
    proc = rc("stop")
    assert proc.returncode == 0, proc.stderr
    assert rc.ifconfig_log.read_text().split() == ["vpn0"]
    rc.ifconfig_log.unlink()
    conf.write_text(conf.read_text().replace("vpn0", "em0"))
    rc("stop")
    assert not rc.ifconfig_log.exists()

    # reload sends SIGHUP to vpncryptd (the child), not to daemon(8).
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        child.write_text(f"{sleeper.pid}\n")
        assert rc("reload").returncode == 0
        assert sleeper.wait(timeout=10) == -signal.SIGHUP
    finally:
        sleeper.kill()
    child.unlink()
    proc = rc("reload")
    assert proc.returncode != 0 and "is it running?" in proc.stderr


# --------------------------------------------------------------------------- systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and _, line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_keys() -> None:
    unit = parse_unit(SYSTEMD_UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["ExecStart"] == "/usr/bin/vpncryptd -c /etc/vpncrypt/%i.conf --foreground"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "root"
    assert service["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID"}
    assert service["DeviceAllow"] == "/dev/net/tun rw"
    assert service["DevicePolicy"] == "closed"
    assert service["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert service[key] == "yes", key
    assert service["RuntimeDirectory"] == "vpncrypt"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert set(service["RestrictAddressFamilies"].split()) == {
        "AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}
    # These would break the daemon: /proc/sys writes (addr_gen_mode) and /dev/net/tun.
    assert "ProtectKernelTunables" not in service and "PrivateDevices" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's program exists; /usr/bin/vpncryptd is not installed
    # here, so the unit is verified with its path pointing at a stand-in executable.
    shim = tmp_path / "vpncryptd"
    shim.write_text("#!/bin/sh\nexit 0\n")
    shim.chmod(0o755)
    text = SYSTEMD_UNIT.read_text()
    assert text.count("ExecStart=/usr/bin/vpncryptd ") == 1
    text = text.replace("ExecStart=/usr/bin/vpncryptd ", f"ExecStart={shim} ")
    (tmp_path / "vpncryptd@.service").write_text(text)
    (tmp_path / "vpncryptd@office.service").write_text(text)
    # --man=no: the man pages of Documentation= are not installed here (the next test
    # checks that their sources exist).
    proc = run([analyze, "verify", "--man=no", str(tmp_path / "vpncryptd@office.service")],
               env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys are only warnings


_CAP_BITS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21,
}


def _cap_mask(names: list[str]) -> int:
    return sum(1 << _CAP_BITS[name] for name in names)


def _proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@pytest.mark.netns
def test_daemon_runs_with_only_the_units_capabilities(netns_factory, tmp_path: Path) -> None:
    """vpncryptd@.service starts the daemon as root with only the capabilities of its
    CapabilityBoundingSet= (and AmbientCapabilities=).  Start a real server that way
    (setpriv, in a throwaway network namespace) and check that it creates and
    configures its TUN and control socket, drops to `nobody` keeping only what it
    means to keep, and stops cleanly.  The rest of the unit's sandbox needs systemd as
    PID 1, which this machine does not have."""
    import pwd

    from vpncrypt.daemon import privileges

    setpriv = require_tool("setpriv", "util-linux")
    service = parse_unit(SYSTEMD_UNIT.read_text())["Service"]
    bounding = service["CapabilityBoundingSet"][-1].split()
    ambient = service["AmbientCapabilities"][-1].split()

    def setpriv_list(names: list[str]) -> str:
        return ",".join(["-all", *(f"+{n.lower().removeprefix('cap_')}" for n in names)])

    conf = tmp_path / "server.conf"
    state = tmp_path / "state"
    key_file = tmp_path / "a.key"
    write_key(key_file)
    conf.write_text(
        "[server]\nlisten = 0.0.0.0:51900\ninterface = vpct0\n"
        f"address = 10.201.0.1/24, fd00:201::1/64\nstate_dir = {state}\n\n"
        f"[client a]\nid = 1\nkey_file = {key_file}\nallowed_ips = 10.201.0.2/32\n"
    )
    nobody = pwd.getpwnam(privileges.DEFAULT_USER).pw_uid
    host = netns_factory()
    proc = host.popen(
        [setpriv, f"--bounding-set={setpriv_list(bounding)}",
         f"--inh-caps={setpriv_list(ambient)}", f"--ambient-caps={setpriv_list(ambient)}",
         "--no-new-privs",
         sys.executable, "-m", "vpncrypt.cli.vpncryptd", "-c", str(conf), "--foreground"],
        env=python_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while True:  # until it has configured the interface and dropped root
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the daemon did not get going within 30 s"
        if ("vpct0" in host.link_names() and host.ip("-6", "addr", "show", "vpct0").strip()
                and _proc_status(proc.pid)["Uid"].split()[0] == str(nobody)):
            break
        time.sleep(0.2)
    status = _proc_status(proc.pid)
    assert int(status["CapBnd"], 16) == _cap_mask(bounding)
    kept = sum(1 << cap for cap in privileges.KEPT)
    assert kept & ~_cap_mask(bounding) == 0  # what it keeps, the unit must grant
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == kept, status
    assert status["NoNewPrivs"] == "1"
    addresses = host.ip("-br", "addr", "show", "vpct0")
    assert "10.201.0.1/24" in addresses and "fd00:201::1/64" in addresses
    assert "10.201.0.0/24 dev vpct0" in host.ip("route")
    assert stat.S_ISSOCK((state / "vpct0.sock").stat().st_mode)
    # The state directory and all in it stay root's (no CAP_CHOWN needed).
    for path in (state, state / "vpct0.sock", state / "vpct0.replay", state / "vpct0.replay.1"):
        assert path.stat().st_uid == 0 and path.stat().st_mode & 0o077 == 0, path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.stderr.read()
    assert "vpct0" not in host.link_names()
    # Not writable for `nobody`, the directory keeps the socket: nobody listens on it.
    with pytest.raises(ConnectionRefusedError):
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(state / "vpct0.sock"))


def test_systemd_unit_documentation_exists() -> None:
    unit = parse_unit(SYSTEMD_UNIT.read_text())
    pages = unit["Unit"]["Documentation"][0].split()
    assert pages
    for page in pages:
        mo = re.fullmatch(r"man:([\w.-]+)\((\d)\)", page)
        assert mo, page
        assert (REPO / "docs" / "man" / f"{mo.group(1)}.{mo.group(2)}").is_file(), page


# --------------------------------------------------------------------------- sdist, wheel, venv

WHEEL_BUDGET = 180.0  # seconds for the whole build/install/run sequence


def require_build() -> None:
    # Asked of a fresh interpreter outside the checkout: in it, the setuptools output
    # directory build/ would pass for a namespace package called "build".
    probe = run([sys.executable, "-c", "import build.__main__"], cwd="/")
    if probe.returncode != 0:
        message = "the 'build' package is not installed (pip install build)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.deadline = time.monotonic() + WHEEL_BUDGET
        self.dist = root / "dist"
        self.venv = root / "venv"

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        assert left > 0, f"over the {WHEEL_BUDGET:.0f} s budget"
        return left

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(kwargs.pop("env", {}))
        return run(argv, timeout=self.remaining(), env=env, cwd=kwargs.pop("cwd", self.root),
                   **kwargs)

    @property
    def wheel(self) -> Path:
        (wheel,) = self.dist.glob("*.whl")
        return wheel

    @property
    def sdist(self) -> Path:
        (sdist,) = self.dist.glob("*.tar.gz")
        return sdist


# Left out of the copy the wheel test builds from: VCS data, environments, caches and
# build products of the checkout (an in-place extension, generated C, old builds).
_SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache",
              ".hypothesis", ".benchmarks", ".ci", "bench", "openwrt", "freebsd-port"}


def _not_source(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in _SKIP_DIRS or n.endswith((".egg-info", ".so", ".pyc"))}
    if Path(directory).name == "vpncrypt":
        skipped.add("_fast.c")
    return skipped


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    require_build()
    b = Built(tmp_path_factory.mktemp("wheel"))
    # Build from a copy of the package sources, so nothing is written into the checkout
    # (egg-info, build/) and nothing from it (an in-place .so, a venv) leaks in.
    src = b.root / "src"
    shutil.copytree(REPO, src, ignore=_not_source)
    proc = b.run([sys.executable, "-m", "build", "--outdir", str(b.dist), str(src)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = b.run([sys.executable, "-m", "venv", str(b.venv)])
    assert proc.returncode == 0, proc.stderr
    proc = b.run([str(b.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  "--disable-pip-version-check", str(b.wheel)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield b


def test_sdist_and_wheel_contents(built: Built) -> None:
    assert re.fullmatch(rf"vpncrypt-{VERSION}-cp3\d+-cp3\d+-\S+\.whl", built.wheel.name)
    assert built.sdist.name == f"vpncrypt-{VERSION}.tar.gz"
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert [n for n in names if re.fullmatch(r"vpncrypt/_fast\..*\.so", n)], sorted(names)
    sources = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "vpncrypt").rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert sources and not [s for s in sources if s not in names]
    entry_points = zipfile.ZipFile(built.wheel).read(
        f"vpncrypt-{VERSION}.dist-info/entry_points.txt").decode()
    assert "vpncryptd = vpncrypt.cli.vpncryptd:main" in entry_points
    assert "vpncrypt = vpncrypt.cli.vpncrypt:main" in entry_points

    with tarfile.open(built.sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "setup.py", "vpncrypt/_fast.pyx"} <= members
    assert _data_files() <= members  # or a wheel built from the sdist fails
    assert not [s for s in sources if s not in members]


def test_wheel_runs_from_a_fresh_venv(built: Built) -> None:
    bin_dir = built.venv / "bin"
    proc = built.run([str(bin_dir / "vpncryptd"), "--version"])
    assert (proc.returncode, proc.stdout.strip()) == (0, f"vpncryptd {VERSION}"), proc.stderr
    proc = built.run([str(bin_dir / "vpncrypt"), "genkey"])
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 44

    code = """
import os, sys
import vpncrypt
from vpncrypt import _fast
from vpncrypt.protocol import aead
assert vpncrypt.__file__.startswith(sys.prefix), vpncrypt.__file__
cls, path = aead.select("native")
assert path == "native" and cls is _fast.SivContext, (cls, path)
key = os.urandom(64)
sender, receiver = cls(key, 7, 9), cls(key, 7, 9)
body = bytes(range(256)) * 5
packet = sender.seal(1, 1_700_000_000, 42, body)
assert receiver.open(packet, 1_700_000_000) == body
forged = bytearray(packet)
forged[-1] ^= 1
assert receiver.open(bytes(forged), 1_700_000_000) is None
assert cls(os.urandom(64), 7, 9).open(packet, 1_700_000_000) is None
print(_fast.openssl_version())
"""
    proc = built.run([str(bin_dir / "python"), "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "OpenSSL 3" in proc.stdout


def test_cli_behaves_the_same_with_classic_docopt(built: Built, tmp_path: Path) -> None:
    """OpenWrt packages docopt 0.6.2, not docopt-ng: the CLIs must not notice."""
    classic = tmp_path / "docopt-0.6.2"
    proc = built.run([str(built.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check", "--no-deps", "--target", str(classic),
                      "docopt==0.6.2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    conf = tmp_path / "client.conf"
    conf.write_text(f"[client]\nid = 1\nserver = 192.0.2.1:51900\nkey_file = {tmp_path}/k\n"
                    "interface = vpn0\naddress = 10.9.0.2/24\n")
    write_key(tmp_path / "k")
    empty = tmp_path / "no-daemons"
    empty.mkdir()
    cases = [
        ["vpncryptd", "--version"],
        ["vpncryptd", "--help"],
        ["vpncryptd"],
        ["vpncryptd", "--bogus"],
        ["vpncryptd", "-c", str(tmp_path / "missing.conf"), "--foreground"],
        ["vpncryptd", "-c", str(conf), "--crypto=fast"],
        ["vpncrypt", "check-config", str(conf)],
        ["vpncrypt", "check-config"],
        ["vpncrypt", "show", f"--state-dir={empty}"],
        ["vpncrypt", "show", "--json", "--prometheus"],
        ["vpncrypt", "--version"],
    ]
    python = str(built.venv / "bin" / "python")
    for argv in cases:
        code = f"import sys; from vpncrypt.cli.{argv[0]} import main; main(sys.argv[1:])"
        ng = built.run([python, "-c", code, *argv[1:]])
        old = built.run([python, "-c", code, *argv[1:]], env={"PYTHONPATH": str(classic)})
        assert (old.returncode, old.stdout, old.stderr) == (ng.returncode, ng.stdout, ng.stderr), argv
    proc = built.run([python, "-c", "import docopt; print(docopt.__version__)"],
                     env={"PYTHONPATH": str(classic)})
    assert proc.stdout.strip() == "0.6.2"
