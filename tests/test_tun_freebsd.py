"""Unit tests of the FreeBSD TUN backend (vpncrypt.tun.freebsd), run on Linux.

FreeBSD cannot run here, so nothing in this file reaches a FreeBSD kernel and these
tests are no evidence that the backend works on FreeBSD.  What they pin down:

* the framing: a socketpair(AF_UNIX, SOCK_DGRAM) stands in for the tun(4) fd (it keeps
  packet boundaries, as a tun device does), and the tests check that read() strips and
  write() prepends the 4-byte big-endian address-family word of TUNSIFHEAD mode with
  FreeBSD's values (AF_INET = 2, AF_INET6 = 28), and that other frames are refused;
* the ioctl request numbers, against the values <net/if_tun.h> and <sys/ioccom.h>
  give (computed by hand in the comments below);
* the exact ioctl calls, ifconfig(8) and route(8) command lines the backend would issue.
  fcntl.ioctl, os.open, the interface-existence check and the backend's one command
  runner (`run_command`) are MOCKS here, returning what FreeBSD's would.  The canned
  ifconfig/route output is written from FreeBSD's documented formats, not captured.
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


class Commands:
    """Stands in for freebsd.run_command: records argv, answers from a script."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.answers: list[tuple[Callable[[list[str]], bool], int, str, str]] = []

    def on(self, match: Callable[[list[str]], bool], rc: int = 0, out: str = "", err: str = "") -> None:
        self.answers.append((match, rc, out, err))

    def __call__(self, argv: Any) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        for match, rc, out, err in self.answers:
            if match(argv):
                return subprocess.CompletedProcess(argv, rc, out, err)
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Commands:
    recorder = Commands()
    monkeypatch.setattr(freebsd, "run_command", recorder)
    return recorder


