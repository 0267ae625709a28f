"""Tests of the FreeBSD port (freebsd-port/net/vpncrypt).

FreeBSD and its ports framework cannot run here (bsd.port.mk needs bmake and the ports
tree), so both are stood in for, and say so:

* the Makefile is read by `evaluate_port_makefile`, bmake's evaluation of the small
  subset the port uses (assignments, .if/.elif/.else/.endif on ==, !=, <, >=, &&, ||,
  .include), with what bsd.port.pre.mk does for the port modelled from Mk/Uses/python.mk
  (package-name prefix and suffix variables) and Mk/Uses/ssl.mk (its BROKEN_SSL check).
  Anything outside that subset fails the test instead of being guessed;
* the rc.d script is checked with `sh -n` and shellcheck and runs under sh against a
  stand-in rc.subr that follows run_rc_command() (libexec/rc/rc.subr) where the script
  depends on it: ${name}_program overriding $command, ${name}_flags, required_files
  before the precmd, required_modules after it, the command line it runs, and a
  stand-in daemon(8) and ifconfig.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pkgtest import (
    FREEBSD_PORT,
    FREEBSD_RC,
    REPO,
    VERSION,
    project_version,
    python_env,
    require_tool,
    run,
    write_key,
)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_freebsd_rc_syntax() -> None:
    proc = run(["sh", "-n", str(FREEBSD_RC)])
    assert proc.returncode == 0, proc.stderr


def test_freebsd_rc_shellcheck() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    proc = run([shellcheck, "--norc", str(FREEBSD_RC)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the Makefile


def logical_lines(text: str) -> list[str]:
    """The Makefile's lines with continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line)
    assert not pending, "the file ends with a continuation line"
    return lines


ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*([+?:!]?=)\s*(.*)$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TARGET = re.compile(r"^[A-Za-z0-9_.-]+:(?!=)")
COMPARISON = re.compile(r"^(\S+)\s*(==|!=|<=|>=|<|>)\s*(\S+)$")


def parse_assignments(text: str) -> dict[str, str]:
    """Every top-level VAR= / VAR+= assignment, unexpanded and whatever .if guards it."""
    variables: dict[str, str] = {}
    for line in logical_lines(text):
        mo = ASSIGNMENT.match(line)
        if mo and not line.startswith(("\t", ".")):
            name, op, value = mo.group(1), mo.group(2), " ".join(mo.group(3).split())
            variables[name] = f"{variables[name]} {value}" if op == "+=" and name in variables else value
    return variables


def expand(value: str, variables: dict[str, str], depth: int = 0) -> str:
    assert depth < 10, f"recursive variable in {value!r}"
    assert ":" not in "".join(VARIABLE.sub("", value).split("${")[1:]), f"modifier in {value!r}"
    return VARIABLE.sub(lambda mo: expand(variables.get(mo.group(1), ""), variables, depth + 1), value)


def condition(expr: str, variables: dict[str, str]) -> bool:
    """bmake's .if for terms `A op B` joined by && (binding tighter) and ||."""
    def term(text: str) -> bool:
        mo = COMPARISON.match(text.strip())
        assert mo, f"unsupported .if term {text!r}"
        left, op, right = (expand(mo.group(i), variables) for i in (1, 2, 3))
        if left.isdigit() and right.isdigit():
            a, b = int(left), int(right)
        else:
            assert op in ("==", "!="), f"non-numeric {op} in {text!r}"
            a, b = left, right  # type: ignore[assignment]
        return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    assert "(" not in expr, f"unsupported .if expression {expr!r}"
    return any(all(term(t) for t in alt.split("&&")) for alt in expr.split("||"))


# Defaults of the framework at the time of writing (Mk/bsd.default-versions.mk).
FRAMEWORK = {"OPSYS": "FreeBSD", "OSVERSION": "1402000", "PYTHON_DEFAULT": "3.11",
             "SSL_DEFAULT": "base"}


