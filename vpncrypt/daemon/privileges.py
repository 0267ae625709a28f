"""Dropping root once the TUN device, the sockets and the control socket exist.

Linux: the daemon switches to an unprivileged user (config `user`, default `nobody`
when that account exists; `user = root` keeps root) and keeps exactly two
capabilities: CAP_NET_ADMIN (interface work) and CAP_DAC_READ_SEARCH (re-reading the
root-only configuration and key files on SIGHUP).

FreeBSD: there are no capabilities to keep, so a switch is all or nothing.  It is made
only when `user` names an account explicitly (not root): setgroups([gid]), setgid,
setuid, after which a reload re-reads the configuration and key files as that user,
who must therefore own them (mode 0600).  Left unset, the daemon stays root and says
why (STAYING_ROOT_FREEBSD).  The tun interface is then no longer the daemon's to
destroy at exit; the rc.d script's stop does it.

Elsewhere nothing changes.
"""

import os
import pwd
import sys

from ..protocol.aead import native_module

CAP_DAC_READ_SEARCH = 2
CAP_NET_ADMIN = 12
KEPT = (CAP_NET_ADMIN, CAP_DAC_READ_SEARCH)
_PR_SET_KEEPCAPS = 8
_CAP_VERSION_3 = 0x20080522
DEFAULT_USER = "nobody"

# The start-up warning on FreeBSD with `user` unset: why root is kept, in one line.
STAYING_ROOT_FREEBSD = (
    "running as root: config key 'user' is not set, and FreeBSD has no capabilities "
    "to keep across a switch, so an unprivileged daemon could re-read on reload only "
    "configuration and key files its user owns, and could not destroy its interface "
    "at exit; set 'user' to an account owning them (mode 0600) to drop root")


def platform() -> str:
    """Which way privileges are dropped here: "linux", "freebsd" or "other"."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform.startswith("freebsd"):
        return "freebsd"
    return "other"


def _syscalls():
    """(keep_caps(on), set_caps(mask)), each raising OSError: from the native extension,
    or through ctypes without it (ctypes costs ~0.5 MB of resident memory for good)."""
    fast = native_module()
    if fast is not None:
        return fast.keep_caps, fast.set_caps
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    def check(result):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def keep_caps(on):
        check(libc.prctl(_PR_SET_KEEPCAPS, int(on), 0, 0, 0))

    def set_caps(mask):
        header, data = Header(_CAP_VERSION_3, 0), (Data * 2)()
        data[0].effective = data[0].permitted = mask
        check(libc.capset(ctypes.byref(header), ctypes.byref(data)))

    return keep_caps, set_caps


class PrivilegeError(Exception):
    """One line: why privileges could not be dropped as configured."""


def target(configured: str | None):
    """The passwd entry to switch to, or None to stay as we are."""
    where = platform()
    if os.geteuid() != 0 or where == "other":
        return None
    if where == "freebsd" and not configured:
        return None  # nothing to keep a reload working with: the caller says why
    name = configured or DEFAULT_USER
    if name == "root":
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if configured:
            raise PrivilegeError(f"user '{name}' does not exist (config key 'user')") from None
        return None  # no `nobody` here: the caller warns and stays root


def drop(entry) -> None:
    """Become `entry`'s uid/gid (on Linux with only KEPT capabilities). Must run before
    any other thread starts: capabilities and credentials are per thread there. Nothing
    is handed to the new user: what the daemon writes later (the replay state) it writes
    through descriptors opened before, so the state directory stays writable by root
    alone."""
    if platform() == "freebsd":
        _drop_freebsd(entry)
        return
    keep_caps, set_caps = _syscalls()

    def check(call, what, *args):
        try:
            call(*args)
        except OSError as e:
            raise PrivilegeError(f"dropping privileges: {what}: {e.strerror}") from None

    check(keep_caps, "prctl(PR_SET_KEEPCAPS)", True)
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as e:
        raise PrivilegeError(f"dropping privileges: switching to '{entry.pw_name}': "
                             f"{e.strerror} (needs CAP_SETUID and CAP_SETGID)") from None
    mask = 0
    for cap in KEPT:
        mask |= 1 << cap
    check(set_caps, "capset", mask)
    check(keep_caps, "prctl(PR_SET_KEEPCAPS, 0)", False)


def _drop_freebsd(entry) -> None:
    """setgroups([gid]), setgid, setuid: for good, nothing kept.

    setgroups first, while still root.  [gid] rather than []: before FreeBSD 15 the
    first element of the group list is the effective gid (kern_setgroups() in
    sys/kern/kern_prot.c keeps the old one for an empty list), so this leaves exactly
    the user's group either way.  setuid(2) as root sets the real, effective and saved
    uids (sys_setuid()), so root cannot be regained; the check below makes sure.
    """
    try:
        os.setgroups([entry.pw_gid])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as e:
        raise PrivilegeError(f"dropping privileges: switching to '{entry.pw_name}': "
                             f"{e.strerror}") from None
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (
            entry.pw_uid, entry.pw_uid, entry.pw_gid, entry.pw_gid):
        raise PrivilegeError(f"dropping privileges: still not only '{entry.pw_name}' "
                             "after setuid")
