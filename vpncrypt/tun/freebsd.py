"""FreeBSD backend: tun(4) devices, configured with ifconfig(8) and route(8).

Not run on FreeBSD by us: everything here that touches the kernel is written from
FreeBSD's sources and manual pages and is unit-tested on Linux against a model of the
kernel only (tests/test_tun_freebsd.py).  The sources are cited next to each call as
path + function; they were read from the freebsd/freebsd-src copies held by our search
index (main-branch and FreeBSD 14 snapshots, not one pinned releng/14 commit), and each
behaviour relied on is long-standing, so it holds on FreeBSD 14.

The device
    open_tun(NAME) opens the cloning device /dev/tun, which creates a fresh tunN
    interface, and renames it to NAME with ``ifconfig tunN name NAME``.  A NAME of the
    form tunN opens /dev/tunN directly (devfs creates it on first open).  The fd is put
    in TUNSIFHEAD mode, so every packet on it is preceded by a 4-byte big-endian address
    family (AF_INET = 2, AF_INET6 = 28 on FreeBSD); read() strips that word and write()
    adds it, so callers see bare IP packets exactly as on Linux.

    TUNSIFMODE switches the interface from point-to-point (what tuncreate() in
    sys/net/if_tuntap.c gives a tun) to broadcast, as wireguard-go does on FreeBSD
    (tun/tun_freebsd.go, CreateTUN).  A point-to-point interface needs a destination
    with every IPv4 address: in_aifaddr_ioctl() in sys/netinet/in.c refuses one without
    it with EDESTADDRREQ, and our configuration has prefixes, not peers.  A tun stays a
    layer-3 interface either way (IFT_PPP, tunoutput() never resolves link addresses).

Lifetime
    Unlike a non-persistent Linux TUN, a FreeBSD tun interface outlives the fd: closing
    it only takes the interface down and drops its addresses (tundtor() in
    if_tuntap.c).  So close() destroys the interface if this open_tun() created it.  One
    left behind by a crash (daemon(8) restarts us, or the rc.d script's stop destroys
    it) is reopened through the /dev/NAME alias FreeBSD creates when a tun interface is
    renamed (tunrename()).  An interface that existed before open_tun() (``ifconfig tun
    create name vpn0``) is left alone by close(), like a persistent TUN on Linux.

Configuration
    Every external command goes through run_command(), the only place this module
    starts a process, so tests can capture the exact command lines.  Addresses and the
    MTU are set with ifconfig, routes with ``route add``.  The kernel installs the
    connected prefix of every address itself: in_aifaddr_ioctl() calls in_addprefix()
    for IPv4 (a /32 on a broadcast interface gets only its loopback route), and
    in6_control() adds the on-link prefix with nd6_prelist_add() for IPv6 (none for a
    /128), so configure_interface() adds no route for those prefixes.  IPv6 link-local
    addresses are switched off (-auto_linklocal) like on Linux, and DAD too (no_dad): a
    tunnel has no neighbours.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import socket
import stat
import struct
import subprocess
from collections.abc import Sequence
from typing import ClassVar

from . import IPInterface, IPNetwork, TunDevice, TunError

__all__ = [
    "FreeBSDTun",
    "configure_interface",
    "open_tun",
    "set_mtu",
    "run_command",
    "underlay_mtu",
]

# --------------------------------------------------------------------------- constants

# sys/sys/ioccom.h (_IOC, _IOW, _IOR): a request is
#   inout | (sizeof(arg) & IOCPARM_MASK) << 16 | group << 8 | num
# with IOCPARM_MASK = (1 << 13) - 1, IOC_IN 0x80000000 (copied in), IOC_OUT 0x40000000.
IOCPARM_MASK = (1 << 13) - 1
IOC_OUT = 0x40000000  # the kernel copies the argument out to us
IOC_IN = 0x80000000  # the kernel copies the argument in from us


def _IOC(inout: int, group: str, num: int, length: int) -> int:
    return inout | ((length & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


def _IOW(group: str, num: int, length: int) -> int:
    return _IOC(IOC_IN, group, num, length)


def _IOR(group: str, num: int, length: int) -> int:
    return _IOC(IOC_OUT, group, num, length)


SIZEOF_INT = 4
# struct ifreq (sys/net/if.h): char ifr_name[IFNAMSIZ = 16] and a union whose largest
# members are a struct sockaddr (16 bytes) and struct ifreq_buffer (16 on LP64, 8 on
# 32-bit): 32 bytes on every FreeBSD platform.
SIZEOF_IFREQ = 32

# sys/net/if_tun.h, computed from the _IOW/_IOR definitions above:
#   TUNSIFMODE  _IOW('t', 94, int)            = 0x80000000 | 4 << 16 | 0x74 << 8 | 94 = 0x8004745e
#   TUNSIFHEAD  _IOW('t', 96, int)            = 0x80000000 | 4 << 16 | 0x74 << 8 | 96 = 0x80047460
#   TUNGIFNAME  _IOR('t', 93, struct ifreq)   = 0x40000000 | 32 << 16 | 0x74 << 8 | 93 = 0x4020745d
# (the same numbers wireguard-go's tun/tun_freebsd.go uses).
TUNSIFMODE = _IOW("t", 94, SIZEOF_INT)
TUNSIFHEAD = _IOW("t", 96, SIZEOF_INT)
TUNGIFNAME = _IOR("t", 93, SIZEOF_IFREQ)

# sys/net/if.h
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_POINTOPOINT = 0x10  # the tun default, which we leave (see the module docstring)
IFF_MULTICAST = 0x8000
IFNAMSIZ = 16  # including the terminating NUL
# The mode TUNSIFMODE sets; tunioctl() in if_tuntap.c takes IFF_BROADCAST or
# IFF_POINTOPOINT, either with IFF_MULTICAST, and only while the interface is down.
TUN_MODE = IFF_BROADCAST | IFF_MULTICAST

# sys/sys/socket.h on FreeBSD.  Not socket.AF_INET6: that is the *running* platform's
# value (10 on Linux, where the tests run), and the header carries FreeBSD's.
AF_INET = 2
AF_INET6 = 28

# sys/net/if_var.h IF_MINMTU / IF_MAXMTU: the range ifhwioctl() (sys/net/if.c,
# SIOCSIFMTU) accepts for any interface.  sys/net/if_tun.h TUNMRU (65535 in FreeBSD 14)
# bounds a tunwrite() in if_tuntap.c to TUNMRU + the family word, so it is no tighter.
IF_MINMTU = 72
IF_MAXMTU = 65535
TUNMRU = 65535

FRAME_PREFIX = 4
_AF_HEADER = {4: struct.pack(">I", AF_INET), 6: struct.pack(">I", AF_INET6)}
_AF_VERSION = {AF_INET: 4, AF_INET6: 6}

# What one read() asks for: the largest IP packet plus the family word.
_READ_SIZE = 65535 + FRAME_PREFIX
# Frames of unknown family read back to back before read() gives up for this round.
_MAX_SKIPPED = 64

# ifconfig(8) and route(8) of the base system, by absolute path (run_command() also
# sets PATH and LC_ALL=C, so the messages we pass on are the C locale's).
IFCONFIG = "/sbin/ifconfig"
ROUTE = "/sbin/route"
DEV_DIR = "/dev"
_COMMAND_TIMEOUT = 30.0

_UNIT_NAME = re.compile(r"tun[0-9]{1,5}")
_RESERVED_NAMES = frozenset({"tun", "tap", "vmnet"})  # the cloners' own device names

# --------------------------------------------------------------------------- external commands


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one external command; the only place this module starts a process.

    Tests replace it.  Never raises for a non-zero exit status: callers decide.
    """
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_COMMAND_TIMEOUT,
            env={"PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "LC_ALL": "C"},
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise TunError(f"{argv[0]} did not finish within {_COMMAND_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise TunError(f"cannot run {argv[0]}: {exc.strerror}") from exc


def _check(argv: Sequence[str], what: str) -> str:
    """Run `argv`; return its stdout, or raise TunError naming `what` and the reason."""
    proc = run_command(argv)
    if proc.returncode != 0:
        raise TunError(f"{what}: {_reason(proc)}")
    return proc.stdout


def _reason(proc: subprocess.CompletedProcess[str]) -> str:
    # ifconfig and route print one line such as "ifconfig: ioctl (SIOCAIFADDR): File
    # exists"; the last non-empty line is the most telling one.
    lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    if lines:
        text = lines[-1]
        if "Operation not permitted" in text or "Permission denied" in text:
            text += " (run as root)"
        return text
    return f"{proc.args[0] if proc.args else 'command'} exited with status {proc.returncode}"


# --------------------------------------------------------------------------- the device


class FreeBSDTun(TunDevice):
    """An open FreeBSD tun(4) device in TUNSIFHEAD mode (see `vpncrypt.tun.TunDevice`)."""

    frame_prefix: ClassVar[int] = FRAME_PREFIX  # the address-family word
    offloads: ClassVar[tuple[str, ...]] = ()  # tun(4) has no segmentation offload

    __slots__ = ("name", "fd", "dropped", "_owned")

    def __init__(self, fd: int, name: str, *, owned: bool = False) -> None:
        self.fd = fd
        self.name = name
        #: Frames read and thrown away: too short, or an address family that is not
        #: IPv4/IPv6, or one that does not match the packet's IP version.
        self.dropped = 0
        self._owned = owned

    def read(self) -> bytes:
        """Return one bare IP packet; raise BlockingIOError if none is queued.

        Frames that do not carry IPv4 or IPv6 are counted in `dropped` and skipped,
        never returned: the caller only ever sees IP packets.
        """
        for _ in range(_MAX_SKIPPED):
            frame = os.read(self.fd, _READ_SIZE)  # BlockingIOError when empty
            packet = _strip(frame)
            if packet is not None:
                return packet
            self.dropped += 1
        # Only junk was queued; the fd stays readable if more is, so we are called again.
        raise BlockingIOError(errno.EAGAIN, "no IP packet queued")

    def write(self, packet: bytes) -> None:
        """Hand one IP packet (IPv4 or IPv6, starting at the IP header) to the kernel.

        Raises OSError(EINVAL) for anything else, as a Linux TUN write would, which the
        caller treats as a dropped packet.
        """
        header = _AF_HEADER.get(packet[0] >> 4) if len(packet) else None
        if header is None:
            raise OSError(errno.EINVAL, "not an IPv4 or IPv6 packet")
        # One writev() is one packet to tun(4); no copy of the packet to prepend 4 bytes.
        os.writev(self.fd, (header, packet))

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close the fd and destroy the interface if open_tun() created it.  Idempotent."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        os.close(fd)
        if self._owned:
            self._owned = False
            # Best effort: at shutdown there is nobody left to report a failure to, and
            # the rc.d script's stop destroys a leftover interface too.
            try:
                # ifconfig(8) `destroy`: SIOCIFDESTROY, tun_clone_destroy() in
                # sys/net/if_tuntap.c.  Needs root: after a privilege drop it fails,
                # and the rc.d script's stop destroys the interface instead.
                run_command([IFCONFIG, self.name, "destroy"])
            except TunError:
                pass

    def __enter__(self) -> FreeBSDTun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"fd={self.fd}" if self.fd >= 0 else "closed"
        return f"<FreeBSDTun {self.name!r} {state}>"


def _strip(frame: bytes) -> bytes | None:
    """The IP packet in a TUNSIFHEAD frame, or None if the frame is not IPv4/IPv6."""
    if len(frame) <= FRAME_PREFIX:
        return None
    family = int.from_bytes(frame[:FRAME_PREFIX], "big")
    if _AF_VERSION.get(family) != frame[FRAME_PREFIX] >> 4:
        return None
    return frame[FRAME_PREFIX:]


# --------------------------------------------------------------------------- opening


def validate_name(name: str) -> bytes:
    """Check an interface name for FreeBSD and for our use of it; return it encoded.

    On top of the kernel's limit (15 bytes), a name may not start with '-' (it is an
    argument to ifconfig) and may not be one that devfs or the tun cloner already use.
    """
    if not isinstance(name, str) or not name:
        raise TunError("interface name is empty")
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        unit = "characters" if name.isascii() else "bytes"
        raise TunError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} {unit}")
    if name in (".", "..") or name.startswith("-") or name in _RESERVED_NAMES:
        raise TunError(f"interface name {name!r} is not allowed")
    for ch in name:
        if ch in "/:%" or ch.isspace() or not ch.isprintable():
            raise TunError(f"interface name {name!r} contains {ch!r}, which is not allowed")
    return raw


def interface_exists(name: str) -> bool:
    """Whether an interface called `name` exists (any kind)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_device(path: str) -> int:
    try:
        # Non-blocking for the event loop; close-on-exec so the commands we run do not
        # hold the device open.
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        what = f"cannot open {path}: {exc.strerror}"
        if exc.errno in (errno.ENOENT, errno.ENXIO, errno.ENODEV):
            what += " (load the tun driver: kldload if_tun)"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            what += " (run as root)"
        elif exc.errno == errno.EBUSY:
            what += " (already open elsewhere; another vpncrypt running?)"
        raise TunError(what) from exc


def _ioctl_int(
    fd: int, request: int, value: int, what: str, hints: dict[int, str] | None = None
) -> None:
    try:
        fcntl.ioctl(fd, request, struct.pack("i", value))
    except OSError as exc:
        hint = (hints or {}).get(exc.errno, "")
        raise TunError(f"{what}: {exc.strerror}{hint}") from exc


def _device_name(fd: int) -> str:
    # TUNGIFNAME: tunioctl() in sys/net/if_tuntap.c copies the interface's if_xname
    # into ifr_name (FreeBSD 12 and later).
    try:
        reply = fcntl.ioctl(fd, TUNGIFNAME, bytes(SIZEOF_IFREQ))
    except OSError as exc:
        raise TunError(f"cannot read the tun interface name (TUNGIFNAME): {exc.strerror}") from exc
    return bytes(reply[:IFNAMSIZ]).split(b"\0", 1)[0].decode(errors="replace")


def open_tun(name: str, offload: bool = False) -> FreeBSDTun:
    """Create (or reopen) the tun interface `name` and return it open, unconfigured.

    `offload` is accepted for the common interface and ignored: tun(4) hands over
    packets one by one with complete checksums."""
    validate_name(name)
    existed = interface_exists(name)
    cloned = False
    if _UNIT_NAME.fullmatch(name):
        fd = _open_device(os.path.join(DEV_DIR, name))
    elif existed:
        # Left over from an earlier run (or made by the administrator): a renamed tun
        # interface has a /dev alias of its new name.  Only open it if it is a device
        # node, and below only keep it if it turns out to be that very interface.
        path = os.path.join(DEV_DIR, name)
        try:
            is_device = stat.S_ISCHR(os.stat(path).st_mode)
        except OSError:
            is_device = False
        if not is_device:
            raise TunError(
                f"cannot create tun {name!r}: an interface of another kind already has that name"
            )
        fd = _open_device(path)
    else:
        fd = _open_device(os.path.join(DEV_DIR, "tun"))
        cloned = True
    kernel_name = name
    try:
        kernel_name = _device_name(fd)
        if not cloned and kernel_name != name:
            raise TunError(
                f"cannot use {name!r}: {DEV_DIR}/{name} is the device of interface "
                f"{kernel_name!r}"
            )
        # TUNSIFMODE: tunioctl() in sys/net/if_tuntap.c replaces the BROADCAST,
        # POINTOPOINT and MULTICAST flags with ours, and refuses (EBUSY) while the
        # interface is up.  Broadcast, so addresses need no destination (module docstring).
        _ioctl_int(fd, TUNSIFMODE, TUN_MODE, f"setting {name!r} to broadcast mode",
                   {errno.EBUSY: f" (the interface is up: ifconfig {name} down, then start again)"})
        # TUNSIFHEAD: tunioctl() sets TUN_IFHEAD; tunoutput() then prepends the family
        # word and tunwrite_l3() reads it (without it only IPv4 passes).
        _ioctl_int(fd, TUNSIFHEAD, 1, f"enabling the address-family header on {name!r}")
        if cloned and kernel_name != name:
            # ifconfig(8) `name`: setifname() in sbin/ifconfig/ifconfig.c, SIOCSIFNAME;
            # tunrename() in if_tuntap.c then makes the /dev/NAME alias we reopen by.
            _check([IFCONFIG, kernel_name, "name", name], f"renaming {kernel_name} to {name!r}")
    except BaseException:
        os.close(fd)
        if cloned:
            # Do not leave the fresh tunN behind (whether or not the rename happened).
            for candidate in (name, kernel_name):
                if interface_exists(candidate):
                    try:
                        # ifconfig(8) `destroy`: SIOCIFDESTROY, tun_clone_destroy().
                        run_command([IFCONFIG, candidate, "destroy"])
                    except TunError:
                        pass
                    break
        raise
    return FreeBSDTun(fd, name, owned=not existed)


# --------------------------------------------------------------------------- configuration


def configure_interface(
    name: str,
    addresses: Sequence[IPInterface],
    mtu: int,
    routes: Sequence[IPNetwork],
) -> None:
    """Set `mtu`, add `addresses`, bring `name` up and route `routes` through it.

    Meant for a freshly opened interface, but an address already there is replaced,
    not refused: in_aifaddr_ioctl() deletes an equal IPv4 address before adding it,
    and in6_update_ifa() updates an existing IPv6 one.  A route that already exists
    through this interface is accepted; one through another interface is an error, as
    on Linux.
    """
    validate_name(name)
    try:
        addrs = [ipaddress.ip_interface(a) for a in addresses]
        nets = [ipaddress.ip_network(r) for r in routes]
    except ValueError as exc:
        raise TunError(f"configuring {name!r}: {exc}") from exc
    _check_mtu(name, mtu)
    has_v6 = any(x.version == 6 for x in (*addrs, *nets))
    if mtu < 1280 and has_v6:
        raise TunError(f"configuring {name!r}: MTU {mtu} is below 1280, the minimum for IPv6")

    _set_mtu(name, mtu)

    # ifconfig(8) inet6 `-auto_linklocal`, `-ifdisabled`, `no_dad`: setnd6flags() in
    # sbin/ifconfig/af_nd6.c, SIOCGIFINFO_IN6 then SIOCSIFINFO_IN6 (nd6_ioctl() in
    # sys/netinet6/nd6.c).  Before any address and before up: in6_ifattach() would
    # otherwise add an fe80:: address whose router solicitations and MLD reports the
    # server drops as sourced outside the allowed IPs, and a broadcast interface would
    # run DAD.  setnd6flags() only warns on failure, exit status 0: read stderr too.
    inet6 = [IFCONFIG, name, "inet6", "-auto_linklocal"]
    if has_v6:
        inet6 += ["-ifdisabled", "no_dad"]
        proc = run_command(inet6)
        if proc.returncode != 0 or "INFO_IN6" in (proc.stderr or ""):
            raise TunError(f"preparing {name!r} for IPv6: {_reason(proc)}")
    else:
        run_command(inet6)  # best effort: a kernel without INET6 refuses it, harmlessly

    for iface in addrs:
        # ifconfig(8) `inet|inet6 ADDR/PLEN alias`: in_getaddr() / in6_getaddr() in
        # sbin/ifconfig/af_inet*.c parse the prefix length; the kernel side is
        # in_aifaddr_ioctl() in sys/netinet/in.c (EDESTADDRREQ on a point-to-point
        # interface without a destination, hence broadcast mode) and in6_control()
        # SIOCAIFADDR_IN6 in sys/netinet6/in6.c.  Both add the connected prefix route,
        # and the first address brings the interface up (tunifioctl() SIOCSIFADDR).
        family = "inet" if iface.version == 4 else "inet6"
        _check(
            [IFCONFIG, name, family, iface.with_prefixlen, "alias"],
            f"adding address {iface} to {name!r}",
        )

    # ifconfig(8) `up`: setifflags() in sbin/ifconfig/ifconfig.c, SIOCSIFFLAGS.  Needed
    # when there is no address to bring it up.
    _check([IFCONFIG, name, "up"], f"bringing {name!r} up")

    connected = {a.network for a in addrs if a.network.prefixlen < a.network.max_prefixlen}
    wanted: list[IPNetwork] = []
    for net in nets:
        if net not in connected and net not in wanted:
            wanted.append(net)
    for net in wanted:
        _add_route(name, net)


def set_mtu(name: str, mtu: int) -> None:
    """Set only the MTU (``configure_interface = no``): ifconfig(8) `mtu`, as above."""
    validate_name(name)
    _check_mtu(name, mtu)
    _set_mtu(name, mtu)


def _set_mtu(name: str, mtu: int) -> None:
    # ifconfig(8) `mtu`: setifmtu() in sbin/ifconfig/ifconfig.c, SIOCSIFMTU; the kernel
    # checks IF_MINMTU..IF_MAXMTU in ifhwioctl() (sys/net/if.c) and tunifioctl() stores it.
    _check([IFCONFIG, name, "mtu", str(mtu)], f"setting MTU {mtu} on {name!r}")


def _check_mtu(name: str, mtu: int) -> None:
    high = min(IF_MAXMTU, TUNMRU)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not IF_MINMTU <= mtu <= high:
        raise TunError(f"configuring {name!r}: MTU {mtu!r} is outside {IF_MINMTU}..{high}")


def _route_target(net: IPNetwork) -> list[str]:
    family = "-inet" if net.version == 4 else "-inet6"
    if net.prefixlen == net.max_prefixlen:
        return [family, "-host", str(net.network_address)]
    return [family, "-net", str(net)]


def _add_route(name: str, net: IPNetwork) -> None:
    # route(8) `add -net|-host DEST -interface NAME`: newroute() in sbin/route/route.c;
    # -interface makes the interface itself the gateway (no RTF_GATEWAY), which on a
    # tun is all a layer-3 route needs.  An existing route is refused with EEXIST.
    proc = run_command([ROUTE, "-n", "add", *_route_target(net), "-interface", name])
    if proc.returncode == 0:
        return
    text = f"{proc.stdout}\n{proc.stderr}"
    if "File exists" in text or "already in table" in text:
        via = _route_interface(net)
        if via == name:
            return  # e.g. a prefix the kernel installed itself: already right
        raise TunError(
            f"adding route {net} via {name!r}: a route to {net} already exists via "
            f"{via or 'another route'}"
        )
    raise TunError(f"adding route {net} via {name!r}: {_reason(proc)}")


_INTERFACE_LINE = re.compile(r"^\s*interface:\s*(\S+)\s*$", re.MULTILINE)


def _route_interface(net: IPNetwork) -> str | None:
    """The interface of the route `route get` reports for `net`, if any."""
    # route(8) `get`: print_getmsg() in sbin/route/route.c prints "  interface: NAME".
    proc = run_command([ROUTE, "-n", "get", *_route_target(net)])
    if proc.returncode != 0:
        return None
    mo = _INTERFACE_LINE.search(proc.stdout)
    return mo.group(1) if mo else None


# --------------------------------------------------------------------------- underlay MTU

DEFAULT_MTU = 1500
# ifconfig's first line of an interface: "em0: flags=8843<UP,BROADCAST,...> metric 0 mtu 1500"
_IFCONFIG_HEAD = re.compile(
    r"^(?P<name>[^\s:]+): flags=[0-9a-fA-F]+<(?P<flags>[^>]*)>.*?\bmtu (?P<mtu>\d+)",
    re.MULTILINE,
)


def underlay_mtu(dest: str | None) -> int:
    """MTU toward `dest` (an IP literal): the route's MTU if it has one, else its interface's.

    With `dest` None: the largest MTU among interfaces that are up and running and not
    loopback; 1500 if there is none.
    """
    if dest is None:
        # ifconfig(8) `-a`: status() in sbin/ifconfig/ifconfig.c prints
        # "NAME: flags=HEX<FLAG,...> metric N mtu N" first for each interface.
        out = _check([IFCONFIG, "-a"], "listing interfaces")
        best = 0
        for mo in _IFCONFIG_HEAD.finditer(out):
            flags = set(mo.group("flags").split(","))
            if "LOOPBACK" in flags or not {"UP", "RUNNING"} <= flags:
                continue
            best = max(best, int(mo.group("mtu")))
        return best or DEFAULT_MTU

    try:
        ip = ipaddress.ip_address(dest)
    except ValueError:
        raise TunError(f"underlay MTU: {dest!r} is not an IP address") from None
    family = "-inet" if ip.version == 4 else "-inet6"
    # route(8) `get`, as in _route_interface(); its metrics table has an "mtu" column.
    proc = run_command([ROUTE, "-n", "get", family, str(ip)])
    if proc.returncode != 0:
        raise TunError(f"no route to {ip}")
    mo = _INTERFACE_LINE.search(proc.stdout)
    if mo is None:
        raise TunError(f"no route to {ip}")
    ifname = mo.group(1)
    out = _check([IFCONFIG, ifname], f"reading interface {ifname!r}")
    head = _IFCONFIG_HEAD.search(out)
    if head is None:
        raise TunError(f"cannot read the MTU of {ifname!r}")
    mtu = int(head.group("mtu"))
    route_mtu = _route_get_mtu(proc.stdout)
    if route_mtu:
        mtu = min(mtu, route_mtu)
    return mtu


def _route_get_mtu(text: str) -> int | None:
    """The "mtu" column of the metrics table `route get` prints, if present and set."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        columns = line.split()
        if "mtu" in columns:
            values = lines[i + 1].split()
            index = columns.index("mtu")
            if len(values) == len(columns) and values[index].isdigit():
                return int(values[index]) or None
    return None
