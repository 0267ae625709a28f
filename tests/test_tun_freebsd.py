"""Unit tests of the FreeBSD TUN backend (vpncrypt.tun.freebsd), run on Linux.

FreeBSD cannot run here, so nothing in this file reaches a FreeBSD kernel and these
tests are no evidence that the backend works on FreeBSD.  The kernel, ifconfig(8) and
route(8) are MOCKED, and mocks are used only because of that.  What the tests pin down:

* the framing: a socketpair(AF_UNIX, SOCK_DGRAM) stands in for the tun(4) fd (it keeps
  packet boundaries, as a tun device does), and the tests check that read() strips and
  write() prepends the 4-byte big-endian address-family word of TUNSIFHEAD mode with
  FreeBSD's values (AF_INET = 2, AF_INET6 = 28), and that other frames are refused;
* the ioctl request numbers, against the values sys/sys/ioccom.h and sys/net/if_tun.h
  give (computed by hand below);
* the exact ioctl calls, ifconfig(8) and route(8) command lines the backend issues, and
  what they lead to in `FakeFreeBSD`, a model of the kernel state they change, written
  from FreeBSD's sources (cited at each rule): the tun flags tuncreate() sets and the
  TUNSIFMODE rules of tunioctl() (sys/net/if_tuntap.c); in_aifaddr_ioctl() refusing an
  IPv4 address without a destination on a point-to-point interface (EDESTADDRREQ) and
  adding the connected prefix route (sys/netinet/in.c); the on-link IPv6 prefix of
  in6_control() (sys/netinet6/in6.c); the MTU bounds of ifhwioctl() (sys/net/if.c).
  The canned command output is written from FreeBSD's formats, not captured.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import vpncrypt.tun as tun
from vpncrypt.tun import TunError, freebsd

IFCONFIG, ROUTE = "/sbin/ifconfig", "/sbin/route"

# Minimal but well-formed packets: only the version nibble matters to the backend.
IPV4 = bytes([0x45, 0x00, 0x00, 0x1C]) + bytes(24)
IPV6 = bytes([0x60, 0x00, 0x00, 0x00]) + bytes(36)
AF_INET_WORD = b"\x00\x00\x00\x02"
AF_INET6_WORD = b"\x00\x00\x00\x1c"

# sys/net/if.h
IFF_UP, IFF_BROADCAST, IFF_POINTOPOINT, IFF_MULTICAST = 0x1, 0x2, 0x10, 0x8000


# --------------------------------------------------------------------------- the kernel model


@dataclass
class Iface:
    name: str
    tun: bool = True
    # tuncreate() (sys/net/if_tuntap.c): a layer-3 tun starts IFF_POINTOPOINT|IFF_MULTICAST.
    flags: int = IFF_POINTOPOINT | IFF_MULTICAST
    mtu: int = 1500  # TUNMTU
    addresses: list[Any] = field(default_factory=list)
    nd6: set[str] = field(default_factory=lambda: {"auto_linklocal"})


def _fail(argv: list[str], err: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(argv, 1, "", err)


def _ok(argv: list[str], out: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(argv, 0, out, "")


class FakeFreeBSD:
    """Stands in for freebsd.run_command and the tun ioctls, answering from a model of
    the kernel state they change (see the module docstring).  Records every argv;
    `on()` scripts an answer that takes precedence over the model (error injection,
    canned output of commands the model does not cover)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.answers: list[tuple[Callable[[list[str]], bool], int, str, str]] = []
        self.ifaces: dict[str, Iface] = {}
        self.routes: dict[Any, str] = {}  # network -> interface name

    # -- state helpers

    def add_iface(self, name: str, tun: bool = True) -> Iface:
        self.ifaces[name] = iface = Iface(name, tun=tun)
        return iface

    def opened_iface(self, name: str) -> Iface:
        """An interface as open_tun() leaves it (TUNSIFMODE done, still down)."""
        iface = self.add_iface(name)
        iface.flags = IFF_BROADCAST | IFF_MULTICAST
        return iface

    def up(self, iface: Iface) -> None:
        iface.flags |= IFF_UP

    def on(self, match: Callable[[list[str]], bool], rc: int = 0, out: str = "", err: str = "") -> None:
        self.answers.append((match, rc, out, err))

    # -- the commands

    def __call__(self, argv: Any) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        for match, rc, out, err in self.answers:
            if match(argv):
                return subprocess.CompletedProcess(argv, rc, out, err)
        if argv[0] == IFCONFIG:
            return self._ifconfig(argv)
        if argv[0] == ROUTE:
            return self._route(argv)
        return _fail(argv, f"{argv[0]}: not modelled")

    def _ifconfig(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        name, args = argv[1], argv[2:]
        iface = self.ifaces.get(name)
        if iface is None:
            return _fail(argv, f"ifconfig: interface {name} does not exist")
        if args == ["destroy"]:
            del self.ifaces[name]
            self.routes = {n: i for n, i in self.routes.items() if i != name}
            return _ok(argv)
        if len(args) == 2 and args[0] == "name":
            self.ifaces[args[1]] = self.ifaces.pop(name)
            iface.name = args[1]
            return _ok(argv)
        if len(args) == 2 and args[0] == "mtu":
            # ifhwioctl() SIOCSIFMTU: IF_MINMTU (72) .. IF_MAXMTU (65535).
            if not 72 <= int(args[1]) <= 65535:
                return _fail(argv, "ifconfig: ioctl SIOCSIFMTU (set mtu): Invalid argument")
            iface.mtu = int(args[1])
            return _ok(argv)
        if args == ["up"]:
            self.up(iface)
            return _ok(argv)
        if args[:1] == ["inet6"] and all(a.lstrip("-") in {"auto_linklocal", "ifdisabled", "no_dad"} for a in args[1:]):
            for flag in args[1:]:
                (iface.nd6.discard if flag.startswith("-") else iface.nd6.add)(flag.lstrip("-"))
            return _ok(argv)
        if len(args) == 3 and args[0] in ("inet", "inet6") and args[2] == "alias":
            return self._add_address(argv, iface, ipaddress.ip_interface(args[1]))
        return _fail(argv, f"ifconfig: {' '.join(args)}: not modelled")

    def _add_address(self, argv: list[str], iface: Iface, addr: Any) -> subprocess.CompletedProcess[str]:
        if addr.version == 4 and iface.flags & IFF_POINTOPOINT:
            # in_aifaddr_ioctl(): a point-to-point interface needs ifra_dstaddr.
            return _fail(argv, "ifconfig: ioctl (SIOCAIFADDR): Destination address required")
        iface.addresses = [a for a in iface.addresses if a.ip != addr.ip] + [addr]  # replaced
        self.up(iface)  # the first address: if_ioctl(SIOCSIFADDR) -> tuninit() sets IFF_UP
        net = addr.network
        # in_addprefix() (IPv4, not for a /32: only a loopback route then) and
        # nd6_prelist_add() (IPv6, not for a /128) add the connected prefix, unless an
        # address elsewhere already provides that prefix.
        if net.prefixlen < net.max_prefixlen and net not in self.routes:
            self.routes[net] = iface.name
        return _ok(argv)

    def _route(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert argv[1] == "-n"
        verb, family, kind, dest = argv[2:6]
        net = ipaddress.ip_network(dest if kind == "-net" else f"{dest}/{32 if family == '-inet' else 128}")
        if verb == "add":
            assert argv[6] == "-interface"
            if argv[7] not in self.ifaces:
                return _fail(argv, "route: writing to routing socket: Network is unreachable")
            if net in self.routes:
                return _fail(argv, "route: message indicates error: File exists")
            self.routes[net] = argv[7]
            return _ok(argv)
        if verb == "get":
            if net not in self.routes:
                return _fail(argv, "route: route has not been found")
            return _ok(argv, ROUTE_GET_VIA.format(ifname=self.routes[net]))
        return _fail(argv, f"route: {verb}: not modelled")

    # -- the ioctls on a tun fd

    def ioctl(self, iface: Iface, request: int, arg: bytes) -> bytes:
        if request == freebsd.TUNGIFNAME:
            name = iface.name.encode()
            return name + bytes(freebsd.SIZEOF_IFREQ - len(name))
        (value,) = struct.unpack("i", arg)
        if request == freebsd.TUNSIFMODE:
            # tunioctl() TUNSIFMODE: EBUSY while up; BROADCAST or POINTOPOINT, each with
            # or without MULTICAST, replace those three flags; anything else is EINVAL.
            if iface.flags & IFF_UP:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            if value & ~IFF_MULTICAST not in (IFF_POINTOPOINT, IFF_BROADCAST):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            iface.flags = iface.flags & ~(IFF_BROADCAST | IFF_POINTOPOINT | IFF_MULTICAST) | value
            return arg
        if request == freebsd.TUNSIFHEAD:
            return arg
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_fd() -> Iterator[tuple[int, socket.socket]]:
    """(fd for the device, the kernel's end): a datagram socketpair in place of /dev/tun."""
    dev, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev.setblocking(False)
    kernel.setblocking(False)
    fd = os.dup(dev.fileno())
    os.set_blocking(fd, False)
    dev.close()
    try:
        yield fd, kernel
    finally:
        kernel.close()
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> FakeFreeBSD:
    system = FakeFreeBSD()
    monkeypatch.setattr(freebsd, "run_command", system)
    monkeypatch.setattr(freebsd, "interface_exists", lambda name: name in system.ifaces)
    return system


class Kernel:
    """Mocks os.open of /dev nodes and fcntl.ioctl for open_tun(), on `system`'s model:
    opening /dev/tun clones a new interface named `tunname`, /dev/tunN creates tunN if
    needed (devfs cloning), /dev/NAME of an existing tun opens that interface."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fd: int, tunname: str, system: FakeFreeBSD) -> None:
        self.fd = fd
        self.tunname = tunname
        self.system = system
        self.opened: list[str] = []
        self.ioctls: list[tuple[int, int, bytes]] = []
        self.char_devices: set[str] = set()
        self.iface: Iface | None = None
        real_open, real_stat = os.open, os.stat

        def fake_open(path: Any, flags: int, *args: Any) -> int:
            if str(path).startswith("/dev/"):
                self.opened.append(str(path))
                assert flags & os.O_NONBLOCK and flags & os.O_CLOEXEC and flags & os.O_RDWR
                node = str(path)[len("/dev/"):]
                if node == "tun" or node not in system.ifaces:
                    self.iface = system.ifaces.get(tunname) or system.add_iface(tunname)
                else:
                    self.iface = system.ifaces[node]
                return self.fd
            return real_open(path, flags, *args)

        def fake_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) in self.char_devices:
                return os.stat_result((stat.S_IFCHR | 0o600, 0, 0, 1, 0, 0, 0, 0, 0, 0))
            if str(path).startswith("/dev/") and str(path) != "/dev/null":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            return real_stat(path, *args, **kwargs)

        def fake_ioctl(fd: int, request: int, arg: Any = 0, *rest: Any) -> Any:
            assert fd == self.fd and self.iface is not None
            self.ioctls.append((fd, request, bytes(arg) if not isinstance(arg, int) else b""))
            return self.system.ioctl(self.iface, request, bytes(arg))

        monkeypatch.setattr(freebsd.os, "open", fake_open)
        monkeypatch.setattr(freebsd.os, "stat", fake_stat)
        monkeypatch.setattr(freebsd.fcntl, "ioctl", fake_ioctl)


# --------------------------------------------------------------------------- ioctl numbers


def test_ioctl_numbers_match_freebsd_headers() -> None:
    # sys/sys/ioccom.h: IOC_IN 0x80000000, IOC_OUT 0x40000000, size << 16, 't' = 0x74 << 8.
    # sys/net/if_tun.h: TUNSIFHEAD _IOW('t', 96, int), TUNSIFMODE _IOW('t', 94, int),
    #                   TUNGIFNAME _IOR('t', 93, struct ifreq) with sizeof(struct ifreq) 32.
    assert freebsd.TUNSIFHEAD == 0x80000000 | 4 << 16 | 0x74 << 8 | 96 == 0x80047460
    assert freebsd.TUNSIFMODE == 0x80000000 | 4 << 16 | 0x74 << 8 | 94 == 0x8004745E
    assert freebsd.TUNGIFNAME == 0x40000000 | 32 << 16 | 0x74 << 8 | 93 == 0x4020745D
    # sys/net/if.h: the mode is IFF_BROADCAST | IFF_MULTICAST, as in wireguard-go.
    assert (freebsd.IFF_BROADCAST, freebsd.IFF_POINTOPOINT, freebsd.IFF_MULTICAST) == (0x2, 0x10, 0x8000)
    assert freebsd.TUN_MODE == 0x8002
    assert (freebsd.AF_INET, freebsd.AF_INET6) == (2, 28)
    assert (freebsd.IF_MINMTU, freebsd.IF_MAXMTU, freebsd.TUNMRU) == (72, 65535, 65535)


def test_device_class_shape() -> None:
    assert freebsd.FreeBSDTun.frame_prefix == 4
    dev = freebsd.FreeBSDTun(-1, "vpn0")
    assert isinstance(dev, tun.TunDevice)
    for name in ("open_tun", "configure_interface", "underlay_mtu"):
        assert callable(getattr(freebsd, name))


def test_dispatch_picks_the_freebsd_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd14")
    assert tun._backend() is freebsd
    monkeypatch.setattr(sys, "platform", "sunos5")
    with pytest.raises(TunError, match="not supported"):
        tun._backend()


# --------------------------------------------------------------------------- framing


def test_read_strips_the_family_word(fake_fd: tuple[int, socket.socket]) -> None:
    fd, kernel = fake_fd
    dev = freebsd.FreeBSDTun(fd, "vpn0")
    kernel.send(AF_INET_WORD + IPV4)
    kernel.send(AF_INET6_WORD + IPV6)
    assert dev.read() == IPV4
    assert dev.read() == IPV6
    with pytest.raises(BlockingIOError):
        dev.read()
    assert dev.dropped == 0


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x00\x00\x0a" + IPV6,  # Linux's AF_INET6 (10): not FreeBSD's
        b"\x00\x00\x00\x18" + IPV4,  # AF_INET6 on some other BSD (24)
        b"\x02\x00\x00\x00" + IPV4,  # AF_INET in host (little-endian) order
        AF_INET_WORD + IPV6,  # family and IP version disagree
        AF_INET6_WORD + IPV4,
        AF_INET_WORD,  # the word alone
        b"\x00\x02",  # shorter than the word
    ],
)
def test_read_drops_unknown_families(fake_fd: tuple[int, socket.socket], frame: bytes) -> None:
    fd, kernel = fake_fd
    dev = freebsd.FreeBSDTun(fd, "vpn0")
    kernel.send(frame)
    with pytest.raises(BlockingIOError):
        dev.read()  # the bad frame is consumed and never handed to the caller
    assert dev.dropped == 1
    kernel.send(frame)
    kernel.send(AF_INET_WORD + IPV4)
    assert dev.read() == IPV4  # skipped, and the next packet comes through
    assert dev.dropped == 2


def test_read_gives_up_after_a_run_of_junk(fake_fd: tuple[int, socket.socket]) -> None:
    fd, kernel = fake_fd
    dev = freebsd.FreeBSDTun(fd, "vpn0")
    for _ in range(freebsd._MAX_SKIPPED + 1):
        kernel.send(b"\x00\x00\x00\x07" + IPV4)
    kernel.send(AF_INET_WORD + IPV4)
    with pytest.raises(BlockingIOError):
        dev.read()  # bounded work per call; the fd stays readable
    assert dev.read() == IPV4
    assert dev.dropped == freebsd._MAX_SKIPPED + 1


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_write_prepends_the_family_word(
    fake_fd: tuple[int, socket.socket], wrap: Callable[[bytes], Any]
) -> None:
    fd, kernel = fake_fd
    dev = freebsd.FreeBSDTun(fd, "vpn0")
    dev.write(wrap(IPV4))
    dev.write(wrap(IPV6))
    assert kernel.recv(70000) == AF_INET_WORD + IPV4
    assert kernel.recv(70000) == AF_INET6_WORD + IPV6


@pytest.mark.parametrize("packet", [b"", b"\x50" + bytes(19), b"\x00" * 20, b"\xff"])
def test_write_refuses_non_ip(fake_fd: tuple[int, socket.socket], packet: bytes) -> None:
    fd, kernel = fake_fd
    dev = freebsd.FreeBSDTun(fd, "vpn0")
    with pytest.raises(OSError) as info:
        dev.write(packet)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BlockingIOError):
        kernel.recv(70000)  # nothing reached the "kernel"


def test_close_is_idempotent_and_destroys_only_owned(commands: FakeFreeBSD) -> None:
    commands.add_iface("vpn0")
    commands.add_iface("tun7")
    a, b = os.pipe()
    os.close(b)
    dev = freebsd.FreeBSDTun(a, "vpn0", owned=True)
    dev.close()
    dev.close()
    assert dev.fd == -1
    assert commands.calls == [[IFCONFIG, "vpn0", "destroy"]]
    assert "vpn0" not in commands.ifaces
    with pytest.raises(OSError):
        os.fstat(a)

    c, d = os.pipe()
    os.close(d)
    with freebsd.FreeBSDTun(c, "tun7", owned=False):
        pass
    assert commands.calls == [[IFCONFIG, "vpn0", "destroy"]]  # nothing more
    assert "tun7" in commands.ifaces


def test_close_after_a_privilege_drop_keeps_quiet(commands: FakeFreeBSD) -> None:
    # Not root any more: SIOCIFDESTROY fails; close() must not raise (the rc.d stop
    # destroys the interface instead).
    commands.on(lambda a: a[-1] == "destroy", rc=1, err="ifconfig: SIOCIFDESTROY: Operation not permitted\n")
    a, b = os.pipe()
    os.close(b)
    freebsd.FreeBSDTun(a, "vpn0", owned=True).close()
    assert commands.calls == [[IFCONFIG, "vpn0", "destroy"]]


# --------------------------------------------------------------------------- open_tun


def _expected_setup_ioctls(fd: int) -> list[tuple[int, int, bytes]]:
    return [
        (fd, freebsd.TUNGIFNAME, bytes(32)),
        (fd, freebsd.TUNSIFMODE, struct.pack("i", IFF_BROADCAST | IFF_MULTICAST)),
        (fd, freebsd.TUNSIFHEAD, struct.pack("i", 1)),
    ]


def test_open_clones_and_renames(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, kernel = fake_fd
    k = Kernel(monkeypatch, fd, "tun3", commands)
    dev = freebsd.open_tun("vpn0")
    assert k.opened == ["/dev/tun"]
    assert k.ioctls == _expected_setup_ioctls(fd)
    assert commands.calls == [[IFCONFIG, "tun3", "name", "vpn0"]]
    assert (dev.name, dev.fd, dev.frame_prefix) == ("vpn0", fd, 4)
    # tunioctl() left it a broadcast interface, down, named vpn0.
    assert list(commands.ifaces) == ["vpn0"]
    assert commands.ifaces["vpn0"].flags == IFF_BROADCAST | IFF_MULTICAST
    dev.write(IPV4)
    assert kernel.recv(100) == AF_INET_WORD + IPV4
    dev.close()  # we created it, so we destroy it
    assert commands.calls[-1] == [IFCONFIG, "vpn0", "destroy"]
    assert commands.ifaces == {}


def test_open_unit_name_uses_its_device_node(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun5", commands)
    dev = freebsd.open_tun("tun5")
    assert k.opened == ["/dev/tun5"]
    assert k.ioctls == _expected_setup_ioctls(fd)
    assert commands.calls == []  # no rename
    dev.close()
    assert commands.calls == [[IFCONFIG, "tun5", "destroy"]]


def test_open_existing_unit_is_not_destroyed(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, _ = fake_fd
    commands.add_iface("tun5")  # `ifconfig tun5 create` by the administrator
    Kernel(monkeypatch, fd, "tun5", commands)
    freebsd.open_tun("tun5").close()
    assert commands.calls == []


def test_open_refuses_an_interface_that_is_up(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    # tunioctl() refuses TUNSIFMODE on an interface that is up (EBUSY): one made and
    # brought up by the administrator must be taken down first, and we say so.
    fd, _ = fake_fd
    commands.up(commands.add_iface("tun5"))
    Kernel(monkeypatch, fd, "tun5", commands)
    with pytest.raises(TunError) as info:
        freebsd.open_tun("tun5")
    assert str(info.value) == (
        "setting 'tun5' to broadcast mode: Device or resource busy "
        "(the interface is up: ifconfig tun5 down, then start again)"
    )
    assert commands.calls == [] and "tun5" in commands.ifaces  # not ours: left alone
    with pytest.raises(OSError):
        os.fstat(fd)


def test_open_reuses_a_leftover_renamed_interface(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, _ = fake_fd
    commands.add_iface("vpn0")  # left by a crash; tundtor() took it down
    k = Kernel(monkeypatch, fd, "vpn0", commands)
    k.char_devices.add("/dev/vpn0")  # the alias tunrename() makes for a renamed tun
    dev = freebsd.open_tun("vpn0")
    assert k.opened == ["/dev/vpn0"]
    assert k.ioctls == _expected_setup_ioctls(fd)
    assert commands.calls == []
    dev.close()
    assert commands.calls == []  # it existed before: left alone, like a persistent TUN


def test_open_refuses_an_interface_of_another_kind(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun0", commands)
    commands.add_iface("em0", tun=False)
    with pytest.raises(TunError, match="another kind already has that name"):
        freebsd.open_tun("em0")
    assert k.opened == [] and commands.calls == []


def test_open_refuses_a_device_alias_of_another_interface(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, _ = fake_fd
    commands.add_iface("vpn0")
    commands.add_iface("tun9")
    k = Kernel(monkeypatch, fd, "tun9", commands)
    k.char_devices.add("/dev/vpn0")
    monkeypatch.setitem(commands.ifaces, "vpn0", commands.ifaces["tun9"])  # /dev/vpn0 is tun9's
    with pytest.raises(TunError, match="device of interface 'tun9'"):
        freebsd.open_tun("vpn0")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed again
    assert commands.calls == []  # not ours: nothing destroyed


def test_open_cleans_up_when_the_rename_fails(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun4", commands)
    commands.on(lambda a: "name" in a, rc=1, err="ifconfig: ioctl SIOCSIFNAME (set name): File exists\n")
    with pytest.raises(TunError, match=r"renaming tun4 to 'vpn0': .*File exists"):
        freebsd.open_tun("vpn0")
    assert commands.calls == [[IFCONFIG, "tun4", "name", "vpn0"], [IFCONFIG, "tun4", "destroy"]]
    assert k.opened == ["/dev/tun"] and commands.ifaces == {}
    with pytest.raises(OSError):
        os.fstat(fd)


def test_open_error_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(code: int) -> Callable[..., int]:
        def fake_open(path: Any, *args: Any) -> int:
            raise OSError(code, os.strerror(code), path)

        return fake_open

    monkeypatch.setattr(freebsd, "interface_exists", lambda name: False)
    for code, hint in [
        (errno.ENOENT, "kldload if_tun"),
        (errno.EACCES, "run as root"),
        (errno.EBUSY, "another vpncrypt running"),
    ]:
        monkeypatch.setattr(freebsd.os, "open", refuse(code))
        with pytest.raises(TunError, match=hint):
            freebsd.open_tun("vpn0")


@pytest.mark.parametrize(
    "name", ["", "-up", "tun", "tap", ".", "a/b", "a:b", "a b", "vpn%d", "x" * 16, "é" * 8]
)
def test_open_rejects_bad_names(name: str, commands: FakeFreeBSD) -> None:
    with pytest.raises(TunError):
        freebsd.open_tun(name)
    assert commands.calls == []


# --------------------------------------------------------------------------- configure_interface

V4, V6 = ipaddress.ip_interface("10.77.0.1/24"), ipaddress.ip_interface("fd00:77::1/64")
ROUTES = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "192.0.2.7/32", "fd00:1::/48", "10.77.0.0/24", "fd00:77::/64")
]


def _opened(monkeypatch: pytest.MonkeyPatch, fd: int, system: FakeFreeBSD) -> freebsd.FreeBSDTun:
    Kernel(monkeypatch, fd, "tun0", system)
    return freebsd.open_tun("vpn0")


def test_configure_command_lines(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    dev = _opened(monkeypatch, fake_fd[0], commands)
    commands.calls.clear()
    freebsd.configure_interface("vpn0", [V4, V6], 1400, ROUTES)
    assert commands.calls == [
        [IFCONFIG, "vpn0", "mtu", "1400"],
        [IFCONFIG, "vpn0", "inet6", "-auto_linklocal", "-ifdisabled", "no_dad"],
        [IFCONFIG, "vpn0", "inet", "10.77.0.1/24", "alias"],
        [IFCONFIG, "vpn0", "inet6", "fd00:77::1/64", "alias"],
        [IFCONFIG, "vpn0", "up"],
        # 10.77.0.0/24 and fd00:77::/64 are not added: the kernel installed them with
        # the addresses (in_addprefix(), nd6_prelist_add()).
        [ROUTE, "-n", "add", "-inet", "-net", "10.0.0.0/8", "-interface", "vpn0"],
        [ROUTE, "-n", "add", "-inet", "-host", "192.0.2.7", "-interface", "vpn0"],
        [ROUTE, "-n", "add", "-inet6", "-net", "fd00:1::/48", "-interface", "vpn0"],
    ]
    # What the kernel ends up with: every configured route and both connected
    # prefixes through vpn0, the addresses on it, up, link-local and DAD off.
    assert commands.routes == {net: "vpn0" for net in ROUTES}
    iface = commands.ifaces["vpn0"]
    assert iface.addresses == [V4, V6] and iface.mtu == 1400 and iface.flags & IFF_UP
    assert not iface.nd6 & {"auto_linklocal", "ifdisabled"} and "no_dad" in iface.nd6
    dev.close()


def test_point_to_point_mode_cannot_take_an_ipv4_address(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    # The regression this guards against: in the tun's default point-to-point mode (or
    # if open_tun() asked for it) in_aifaddr_ioctl() refuses a destination-less IPv4
    # address with EDESTADDRREQ, and the daemon cannot start.
    monkeypatch.setattr(freebsd, "TUN_MODE", IFF_POINTOPOINT | IFF_MULTICAST)
    _opened(monkeypatch, fake_fd[0], commands)
    with pytest.raises(TunError) as info:
        freebsd.configure_interface("vpn0", [V4], 1400, [])
    assert str(info.value) == (
        "adding address 10.77.0.1/24 to 'vpn0': ifconfig: ioctl (SIOCAIFADDR): "
        "Destination address required"
    )
    # (test_configure_command_lines: in broadcast mode, as open_tun() sets it, the same
    # address is taken and its prefix routed.)


def test_configure_a_host_address_gets_no_connected_route(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    # A client's /32 and /128: no prefix for the kernel to install, and the server's
    # networks come from `routes`.
    _opened(monkeypatch, fake_fd[0], commands)
    addrs = [ipaddress.ip_interface("10.9.0.2/32"), ipaddress.ip_interface("fd00:9::2/128")]
    nets = [ipaddress.ip_network("10.9.0.0/24"), ipaddress.ip_network("fd00:9::/64")]
    freebsd.configure_interface("vpn0", addrs, 1420, nets)
    assert commands.routes == {net: "vpn0" for net in nets}


def test_configure_again_on_a_reused_interface(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: FakeFreeBSD
) -> None:
    # The same configuration twice (a leftover interface reopened): the addresses are
    # replaced, and the routes already there through vpn0 are accepted.
    _opened(monkeypatch, fake_fd[0], commands)
    freebsd.configure_interface("vpn0", [V4, V6], 1400, ROUTES)
    freebsd.configure_interface("vpn0", [V4, V6], 1400, ROUTES)
    assert commands.routes == {net: "vpn0" for net in ROUTES}
    assert commands.ifaces["vpn0"].addresses == [V4, V6]


def test_configure_ipv4_only_tolerates_a_kernel_without_inet6(commands: FakeFreeBSD) -> None:
    commands.opened_iface("vpn0")
    commands.on(lambda a: "inet6" in a, rc=1, err="ifconfig: inet6: bad value\n")
    freebsd.configure_interface("vpn0", [ipaddress.ip_interface("10.9.0.2/32")], 1420, [])
    assert commands.calls == [
        [IFCONFIG, "vpn0", "mtu", "1420"],
        [IFCONFIG, "vpn0", "inet6", "-auto_linklocal"],
        [IFCONFIG, "vpn0", "inet", "10.9.0.2/32", "alias"],
        [IFCONFIG, "vpn0", "up"],
    ]


def test_configure_reads_the_nd6_warning(commands: FakeFreeBSD) -> None:
    # setnd6flags() (sbin/ifconfig/af_nd6.c) warns and still exits 0 when the ioctl
    # fails: with IPv6 configured, that warning is an error.
    commands.opened_iface("vpn0")
    commands.on(lambda a: "no_dad" in a, rc=0,
                err="ifconfig: ioctl(SIOCSIFINFO_IN6): Operation not permitted\n")
    with pytest.raises(TunError) as info:
        freebsd.configure_interface("vpn0", [V6], 1400, [])
    assert str(info.value) == (
        "preparing 'vpn0' for IPv6: ifconfig: ioctl(SIOCSIFINFO_IN6): Operation not "
        "permitted (run as root)"
    )


ROUTE_GET_VIA = """   route to: 10.0.0.0
destination: 10.0.0.0
       mask: 255.0.0.0
        fib: 0
  interface: {ifname}
      flags: <UP,DONE,STATIC>
 recvpipe  sendpipe  ssthresh  rtt,msec    mtu        weight    expire
       0         0         0         0      1400         1         0
"""


def test_configure_accepts_an_existing_route_through_itself(commands: FakeFreeBSD) -> None:
    commands.opened_iface("vpn0")
    commands.routes[ipaddress.ip_network("10.0.0.0/8")] = "vpn0"
    freebsd.configure_interface("vpn0", [], 1400, [ipaddress.ip_network("10.0.0.0/8")])
    assert commands.calls[-2:] == [
        [ROUTE, "-n", "add", "-inet", "-net", "10.0.0.0/8", "-interface", "vpn0"],
        [ROUTE, "-n", "get", "-inet", "-net", "10.0.0.0/8"],
    ]


def test_configure_refuses_a_route_through_another_interface(commands: FakeFreeBSD) -> None:
    commands.opened_iface("vpn0")
    commands.routes[ipaddress.ip_network("10.0.0.0/8")] = "em1"
    with pytest.raises(TunError, match=r"a route to 10.0.0.0/8 already exists via em1"):
        freebsd.configure_interface("vpn0", [], 1400, [ipaddress.ip_network("10.0.0.0/8")])
    commands.on(lambda a: a[2] == "add", rc=1, err="add net 10.0.0.0: gateway vpn0 fib 0: route already in table\n")
    with pytest.raises(TunError, match=r"a route to 10.0.0.0/8 already exists via em1"):
        freebsd.configure_interface("vpn0", [], 1400, [ipaddress.ip_network("10.0.0.0/8")])


def test_configure_reports_the_command_error(commands: FakeFreeBSD) -> None:
    commands.opened_iface("vpn0")
    commands.on(lambda a: "alias" in a, rc=1, err="ifconfig: ioctl (SIOCAIFADDR): Operation not permitted\n")
    with pytest.raises(TunError) as info:
        freebsd.configure_interface("vpn0", [V4], 1400, [])
    assert str(info.value) == (
        "adding address 10.77.0.1/24 to 'vpn0': ifconfig: ioctl (SIOCAIFADDR): "
        "Operation not permitted (run as root)"
    )


@pytest.mark.parametrize(
    "addresses, mtu, message",
    [
        ([V4], 65536, "outside 72..65535"),
        ([V6], 1279, "below 1280"),
        ([V4], 71, "outside 72..65535"),
        ([V4], True, "outside 72..65535"),
        (["not-an-address"], 1400, "configuring 'vpn0'"),
    ],
)
def test_configure_validates_before_running_anything(
    commands: FakeFreeBSD, addresses: list[Any], mtu: Any, message: str
) -> None:
    with pytest.raises(TunError, match=message):
        freebsd.configure_interface("vpn0", addresses, mtu, [])
    assert commands.calls == []


@pytest.mark.parametrize("mtu", [72, 16385, 65535])
def test_mtus_the_kernel_takes_are_accepted(commands: FakeFreeBSD, mtu: int) -> None:
    # IF_MINMTU..IF_MAXMTU (ifhwioctl()); tun's TUNMRU is 65535 in FreeBSD 14, so jumbo
    # MTUs above the old 16384 limit pass too.
    commands.opened_iface("vpn0")
    freebsd.set_mtu("vpn0", mtu)
    assert commands.ifaces["vpn0"].mtu == mtu


# --------------------------------------------------------------------------- underlay_mtu

IFCONFIG_A = """em0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
\toptions=4e524bb<RXCSUM,TXCSUM,VLAN_MTU,VLAN_HWTAGGING,JUMBO_MTU,VLAN_HWCSUM,LRO>
\tinet 192.0.2.10 netmask 0xffffff00 broadcast 192.0.2.255
em1: flags=1008843<UP,BROADCAST,SIMPLEX,MULTICAST> metric 0 mtu 9000
\toptions=4e524bb<RXCSUM,TXCSUM>
lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384
\tinet 127.0.0.1 netmask 0xff000000
tun0: flags=1008051<UP,POINTOPOINT,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 1400
\tgroups: tun
"""


def test_underlay_mtu_of_a_destination(commands: FakeFreeBSD) -> None:
    commands.on(lambda a: a[:3] == [ROUTE, "-n", "get"], out=ROUTE_GET_VIA.format(ifname="em0"))
    commands.on(lambda a: a == [IFCONFIG, "em0"], out=IFCONFIG_A.split("em1:")[0])
    assert freebsd.underlay_mtu("198.51.100.9") == 1400  # the route's 1400 beats em0's 1500
    assert commands.calls == [
        [ROUTE, "-n", "get", "-inet", "198.51.100.9"],
        [IFCONFIG, "em0"],
    ]
    commands.calls.clear()
    freebsd.underlay_mtu("2001:db8::1")
    assert commands.calls[0] == [ROUTE, "-n", "get", "-inet6", "2001:db8::1"]


def test_underlay_mtu_without_route_metric(commands: FakeFreeBSD) -> None:
    text = ROUTE_GET_VIA.format(ifname="em0").replace("1400", "0")
    commands.on(lambda a: a[1] == "-n", out=text)
    commands.on(lambda a: a == [IFCONFIG, "em0"], out=IFCONFIG_A.split("em1:")[0])
    assert freebsd.underlay_mtu("198.51.100.9") == 1500


def test_underlay_mtu_largest_running_interface(commands: FakeFreeBSD) -> None:
    commands.on(lambda a: a == [IFCONFIG, "-a"], out=IFCONFIG_A)
    # em1 (9000) is not RUNNING, lo0 is loopback: em0's 1500 wins over tun0's 1400
    assert freebsd.underlay_mtu(None) == 1500
    commands.answers.clear()
    commands.on(lambda a: a == [IFCONFIG, "-a"], out=IFCONFIG_A.split("em0:")[0])
    assert freebsd.underlay_mtu(None) == 1500  # nothing usable: the default


def test_underlay_mtu_errors(commands: FakeFreeBSD) -> None:
    with pytest.raises(TunError, match="not an IP address"):
        freebsd.underlay_mtu("vpn.example.org")
    commands.on(lambda a: a[1] == "-n", rc=1, err="route: route has not been found\n")
    with pytest.raises(TunError, match="no route to 203.0.113.1"):
        freebsd.underlay_mtu("203.0.113.1")


# --------------------------------------------------------------------------- the runner


def test_run_command_runs_argv_without_a_shell() -> None:
    proc = freebsd.run_command(["/bin/sh", "-c", 'printf "%s|%s" "$LC_ALL" "$0"', "a b"])
    assert proc.returncode == 0 and proc.stdout == "C|a b"
    with pytest.raises(TunError, match="cannot run /nonexistent/ifconfig"):
        freebsd.run_command(["/nonexistent/ifconfig"])
