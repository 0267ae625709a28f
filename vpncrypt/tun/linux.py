"""Linux backend: /dev/net/tun devices, and interface configuration through a helper process.

The TUN device is opened with IFF_TUN|IFF_NO_PI, so each read() or write() on its fd is
exactly one bare IP packet.  The interface is *not* made persistent: the kernel deletes it
(with its addresses and routes) when the last fd attached to it is closed, so a daemon
that crashes or is killed leaves no interface behind.  If a persistent TUN of the same
name already exists (``ip tuntap add dev vpn0 mode tun user vpncrypt``), open_tun()
attaches to it instead; that interface survives close(), and it is how an unprivileged
daemon can be given a TUN (configuration itself still needs CAP_NET_ADMIN).

Configuring addresses, MTU and routes needs rtnetlink, which we do with pyroute2 (the
MTU alone is an ioctl, and the underlay MTU a socket option: neither needs it).
Importing pyroute2 costs about 20 MB of resident memory that is never returned, while
the daemon's whole steady-state budget is 16 MB.  So this module never imports it: it
runs ``python -m vpncrypt.tun.netlink`` (see that module) as a short-lived child, sends
it one request on stdin and turns its one-line stderr report into a TunError.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import marshal
import os
import platform
import select
import signal
import socket
import struct
import sys
import time

from . import IPInterface, IPNetwork, TunDevice, TunError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["LinuxTun", "configure_interface", "open_tun", "set_mtu", "underlay_mtu"]

TUN_PATH = "/dev/net/tun"



def _iow(kind: str, nr: int, size: int, machine: str | None = None) -> int:
    """Linux's _IOW(kind, nr, size) for this CPU. MIPS, PowerPC, SPARC and Alpha put
    the direction in 3 bits with "write" = 4 (<asm/ioctl.h> of those architectures);
    the generic encoding (x86, ARM, s390) has 2 bits with write = 1. The generic number
    on a MIPS router is an unknown ioctl (found by scripts/cross-test.sh mipsel)."""
    machine = (machine or platform.machine()).lower()
    if machine.startswith(("mips", "ppc", "powerpc", "sparc", "alpha")):
        write, size_bits = 4, 13
    else:
        write, size_bits = 1, 14
    return (write << (16 + size_bits)) | (size << 16) | (ord(kind) << 8) | nr


# <linux/if_tun.h>: _IOW('T', 202, int), and the ifr_flags bits we use.
TUNSETIFF = _iow("T", 202, 4)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# Offloads for the native loop: with IFF_VNET_HDR each packet on the fd has a 10-byte
# struct virtio_net_hdr in front; TUNSETOFFLOAD (_IOW('T', 208, unsigned int)) then lets
# the kernel hand over TCP super-packets (TSO) and packets whose checksum is left to us.
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = _iow("T", 208, 4)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x02, 0x04, 0x20, 0x40
VNET_HDR_LEN = 10
# A legacy TUN's virtio_net_hdr is in the kernel's byte order, and the native loop writes
# it in the CPU's. Under qemu-user a big-endian CPU meets a little-endian kernel, which
# refused every TCP segment so written (scripts/cross-test.sh s390x); on a real
# big-endian router the two agree, but nothing here can show it. Until a big-endian
# kernel has been tested, big-endian CPUs run without the TUN offloads (and so without
# UDP GSO/GRO, which ride on them); the start-up line says so.
OFFLOADS_BYTE_ORDER_KNOWN = sys.byteorder == "little"
IFNAMSIZ = 16  # including the terminating NUL, hence 15 usable bytes

# struct ifreq: char ifr_name[16]; then a 24-byte union whose first member we use as
# `short ifr_flags`.  The kernel copies all 40 bytes, so the padding must be there.
_IFREQ = struct.Struct("16sH22x")
# The same with `int ifr_mtu`; <linux/sockios.h> numbers, the same on every CPU.
_IFREQ_INT = struct.Struct("16si20x")
SIOCGIFFLAGS, SIOCGIFMTU, SIOCSIFMTU = 0x8913, 0x8921, 0x8922

# <linux/in.h> IP_MTU, <linux/in6.h> IPV6_MTU (not in every build's socket module);
# <linux/if.h> interface flags (SIOCGIFFLAGS has IFF_RUNNING: operationally up).
_IP_MTU, _IPV6_MTU = getattr(socket, "IP_MTU", 14), getattr(socket, "IPV6_MTU", 24)
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40
DEFAULT_MTU = 1500

# Largest IPv4/IPv6 packet a TUN can hand us (total-length/payload-length fields are
# 16 bits; TUN never carries jumbograms).  Reading less would silently truncate.
_READ_SIZE = 65535

# Generous: the helper's cost is interpreter start-up plus importing pyroute2, which
# can take seconds on a small router CPU.
_HELPER_TIMEOUT = 60.0

# The directory holding the `vpncrypt` package, passed to the helper so it imports the
# same code as we run, even when vpncrypt is not installed (a checkout, a test run).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LinuxTun(TunDevice):
    """An open Linux TUN device (see `vpncrypt.tun.TunDevice`)."""

    # IFF_NO_PI: no struct tun_pi in front of packets. frame_prefix is VNET_HDR_LEN when
    # the device was opened for offloads (the native loop reads and writes the header).
    __slots__ = ("name", "fd", "frame_prefix", "offloads")

    def __init__(self, fd: int, name: str, offloads: tuple[str, ...] | None = None) -> None:
        self.fd = fd
        self.name = name
        self.offloads = offloads or ()  # of "vnet-hdr", "csum", "tso4", "tso6", "uso4", "uso6"
        self.frame_prefix = VNET_HDR_LEN if offloads else 0

    def read(self) -> bytes:
        return os.read(self.fd, _READ_SIZE + self.frame_prefix)[self.frame_prefix :]

    def write(self, packet: bytes) -> None:
        # A TUN write is all-or-nothing; a packet the kernel cannot parse as IPv4/IPv6
        # raises OSError(EINVAL), which the caller treats as a dropped packet. With a
        # virtio header, all zeros means: no segmentation, checksums complete.
        os.write(self.fd, bytes(self.frame_prefix) + packet if self.frame_prefix else packet)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> LinuxTun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"fd={self.fd}" if self.fd >= 0 else "closed"
        return f"<LinuxTun {self.name!r} {state}>"


def validate_name(name: str, *, allow_pattern: bool = True) -> bytes:
    """Check `name` the way the kernel's dev_valid_name() would; return it encoded.

    Control characters are refused too: the kernel allows them, but they are never what
    an operator meant and would make log lines unreadable.  With `allow_pattern`, one
    '%d' is accepted and the kernel substitutes the first free number.
    """
    if not isinstance(name, str) or not name:
        raise TunError("interface name is empty")
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        unit = "characters" if name.isascii() else "bytes"
        raise TunError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} {unit}")
    if name in (".", ".."):
        raise TunError(f"interface name {name!r} is not allowed")
    for ch in name:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            raise TunError(f"interface name {name!r} contains {ch!r}, which is not allowed")
    if "%" in name:
        # The kernel accepts exactly one '%', and only as "%d".
        if not allow_pattern:
            raise TunError(
                f"interface name {name!r} is a pattern; use the name open_tun() returned"
            )
        pos = name.index("%")
        if name[pos + 1 : pos + 2] != "d" or "%" in name[pos + 2 :]:
            raise TunError(f"interface name {name!r}: '%' is only allowed once, as '%d'")
    return raw


def open_tun(name: str, offload: bool = False) -> LinuxTun:
    """Create the TUN interface `name` (or attach to a persistent one) and return it.

    `name` may contain one '%d'; the returned device's `name` is the one the kernel chose.
    The interface is down and unconfigured; see configure_interface(). With `offload`,
    the device carries a virtio_net_hdr per packet and the kernel is asked for checksum
    and TCP segmentation offload (whatever it refuses is left out of `offloads`).
    """
    raw = validate_name(name)
    offload = offload and OFFLOADS_BYTE_ORDER_KNOWN
    try:
        # Non-blocking for the event loop; close-on-exec so helpers we spawn (and
        # anything else) cannot keep the interface alive after we close it.
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(_open_error(exc)) from exc
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        reply = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, flags))
    except OSError as exc:
        os.close(fd)
        raise TunError(_setiff_error(name, exc)) from exc
    actual = _IFREQ.unpack(reply)[0].split(b"\0", 1)[0].decode(errors="replace")
    return LinuxTun(fd, actual, _set_offloads(fd) if offload else None)


def _set_offloads(fd: int) -> tuple[str, ...]:
    # Older kernels may refuse USO (before 6.2), TSO6 or all of it; the header stays.
    tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    for bits, names in ((tso | TUN_F_USO4 | TUN_F_USO6, ("csum", "tso4", "tso6", "uso4", "uso6")),
                        (tso, ("csum", "tso4", "tso6")),
                        (TUN_F_CSUM | TUN_F_TSO4, ("csum", "tso4")),
                        (TUN_F_CSUM, ("csum",))):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, bits)
            return ("vnet-hdr", *names)
        except OSError:
            continue
    return ("vnet-hdr",)


def _open_error(exc: OSError) -> str:
    what = f"cannot open {TUN_PATH}: {exc.strerror}"
    if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return f"{what} (load the 'tun' kernel module: modprobe tun)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{what} (run as root or with CAP_NET_ADMIN)"
    return what


def _setiff_error(name: str, exc: OSError) -> str:
    if exc.errno == errno.EPERM:
        return f"creating TUN {name!r} needs CAP_NET_ADMIN (run as root)"
    if exc.errno == errno.EBUSY:
        # Non-persistent TUNs take one fd; this one is attached to somebody else's.
        return f"TUN {name!r} is already open elsewhere (another vpncrypt running?)"
    if exc.errno == errno.EINVAL:
        # Name already taken by a non-TUN interface (or a TAP, or a multi-queue TUN).
        return f"cannot create TUN {name!r}: an interface of another kind already has that name"
    return f"cannot create TUN {name!r}: {exc.strerror}"


def configure_interface(
    name: str,
    addresses: Sequence[IPInterface],
    mtu: int,
    routes: Sequence[IPNetwork],
) -> None:
    """Set `mtu`, add `addresses`, bring `name` up and route `routes` through it.

    Addresses are added with "replace" semantics and IPv6 ones with IFA_F_NODAD (usable
    at once, no duplicate-address-detection delay), so re-running this on an interface
    that is already configured is harmless.  A route that already exists through this
    interface (typically the connected prefix of one of the addresses) is accepted; one
    through another interface is an error.  Runs in a helper process; see module docs.
    """
    validate_name(name, allow_pattern=False)
    try:
        addrs = [ipaddress.ip_interface(a) for a in addresses]
        nets = [ipaddress.ip_network(r) for r in routes]
    except ValueError as exc:
        raise TunError(f"configuring {name!r}: {exc}") from exc
    _check_mtu(name, mtu, (*addrs, *nets))
    _run_helper(
        {
            "op": "configure",
            "ifname": name,
            "mtu": mtu,
            "addresses": [str(a) for a in addrs],
            "routes": [str(n) for n in nets],
        }
    )


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU of `name` with SIOCSIFMTU, a plain ioctl: what the daemon does itself
    when addresses and routes are someone else's (``configure_interface = no``: netifd on
    OpenWrt), so that path needs neither netlink nor pyroute2."""
    raw = validate_name(name, allow_pattern=False)
    _check_mtu(name, mtu, ())
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock, SIOCSIFMTU, _IFREQ_INT.pack(raw, mtu))
    except OSError as exc:
        raise TunError(f"setting MTU {mtu} on {name!r}: {exc.strerror}") from exc


