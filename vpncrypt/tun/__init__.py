"""The platform interface: TUN devices, interface configuration and underlay MTU discovery.

This package owns everything the daemon needs from the operating system's network stack
apart from its UDP socket: opening a layer-3 TUN device, giving it addresses, an MTU and
routes (or only the MTU, where a network manager such as OpenWrt's netifd does the
rest), and finding the MTU of the path the encrypted datagrams will take.  The rest of
vpncrypt talks only to the functions and the `TunDevice` protocol defined here; each
platform lives in its own backend module (`linux`, later `freebsd`), chosen at call time
by `sys.platform`, so importing this package costs nothing on any platform.

Every failure the daemon should report to an operator is raised as `TunError`, whose
message is a single line that says what went wrong and, where possible, what to do.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = [
    "TunDevice",
    "TunError",
    "configure_interface",
    "open_tun",
    "set_mtu",
    "underlay_mtu",
]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TunError(Exception):
    """A TUN or interface-configuration failure; str() is one line meant for an operator."""


class TunDevice:
    """An open layer-3 TUN device carrying one raw IP packet per read/write: the base
    class of each backend's device (a plain class, not a typing.Protocol: the daemon
    does not import typing, ~0.6 MB of resident memory).

    `fd` is non-blocking and close-on-exec, so it can be registered with `selectors`
    directly; `read()` raises `BlockingIOError` when no packet is queued.
    """

    #: Bytes of per-packet header the platform puts in front of each IP packet on the
    #: fd and that read()/write() strip/add.  0 on Linux (IFF_NO_PI), 10 there when
    #: opened for offloads (struct virtio_net_hdr); FreeBSD's TUNSIFHEAD
    #: address-family word makes it 4.
    frame_prefix: int
    #: What the kernel granted when opened with `offload` (empty otherwise).
    offloads: tuple[str, ...]

    name: str
    fd: int

    __slots__ = ()

    def read(self) -> bytes:
        """Return one IP packet; raise BlockingIOError if none is queued."""
        raise NotImplementedError

    def write(self, packet: bytes) -> None:
        """Hand one IP packet (starting at the IP header) to the kernel."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the fd; a non-persistent interface disappears with it.  Idempotent."""
        raise NotImplementedError


def _backend() -> ModuleType:
    # Imported lazily so that `import vpncrypt.tun` works (and is free) everywhere and a
    # backend's own imports are only paid on the platform that uses it.
    if sys.platform.startswith("linux"):
        from . import linux

        return linux
    if sys.platform.startswith("freebsd"):
        from . import freebsd

        return freebsd
    raise TunError(f"platform {sys.platform!r} is not supported (Linux and FreeBSD only)")


def open_tun(name: str, offload: bool = False) -> TunDevice:
    """Create (or attach to) the layer-3 TUN interface `name` and return it open.

    `offload` (Linux; ignored elsewhere): open it for the native loop's segmentation
    and checksum offloads; the device's `offloads` says what the kernel granted.
    """
    return _backend().open_tun(name, offload)


def configure_interface(
    name: str,
    addresses: Sequence[IPInterface],
    mtu: int,
    routes: Sequence[IPNetwork],
) -> None:
    """Set `mtu`, add `addresses`, bring `name` up and route `routes` through it."""
    _backend().configure_interface(name, addresses, mtu, routes)


def set_mtu(name: str, mtu: int) -> None:
    """Set only the MTU of `name`: the set-up when addresses, routes and the link state
    are someone else's (``configure_interface = no``, e.g. netifd's `proto vpncrypt`)."""
    _backend().set_mtu(name, mtu)


def underlay_mtu(dest: str | None) -> int:
    """MTU of the interface the kernel would use to reach the IP literal `dest`.

    With `dest` None: the largest MTU among up, non-loopback interfaces (1500 if none).
    """
    return _backend().underlay_mtu(dest)
