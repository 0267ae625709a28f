"""Tests of the OpenWrt package (openwrt/net/vpncrypt).

* the init script: `sh -n` under dash and BusyBox ash, and shellcheck;
* the Makefile: GNU make on it, with stub rules.mk / package.mk / python3-package.mk
  that provide what it uses (the real ones need an OpenWrt tree); its Build/Prepare
  and install steps are also run for real into a temporary root;
* the init script's UCI -> INI rendering and procd calls, run under dash and BusyBox
  with a stand-in for OpenWrt's config_* and procd_* shell functions; the files it
  writes are checked with the real `vpncrypt check-config`.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pkgtest import (
    data_files,
    project_version,
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


def test_openwrt_init_syntax() -> None:
    proc = run(["sh", "-n", str(OPENWRT_INIT)])
    assert proc.returncode == 0, proc.stderr


def test_openwrt_init_syntax_busybox() -> None:
    busybox = require_tool("busybox", "busybox")
    proc = run([busybox, "sh", "-n", str(OPENWRT_INIT)])
    assert proc.returncode == 0, proc.stderr




def test_openwrt_init_shellcheck() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    proc = run([shellcheck, "--norc", str(OPENWRT_INIT)])
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
    assert values["PKG_VERSION"] == project_version()
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


def test_openwrt_makefile_prepare_and_install_for_real(openwrt_top: Path) -> None:
    proc = openwrt_make(openwrt_top, "stub-prepare")
    assert proc.returncode == 0, proc.stderr
    build = openwrt_top / "build_dir" / f"vpncrypt-{VERSION}"
    copied = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "setup.py", "vpncrypt/_fast.pyx", "vpncrypt/__init__.py"} <= copied
    assert data_files() <= copied  # the wheel build needs them
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