def _check_mtu(name: str, mtu: int, addrs_and_nets: Sequence) -> None:
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise TunError(f"configuring {name!r}: MTU {mtu!r} is outside 68..65535")
    if mtu < 1280 and any(x.version == 6 for x in addrs_and_nets):
        # The kernel silently disables IPv6 on an interface below the IPv6 minimum MTU.
        raise TunError(f"configuring {name!r}: MTU {mtu} is below 1280, the minimum for IPv6")


def underlay_mtu(dest: str | None) -> int:
    """MTU of the path to `dest`: the kernel's own answer for a socket connected there
    (IP_MTU/IPV6_MTU: the route's MTU if it has one or a learnt path MTU, else the
    interface's), so no netlink and no helper are needed.

    With `dest` None, the largest MTU among interfaces that are up (administratively and
    operationally: IFF_UP and IFF_RUNNING) and not loopback; 1500 if there is none.  A
    local address of this host is reached through `lo`, whose MTU is then the answer.
    """
    if dest is None:
        return _largest_up_mtu()
    try:
        ip = ipaddress.ip_address(dest)
    except ValueError:
        raise TunError(f"underlay MTU: {dest!r} is not an IP address") from None
    family, level, option = ((socket.AF_INET, socket.IPPROTO_IP, _IP_MTU) if ip.version == 4
                             else (socket.AF_INET6, socket.IPPROTO_IPV6, _IPV6_MTU))
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), 9))  # UDP connect: a route lookup, nothing is sent
            return sock.getsockopt(level, option)
    except OSError as exc:
        raise TunError(f"no route to {ip}: {exc.strerror}") from None


