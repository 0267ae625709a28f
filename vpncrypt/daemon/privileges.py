"""Dropping root once the TUN device, the sockets and the control socket exist.

The daemon switches to an unprivileged user (config `user`, default `nobody` when that
account exists; `user = root` keeps root) and keeps exactly two capabilities:
CAP_NET_ADMIN (interface work on a future reload) and CAP_DAC_READ_SEARCH (re-reading
the root-only configuration and key files on SIGHUP). Linux only; elsewhere it says so
and stays as it is.
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
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return None
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
    """Become `entry`'s uid/gid with only KEPT capabilities. Must run before any other
    thread starts: capabilities are per thread. Nothing is handed to the new user: what
    the daemon writes later (the replay state) it writes through descriptors opened
    before, so the state directory stays writable by root alone."""
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