class Kernel:
    """Mocks os.open of /dev nodes, fcntl.ioctl and interface_exists for open_tun()."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fd: int, tunname: str) -> None:
        self.fd = fd
        self.tunname = tunname  # what TUNGIFNAME answers
        self.opened: list[str] = []
        self.ioctls: list[tuple[int, int, bytes]] = []
        self.existing: set[str] = set()
        self.char_devices: set[str] = set()
        real_open, real_stat = os.open, os.stat

        def fake_open(path: Any, flags: int, *args: Any) -> int:
            if str(path).startswith("/dev/"):
                self.opened.append(str(path))
                assert flags & os.O_NONBLOCK and flags & os.O_CLOEXEC and flags & os.O_RDWR
                return self.fd
            return real_open(path, flags, *args)

        def fake_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) in self.char_devices:
                return os.stat_result((stat.S_IFCHR | 0o600, 0, 0, 1, 0, 0, 0, 0, 0, 0))
            if str(path).startswith("/dev/") and str(path) != "/dev/null":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            return real_stat(path, *args, **kwargs)

        def fake_ioctl(fd: int, request: int, arg: Any = 0, *rest: Any) -> Any:
            self.ioctls.append((fd, request, bytes(arg) if not isinstance(arg, int) else b""))
            if request == freebsd.TUNGIFNAME:
                name = self.tunname.encode()
                return name + bytes(freebsd.SIZEOF_IFREQ - len(name))
            return arg

        monkeypatch.setattr(freebsd.os, "open", fake_open)
        monkeypatch.setattr(freebsd.os, "stat", fake_stat)
        monkeypatch.setattr(freebsd.fcntl, "ioctl", fake_ioctl)
        monkeypatch.setattr(freebsd, "interface_exists", lambda name: name in self.existing)


# --------------------------------------------------------------------------- ioctl numbers


def test_ioctl_numbers_match_freebsd_headers() -> None:
    # <sys/ioccom.h>: IOC_IN 0x80000000, IOC_OUT 0x40000000, size << 16, 't' = 0x74 << 8.
    # <net/if_tun.h>: TUNSIFHEAD _IOW('t', 96, int), TUNSIFMODE _IOW('t', 94, int),
    #                 TUNGIFNAME _IOR('t', 93, struct ifreq) with sizeof(struct ifreq) 32.
    assert freebsd.TUNSIFHEAD == 0x80000000 | 4 << 16 | 0x74 << 8 | 96 == 0x80047460
    assert freebsd.TUNSIFMODE == 0x80000000 | 4 << 16 | 0x74 << 8 | 94 == 0x8004745E
    assert freebsd.TUNGIFNAME == 0x40000000 | 32 << 16 | 0x74 << 8 | 93 == 0x4020745D
    assert freebsd.IFF_POINTOPOINT | freebsd.IFF_MULTICAST == 0x8010
    assert (freebsd.AF_INET, freebsd.AF_INET6) == (2, 28)


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


def test_close_is_idempotent_and_destroys_only_owned(commands: Commands) -> None:
    a, b = os.pipe()
    os.close(b)
    dev = freebsd.FreeBSDTun(a, "vpn0", owned=True)
    dev.close()
    dev.close()
    assert dev.fd == -1
    assert commands.calls == [[IFCONFIG, "vpn0", "destroy"]]
    with pytest.raises(OSError):
        os.fstat(a)

    c, d = os.pipe()
    os.close(d)
    with freebsd.FreeBSDTun(c, "tun7", owned=False):
        pass
    assert commands.calls == [[IFCONFIG, "vpn0", "destroy"]]  # nothing more


# --------------------------------------------------------------------------- open_tun


def _expected_setup_ioctls(fd: int) -> list[tuple[int, int, bytes]]:
    return [
        (fd, freebsd.TUNGIFNAME, bytes(32)),
        (fd, freebsd.TUNSIFMODE, struct.pack("i", 0x8010)),
        (fd, freebsd.TUNSIFHEAD, struct.pack("i", 1)),
    ]


def test_open_clones_and_renames(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, kernel = fake_fd
    k = Kernel(monkeypatch, fd, "tun3")
    dev = freebsd.open_tun("vpn0")
    assert k.opened == ["/dev/tun"]
    assert k.ioctls == _expected_setup_ioctls(fd)
    assert commands.calls == [[IFCONFIG, "tun3", "name", "vpn0"]]
    assert (dev.name, dev.fd, dev.frame_prefix) == ("vpn0", fd, 4)
    dev.write(IPV4)
    assert kernel.recv(100) == AF_INET_WORD + IPV4
    dev.close()  # we created it, so we destroy it
    assert commands.calls[-1] == [IFCONFIG, "vpn0", "destroy"]


def test_open_unit_name_uses_its_device_node(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun5")
    dev = freebsd.open_tun("tun5")
    assert k.opened == ["/dev/tun5"]
    assert k.ioctls == _expected_setup_ioctls(fd)
    assert commands.calls == []  # no rename
    dev.close()
    assert commands.calls == [[IFCONFIG, "tun5", "destroy"]]


def test_open_existing_unit_is_not_destroyed(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun5")
    k.existing.add("tun5")  # `ifconfig tun5 create` by the administrator
    freebsd.open_tun("tun5").close()
    assert commands.calls == []


def test_open_reuses_a_leftover_renamed_interface(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "vpn0")
    k.existing.add("vpn0")
    k.char_devices.add("/dev/vpn0")  # the alias FreeBSD makes for a renamed tun
    dev = freebsd.open_tun("vpn0")
    assert k.opened == ["/dev/vpn0"]
    assert k.ioctls == _expected_setup_ioctls(fd)
    assert commands.calls == []
    dev.close()
    assert commands.calls == []  # it existed before: left alone, like a persistent TUN


def test_open_refuses_an_interface_of_another_kind(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun0")
    k.existing.add("em0")
    with pytest.raises(TunError, match="another kind already has that name"):
        freebsd.open_tun("em0")
    assert k.opened == [] and commands.calls == []


def test_open_refuses_a_device_alias_of_another_interface(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun9")
    k.existing.add("vpn0")
    k.char_devices.add("/dev/vpn0")
    with pytest.raises(TunError, match="device of interface 'tun9'"):
        freebsd.open_tun("vpn0")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed again
    assert commands.calls == []  # not ours: nothing destroyed


def test_open_cleans_up_when_the_rename_fails(
    monkeypatch: pytest.MonkeyPatch, fake_fd: tuple[int, socket.socket], commands: Commands
) -> None:
    fd, _ = fake_fd
    k = Kernel(monkeypatch, fd, "tun4")
    commands.on(lambda a: "name" in a, rc=1, err="ifconfig: ioctl SIOCSIFNAME (set name): File exists\n")
    monkeypatch.setattr(freebsd, "interface_exists", lambda n: n == "tun4" and bool(commands.calls))
    with pytest.raises(TunError, match=r"renaming tun4 to 'vpn0': .*File exists"):
        freebsd.open_tun("vpn0")
    assert commands.calls == [[IFCONFIG, "tun4", "name", "vpn0"], [IFCONFIG, "tun4", "destroy"]]
    assert k.opened == ["/dev/tun"]
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
def test_open_rejects_bad_names(name: str, commands: Commands) -> None:
    with pytest.raises(TunError):
        freebsd.open_tun(name)
    assert commands.calls == []


# --------------------------------------------------------------------------- configure_interface

V4, V6 = ipaddress.ip_interface("10.77.0.1/24"), ipaddress.ip_interface("fd00:77::1/64")


def test_configure_command_lines(commands: Commands) -> None:
    routes = [
        ipaddress.ip_network(n)
        for n in ("10.0.0.0/8", "192.0.2.7/32", "fd00:1::/48", "10.77.0.0/24", "fd00:77::/64")
    ]
    freebsd.configure_interface("vpn0", [V4, V6], 1400, routes)
    assert commands.calls == [
        [IFCONFIG, "vpn0", "mtu", "1400"],
        [IFCONFIG, "vpn0", "inet6", "-auto_linklocal", "-ifdisabled", "no_dad"],
        [IFCONFIG, "vpn0", "inet", "10.77.0.1/24", "alias"],
        [IFCONFIG, "vpn0", "inet6", "fd00:77::1/64", "alias"],
        [IFCONFIG, "vpn0", "up"],
        # the connected IPv4 prefix (a point-to-point tun gets none by itself), once
        [ROUTE, "-n", "add", "-inet", "-net", "10.77.0.0/24", "-interface", "vpn0"],
        [ROUTE, "-n", "add", "-inet", "-net", "10.0.0.0/8", "-interface", "vpn0"],
        [ROUTE, "-n", "add", "-inet", "-host", "192.0.2.7", "-interface", "vpn0"],
        [ROUTE, "-n", "add", "-inet6", "-net", "fd00:1::/48", "-interface", "vpn0"],
        # fd00:77::/64 is not added: the kernel installed it with the address
    ]


def test_configure_ipv4_only_tolerates_a_kernel_without_inet6(commands: Commands) -> None:
    commands.on(lambda a: "inet6" in a, rc=1, err="ifconfig: inet6: bad value\n")
    freebsd.configure_interface("vpn0", [ipaddress.ip_interface("10.9.0.2/32")], 1420, [])
    assert commands.calls == [
        [IFCONFIG, "vpn0", "mtu", "1420"],
        [IFCONFIG, "vpn0", "inet6", "-auto_linklocal"],
        [IFCONFIG, "vpn0", "inet", "10.9.0.2/32", "alias"],
        [IFCONFIG, "vpn0", "up"],
    ]


ROUTE_GET_VIA = """   route to: 10.0.0.0
destination: 10.0.0.0
       mask: 255.0.0.0
        fib: 0
  interface: {ifname}
      flags: <UP,DONE,STATIC>
 recvpipe  sendpipe  ssthresh  rtt,msec    mtu        weight    expire
       0         0         0         0      1400         1         0