def _largest_up_mtu() -> int:
    # Names from /proc/net/dev and state by ioctl: both answer for this process's network
    # namespace, where /sys/class/net shows that of whoever mounted /sys (a chroot's bind
    # mount of the host's /sys, scripts/cross-test.sh, would report the host's links).
    try:
        with open("/proc/net/dev") as f:
            names = [line.split(":", 1)[0].strip() for line in f.readlines()[2:]]
    except OSError:
        names = []
    best = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            raw = name.encode()
            try:
                flags = _IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ.pack(raw, 0)))[1]
                mtu = _IFREQ_INT.unpack(fcntl.ioctl(sock, SIOCGIFMTU, _IFREQ_INT.pack(raw, 0)))[1]
            except OSError:
                continue  # gone meanwhile
            if flags & _IFF_LOOPBACK or flags & (_IFF_UP | _IFF_RUNNING) != _IFF_UP | _IFF_RUNNING:
                continue
            best = max(best, mtu)
    return best or DEFAULT_MTU


def _run_helper(request: dict[str, Any]) -> dict[str, Any]:
    """Run `python -m vpncrypt.tun.netlink` on `request`; return its reply (both in the
    marshal format, see there).

    os.posix_spawn and a poll loop rather than subprocess.run: subprocess (with locale)
    costs 0.2-0.7 MB of resident memory for the daemon's whole life, for one helper run
    at start-up."""

    if not sys.executable:
        raise TunError("cannot find the Python interpreter to run the interface helper")
    env = dict(os.environ)
    # The helper runs in "/" (it changes there itself, first thing): relative entries of
    # an inherited PYTHONPATH are resolved there too, never in our working directory.
    inherited = [os.path.join("/", p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *inherited])
    # -P: we are usually root, and `-m` would otherwise put the current directory
    # (possibly world-writable) first on the module path.
    argv = [sys.executable, "-P", "-m", "vpncrypt.tun.netlink"]
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = _pipe(), _pipe(), _pipe()
    owned = {in_r, in_w, out_r, out_w, err_r, err_w}  # what is left to close
    try:
        try:
            pid = os.posix_spawn(
                sys.executable, argv, env,
                file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0),
                              (os.POSIX_SPAWN_DUP2, out_w, 1),
                              (os.POSIX_SPAWN_DUP2, err_w, 2)],
                # What subprocess's restore_signals does: Python ignores these.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as exc:
            raise TunError(
                f"cannot run interface helper {sys.executable}: {exc.strerror}") from exc
        for fd in (in_r, out_w, err_w):  # the child's ends: EOF once the child closes them
            owned.discard(fd)
            os.close(fd)
        try:
            out, err, status = _communicate(pid, marshal.dumps(request), in_w, out_r,
                                            err_r, owned)
        except BaseException:  # as subprocess.run does: leave no helper behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
    finally:
        for fd in owned:
            os.close(fd)
    if status is None:
        raise TunError(f"interface helper did not finish within {_HELPER_TIMEOUT:.0f} s")
    if status != 0:
        raise TunError(_helper_failure(status, err.decode(errors="replace")))
    try:
        reply = marshal.loads(out)
    except (EOFError, ValueError, TypeError):
        reply = None
    if not isinstance(reply, dict):
        raise TunError("interface helper returned malformed output")
    return reply