def evaluate_port_makefile(text: str, **env: str) -> dict[str, str]:
    """The port's variables as bmake would leave them, for the given framework settings
    (OSVERSION, SSL_DEFAULT, PYTHON_VER, ...).  Records the .include order in _INCLUDES."""
    variables = {**FRAMEWORK, **env}
    variables.setdefault("PYTHON_VER", variables["PYTHON_DEFAULT"])
    # Mk/Uses/python.mk: PYTHON_SUFFIX, PYTHON_PKGNAMEPREFIX, PYTHON_PKGNAMESUFFIX, PY_FLAVOR.
    suffix = variables["PYTHON_VER"].replace(".", "")
    variables.update(PYTHON_SUFFIX=suffix, PYTHON_PKGNAMEPREFIX=f"py{suffix}-",
                     PYTHON_PKGNAMESUFFIX=f"-py{suffix}", PY_FLAVOR=f"py{suffix}")
    includes: list[str] = []
    stack: list[list[bool]] = []  # [this branch active, a branch was taken]
    for line in logical_lines(text):
        active = all(frame[0] for frame in stack)
        if line.startswith("\t"):
            continue  # a recipe line
        if line.startswith("."):
            word, _, rest = line[1:].strip().partition(" ")
            parent = all(frame[0] for frame in stack[:-1]) if stack else True
            if word == "if":
                taken = active and condition(rest, variables)
                stack.append([taken, taken])
            elif word == "elif":
                frame = stack[-1]
                frame[0] = parent and not frame[1] and condition(rest, variables)
                frame[1] = frame[1] or frame[0]
            elif word == "else":
                frame = stack[-1]
                frame[0], frame[1] = parent and not frame[1], True
            elif word == "endif":
                stack.pop()
            elif word == "include":
                if active:
                    includes.append(rest.strip())
                    if rest.strip() == "<bsd.port.pre.mk>":
                        # Mk/Uses/ssl.mk, run from bsd.port.pre.mk for USES=ssl.
                        if "ssl" in variables.get("USES", "").split() and \
                                variables["SSL_DEFAULT"] in variables.get("BROKEN_SSL", "").split():
                            variables["BROKEN"] = (f"does not build with DEFAULT_VERSIONS+=ssl="
                                                   f"{variables['SSL_DEFAULT']}: "
                                                   f"{variables.get('BROKEN_SSL_REASON', '')}")
            else:
                raise AssertionError(f"unsupported directive {line!r}")
            continue
        if TARGET.match(line):
            continue  # a target; its recipe lines are skipped above
        mo = ASSIGNMENT.match(line)
        assert mo, f"unsupported line {line!r}"
        if active:
            name, op, value = mo.group(1), mo.group(2), " ".join(mo.group(3).split())
            if op == "+=" and name in variables:
                variables[name] = f"{variables[name]} {value}"
            elif op != "?=" or name not in variables:
                variables[name] = value
    assert not stack, "unterminated .if"
    variables["_INCLUDES"] = " ".join(includes)
    # bsd.port.mk: PKGNAME = ${PKGNAMEPREFIX}${PORTNAME}${PKGNAMESUFFIX}-${PKGVERSION}
    variables["PKGNAME"] = expand("${PKGNAMEPREFIX}${PORTNAME}${PKGNAMESUFFIX}-${DISTVERSION}", variables)
    return variables


MAKEFILE = (FREEBSD_PORT / "Makefile").read_text()
DEPENDS_ENTRY = re.compile(
    r"^(?P<pkg>[A-Za-z0-9_.+${}-]+?)(?P<op>[<>]=?|=)(?P<version>[0-9][0-9.]*)"
    r":(?P<origin>[a-z0-9-]+/[A-Za-z0-9_.+-]+)(?:@\$\{PY_FLAVOR\})?$"
)


def depends(value: str) -> dict[str, tuple[str, str, str]]:
    """{package name without the Python prefix: (op, version, origin)} of a *_DEPENDS."""
    out = {}
    for entry in value.split():
        mo = DEPENDS_ENTRY.match(entry)
        assert mo, f"not a port dependency: {entry}"
        out[mo["pkg"].replace("${PYTHON_PKGNAMEPREFIX}", "")] = (mo["op"], mo["version"], mo["origin"])
    return out