"""


def test_configure_accepts_an_existing_route_through_itself(commands: Commands) -> None:
    commands.on(lambda a: a[2] == "add", rc=1, err="route: message indicates error: File exists\n")
    commands.on(lambda a: a[2] == "get", out=ROUTE_GET_VIA.format(ifname="vpn0"))
    freebsd.configure_interface("vpn0", [], 1400, [ipaddress.ip_network("10.0.0.0/8")])
    assert commands.calls[-1] == [ROUTE, "-n", "get", "-inet", "-net", "10.0.0.0/8"]


def test_configure_refuses_a_route_through_another_interface(commands: Commands) -> None:
    commands.on(lambda a: a[2] == "add", rc=1, err="add net 10.0.0.0: gateway vpn0 fib 0: route already in table\n")
    commands.on(lambda a: a[2] == "get", out=ROUTE_GET_VIA.format(ifname="em1"))
    with pytest.raises(TunError, match=r"a route to 10.0.0.0/8 already exists via em1"):
        freebsd.configure_interface("vpn0", [], 1400, [ipaddress.ip_network("10.0.0.0/8")])


def test_configure_reports_the_command_error(commands: Commands) -> None:
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
        ([V4], 16385, "above 16384"),
        ([V6], 1279, "below 1280"),
        ([V4], 67, "outside 68..65535"),
        ([V4], True, "outside 68..65535"),
        (["not-an-address"], 1400, "configuring 'vpn0'"),
    ],
)
def test_configure_validates_before_running_anything(
    commands: Commands, addresses: list[Any], mtu: Any, message: str
) -> None:
    with pytest.raises(TunError, match=message):
        freebsd.configure_interface("vpn0", addresses, mtu, [])
    assert commands.calls == []


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


def test_underlay_mtu_of_a_destination(commands: Commands) -> None:
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


def test_underlay_mtu_without_route_metric(commands: Commands) -> None:
    text = ROUTE_GET_VIA.format(ifname="em0").replace("1400", "0")
    commands.on(lambda a: a[1] == "-n", out=text)
    commands.on(lambda a: a == [IFCONFIG, "em0"], out=IFCONFIG_A.split("em1:")[0])
    assert freebsd.underlay_mtu("198.51.100.9") == 1500


def test_underlay_mtu_largest_running_interface(commands: Commands) -> None:
    commands.on(lambda a: a == [IFCONFIG, "-a"], out=IFCONFIG_A)
    # em1 (9000) is not RUNNING, lo0 is loopback: em0's 1500 wins over tun0's 1400
    assert freebsd.underlay_mtu(None) == 1500
    commands.answers.clear()
    commands.on(lambda a: a == [IFCONFIG, "-a"], out=IFCONFIG_A.split("em0:")[0])
    assert freebsd.underlay_mtu(None) == 1500  # nothing usable: the default


def test_underlay_mtu_errors(commands: Commands) -> None:
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