def _pipe() -> tuple[int, int]:
    """os.pipe() (close-on-exec) with both ends above 2, so that duplicating them onto the
    child's 0-2 never finds one already there (a daemon started with stdio closed)."""
    ends = []
    for fd in os.pipe():
        if fd <= 2:
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = moved
        ends.append(fd)
    return ends[0], ends[1]


def _communicate(pid: int, data: bytes, stdin: int, stdout: int, stderr: int, owned: set):
    """Write `data` to the child's stdin (closed then, and dropped from `owned`), read its
    stdout and stderr until both close, and reap it: (stdout, stderr, returncode as
    subprocess gives it). Returncode None when the child did not finish within
    _HELPER_TIMEOUT: it is then killed and reaped."""
    deadline = time.monotonic() + _HELPER_TIMEOUT
    poller = select.poll()
    poller.register(stdin, select.POLLOUT)
    poller.register(stdout, select.POLLIN)
    poller.register(stderr, select.POLLIN)
    chunks = {stdout: [], stderr: []}
    pending = {stdin, stdout, stderr}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return b"", b"", None
        if not pending:  # both outputs closed: wait for the exit, still within the time
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return (b"".join(chunks[stdout]), b"".join(chunks[stderr]),
                        os.waitstatus_to_exitcode(status))
            time.sleep(min(left, 0.01))
            continue
        for fd, _ in poller.poll(left * 1000):
            if fd == stdin:
                try:  # POLLOUT: PIPE_BUF bytes fit without blocking
                    data = data[os.write(stdin, data[:select.PIPE_BUF]):]
                except BrokenPipeError:  # exited without reading all: its status says why
                    data = b""
                if data:
                    continue
                chunk = b""
            else:
                chunk = os.read(fd, 65536)
                chunks[fd].append(chunk)
            if not chunk:
                poller.unregister(fd)
                pending.discard(fd)
                if fd == stdin:
                    owned.discard(fd)
                    os.close(fd)


def _helper_failure(returncode: int, stderr: str) -> str:
    # The helper's contract is one line on stderr; if something else got there (an
    # interpreter crash, a warning) the last line is still the most telling one.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1]
    if returncode < 0:
        return f"interface helper was killed by signal {-returncode}"
    return f"interface helper failed with exit status {returncode}"