def test_freebsd_makefile_identity() -> None:
    variables = parse_assignments(MAKEFILE)
    assert variables["PORTNAME"] == "vpncrypt"
    assert variables["DISTVERSION"] == project_version()
    assert variables["CATEGORIES"].split()[0] == "net"
    assert variables["MASTER_SITES"] == "PYPI"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", variables["MAINTAINER"])
    comment = variables["COMMENT"]
    assert comment and len(comment) <= 70 and not comment.endswith(".") and comment[0].isupper()
    assert re.fullmatch(r"https://\S+", variables["WWW"])
    # ports style: a tab after the assignment operator of the leading variables
    for name in ("PORTNAME", "DISTVERSION", "CATEGORIES", "MAINTAINER", "COMMENT", "LICENSE"):
        assert re.search(rf"^{name}=\t", MAKEFILE, re.MULTILINE), name


@pytest.mark.parametrize("python, package", [("3.11", "vpncrypt-0.1.0"), ("3.12", "vpncrypt-py312-0.1.0")])
def test_freebsd_package_name(python: str, package: str) -> None:
    # An application port like devel/meson: `pkg install vpncrypt` for the default
    # Python; another flavor gets a suffix rather than clashing with it.
    variables = evaluate_port_makefile(MAKEFILE, PYTHON_VER=python)
    assert variables["PKGNAME"] == package
    assert "PKGNAMEPREFIX" not in variables


def test_freebsd_commands_are_unsuffixed() -> None:
    use_python = set(parse_assignments(MAKEFILE)["USE_PYTHON"].split())
    # concurrent (Mk/Uses/python.mk) would install bin/vpncryptd-3.11 and link the
    # plain name only for the default Python; cython (not cython3) is Cython 0.29.
    assert use_python == {"autoplist", "cython3", "pep517"}
    assert set(re.findall(r"%%(\w+)%%", FREEBSD_RC.read_text())) == {"PREFIX"}
    assert "%%PREFIX%%/bin/vpncryptd" in FREEBSD_RC.read_text()
    assert set(PYPROJECT["project"]["scripts"]) == {"vpncryptd", "vpncrypt"}


def test_freebsd_build_dependencies_match_pyproject() -> None:
    variables = parse_assignments(MAKEFILE)
    build = depends(variables["BUILD_DEPENDS"])
    # setuptools with the minimum pyproject.toml's build-system asks for (77: SPDX
    # `license`), not ${PY_SETUPTOOLS} (setuptools>0).
    requires = {re.split(r"[<>=]", r)[0].lower(): r for r in PYPROJECT["build-system"]["requires"]}
    minimum = re.search(r">=([0-9.]+)", requires["setuptools"]).group(1)
    assert build["setuptools"] == (">=", minimum, "devel/py-setuptools")
    # No py-wheel: setuptools builds wheels itself from 70.1 on.
    assert tuple(int(x) for x in minimum.split(".")) >= (70, 1)
    assert set(build) == {"setuptools"}
    # Cython: from USE_PYTHON=cython3 (lang/cython3), as pyproject wants Cython >= 3.
    assert requires["cython"] == "Cython>=3.0" and "cython3" in variables["USE_PYTHON"].split()
    assert "${PY_SETUPTOOLS}" not in MAKEFILE.split("BUILD_DEPENDS=")[1].split("\n")[0]


def test_freebsd_run_dependencies_match_pyproject() -> None:
    run_depends = depends(parse_assignments(MAKEFILE)["RUN_DEPENDS"])
    assert run_depends == {"docopt": (">", "0", "devel/py-docopt")}  # devel/py-docopt-ng does not exist
    # Every dependency the wheel declares for a non-Linux system is covered; classic
    # docopt stands in for docopt-ng (same module and API, tested in
    # test_packaging_python.py), pyroute2 is Linux-only.
    wanted = set()
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, _, marker = requirement.partition(";")
        if "sys_platform == 'linux'" in marker:
            continue
        wanted.add(re.split(r"[<>=!~ ]", name.strip())[0])
    assert {"docopt-ng": "docopt"}.get(w := wanted.pop(), w) == "docopt" and not wanted


def test_freebsd_license() -> None:
    variables = parse_assignments(MAKEFILE)
    assert PYPROJECT["project"]["license"] == "BSD-2-Clause"
    assert variables["LICENSE"] == "BSD2CLAUSE"  # the ports framework's name for it
    assert variables["LICENSE_FILE"] == "${WRKSRC}/LICENSE"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]  # so the sdist has it
    text = (REPO / "LICENSE").read_text()
    assert "Redistribution and use in source and binary forms" in text
    assert text.count("\n1. ") + text.count("\n2. ") == 2 and "\n3. " not in text  # 2 clauses


@pytest.mark.parametrize(
    "osversion, ssl, broken",
    [
        ("1302001", "base", "base has 1.1.1"),  # FreeBSD 13.2: base OpenSSL 1.1.1
        ("1400097", "base", None),  # FreeBSD 14.0: base OpenSSL 3.0
        ("1500000", "base", None),
        ("1302001", "openssl", None),  # ports OpenSSL 3.x on 13
        ("1302001", "openssl33", None),
        ("1402000", "openssl111", "ssl=openssl111: needs OpenSSL 3.0"),
        ("1402000", "libressl", "ssl=libressl: needs OpenSSL 3.0"),
        ("1402000", "libressl-devel", "ssl=libressl-devel: needs OpenSSL 3.0"),
    ],
)
def test_freebsd_broken_without_openssl_3(osversion: str, ssl: str, broken: str | None) -> None:
    variables = evaluate_port_makefile(MAKEFILE, OSVERSION=osversion, SSL_DEFAULT=ssl)
    if broken is None:
        assert "BROKEN" not in variables
    else:
        assert broken in variables["BROKEN"]


def test_freebsd_makefile_structure() -> None:
    variables = evaluate_port_makefile(MAKEFILE)
    # BROKEN_SSL is read by ssl.mk while bsd.port.pre.mk runs, the OSVERSION and
    # SSL_DEFAULT tests need pre.mk before them, and post.mk ends the file.
    assert variables["_INCLUDES"] == "<bsd.port.pre.mk> <bsd.port.post.mk>"
    assert logical_lines(MAKEFILE)[-1] == ".include <bsd.port.post.mk>"
    assert MAKEFILE.index("BROKEN_SSL=") < MAKEFILE.index(".include <bsd.port.pre.mk>")
    assert set(variables["USES"].split()) == {"python:3.11+", "ssl"}
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert variables["USE_RC_SUBR"] == "vpncryptd"
    assert (FREEBSD_PORT / "files" / "vpncryptd.in").is_file()


def test_the_makefile_evaluator_is_strict() -> None:
    # The stand-in must refuse what it does not understand rather than guess.
    for text in (".if defined(FOO)\nA=1\n.endif\n", ".for x in a b\n.endfor\n", "A=${B:S/x/y/}\n.if ${A} == y\n.endif\n"):
        with pytest.raises(AssertionError):
            evaluate_port_makefile(text + "PORTNAME=x\nDISTVERSION=1\n")
    assert evaluate_port_makefile(".if 1 < 2 && a == a || 1 > 2\nX=1\n.else\nX=2\n.endif\nPORTNAME=p\nDISTVERSION=1\n")["X"] == "1"


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


# --------------------------------------------------------------------------- the rc.d script

RC_SUBR_STUB = r"""
# Stand-in for /etc/rc.subr, following run_rc_command() where the script relies on it.
load_rc_config() { :; }
run_rc_command() {
	rc_arg=$1
	eval _override_command=\$${name}_program	# ${name}_program overrides $command
	command=${_override_command:-$command}
	_procname=${procname:-${command}}
	eval rc_flags=\$${name}_flags
	eval _cmd=\$${rc_arg}_cmd _precmd=\$${rc_arg}_precmd _postcmd=\$${rc_arg}_postcmd
	if [ -n "$_cmd" ]; then
		$_cmd
		return
	fi
	case "$rc_arg" in
	start)
		for _f in $required_files; do		# check_required_before()
			if [ ! -r "$_f" ]; then
				echo "WARNING: $_f is not readable." >&2
				return 1
			fi
		done
		if [ -n "$_precmd" ] && ! $_precmd; then
			echo "failed precmd routine for $name" >&2
			return 1
		fi
		for _f in $required_modules; do		# check_required_after() -> load_kld
			case "$_f" in
			*:*) echo "load_kld -m ${_f#*:} ${_f%%:*}" >> "$RC_LOG" ;;
			*) echo "load_kld $_f" >> "$RC_LOG" ;;
			esac
		done
		if [ ! -x "$command" ]; then
			echo "run_rc_command: cannot run $command" >&2
			return 1
		fi
		echo "procname=$_procname pidfile=$pidfile" >> "$RC_LOG"
		eval "$command $rc_flags $command_args"
		;;
	stop)
		[ -n "$_postcmd" ] && $_postcmd
		;;
	esac
}
"""

DAEMON_STUB = r"""#!/bin/sh
# Stand-in for daemon(8): records its arguments, one a line.
for arg; do echo "$arg"; done > "$DAEMON_LOG"
"""

IFCONFIG_STUB = r"""#!/bin/sh
# Stand-in for ifconfig: vpn0 is a tun (group "tun"), em0 an Ethernet interface.
case "$1 $2" in
"vpn0 ") printf 'vpn0: flags=8043<UP,BROADCAST,RUNNING,MULTICAST> metric 0 mtu 1400\n\toptions=80000<LINKSTATE>\n\tgroups: tun\n' ;;
"em0 ") printf 'em0: flags=8843<UP,BROADCAST,RUNNING> metric 0 mtu 1500\n\tmedia: Ethernet autoselect\n' ;;
*" destroy") echo "$1" >> "$IFCONFIG_LOG" ;;
*) exit 1 ;;
esac
"""

# rc.subr's per-service variables (run_rc_command()'s documentation and _rc_namevarlist):
# a script that sets one of them itself changes how rc.subr runs it.
RC_SUBR_RESERVED = ("program chroot chdir cpuset env env_file fib flags group groups limits "
                    "login_class nice oomprotect prepend setup umask user svcj").split()


class RcHarness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = tmp / "usr-local"
        (self.prefix / "bin").mkdir(parents=True)
        (self.prefix / "etc").mkdir()
        self.run_dir = tmp / "var-run"
        self.run_dir.mkdir()
        self.ifconfig_log = tmp / "ifconfig.log"
        self.daemon_log = tmp / "daemon.log"
        self.rc_log = tmp / "rc.log"
        rc_subr = tmp / "rc.subr"
        rc_subr.write_text(RC_SUBR_STUB)
        for stub, text in (("ifconfig", IFCONFIG_STUB), ("daemon", DAEMON_STUB)):
            (tmp / stub).write_text(text)
            (tmp / stub).chmod(0o755)
        # The port's vpncrypt script, here running this checkout's real CLI.
        tool = self.prefix / "bin" / "vpncrypt"
        tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vpncrypt.cli.vpncrypt "$@"\n')
        tool.chmod(0o755)
        # What `make` does with SUB_LIST (PREFIX), plus the stand-ins' paths.
        text = FREEBSD_RC.read_text()
        text = (text.replace("%%PREFIX%%", str(self.prefix))
                .replace("/etc/rc.subr", str(rc_subr)).replace("/sbin/ifconfig", str(tmp / "ifconfig"))
                .replace("/usr/sbin/daemon", str(tmp / "daemon")).replace("/var/run/", f"{self.run_dir}/"))
        self.script = tmp / "vpncryptd"
        self.script.write_text(text)

    def __call__(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        for log in (self.daemon_log, self.rc_log):
            log.unlink(missing_ok=True)
        full_env = python_env(IFCONFIG_LOG=str(self.ifconfig_log), DAEMON_LOG=str(self.daemon_log),
                              RC_LOG=str(self.rc_log), **env)
        return run(["sh", str(self.script), command], env=full_env, cwd=REPO)

    def daemon_argv(self) -> list[str]:
        return self.daemon_log.read_text().splitlines() if self.daemon_log.exists() else []


def test_freebsd_rc_sets_no_rc_subr_reserved_variable() -> None:
    text = FREEBSD_RC.read_text()
    for var in RC_SUBR_RESERVED:
        assert not re.search(rf"^\s*:?\s*\"?\$?\{{?vpncryptd_{var}\b[:=]", text, re.MULTILINE), var
        assert not re.search(rf"\bvpncryptd_{var}=", text), var


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
    # The file has no server_id: it starts, and the precmd's check-config says why 0 is risky.
    assert f"vpncrypt: warning: {conf}: [client] server_id is 0" in proc.stderr
    pid, child = rc.run_dir / "vpncryptd.pid", rc.run_dir / "vpncryptd.child.pid"
    # What rc.subr runs: daemon(8) supervising the unsuffixed vpncryptd.
    assert rc.daemon_argv() == ["-r", "-R", "5", "-P", str(pid), "-p", str(child), "-S",
                                "-T", "vpncryptd", "-t", "vpncryptd", f"{rc.prefix}/bin/vpncryptd",
                                "-c", str(conf), "--foreground"]
    assert rc.rc_log.read_text().splitlines() == [
        "load_kld -m if_tun if_tuntap",  # module if_tun, file if_tuntap.ko
        f"procname={tmp_path / 'daemon'} pidfile={pid}",  # the same process: daemon(8)
    ]

    proc = rc("start", vpncryptd_args="--verbose", vpncryptd_restart_delay="9")
    argv = rc.daemon_argv()
    assert argv[:3] == ["-r", "-R", "9"] and argv[-2:] == ["--foreground", "--verbose"]
    # vpncryptd_flags are rc.subr's, for $command: daemon(8) gets them, not vpncryptd.
    rc("start", vpncryptd_flags="-c")
    assert rc.daemon_argv()[0] == "-c" and rc.daemon_argv()[1:4] == ["-r", "-R", "5"]

    # A broken file: the precmd's check-config refuses to start, with vpncrypt's reason.
    bad = tmp_path / "bad.conf"
    bad.write_text("[client]\nid = 0\n")
    proc = rc("start", vpncryptd_config=str(bad))
    assert "failed precmd" in proc.stderr and rc.daemon_argv() == []
    assert "bad.conf" in proc.stderr
    # A missing file: required_files stops it before the precmd.
    proc = rc("start", vpncryptd_config=str(tmp_path / "missing.conf"))
    assert "missing.conf is not readable" in proc.stderr and rc.daemon_argv() == []

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


def test_the_rc_subr_stand_in_honours_program_override(tmp_path: Path) -> None:
    # ${name}_program replaces $command in run_rc_command(): a script that used the name
    # for its own purposes (as this one once did) would start the wrong program.
    rc = RcHarness(tmp_path)
    conf = rc.prefix / "etc" / "vpncrypt.conf"
    key = write_key(tmp_path / "k")
    conf.write_text(f"[client]\nid = 1\nserver = 192.0.2.1:51900\nkey = {key}\ninterface = vpn0\n"
                    "address = 10.9.0.2/24\n")
    conf.chmod(0o600)
    other = tmp_path / "other"
    other.write_text('#!/bin/sh\necho "OTHER $*" > "$DAEMON_LOG"\n')
    other.chmod(0o755)
    rc("start", vpncryptd_program=str(other))
    assert rc.daemon_argv()[0].startswith("OTHER -r -R 5 ")
