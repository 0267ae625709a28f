"""Interface-configuration helper, run as ``python -m vpncrypt.tun.netlink`` by tun.linux.

Why a separate process: the rtnetlink work (MTU, addresses, link state, routes) is done
with pyroute2, and importing pyroute2 grows a Python process by about 20 MB of resident
memory that it never gives back.  The daemon's steady-state budget is 16 MB in total,
and it needs rtnetlink only at start-up, so the import happens here, in a child that
lives for a fraction of a second, and the daemon never loads pyroute2.

Protocol: one dict on stdin, ``{"op": "configure", "ifname": ..., "mtu": ...,
"addresses": ["10.0.0.1/24", ...], "routes": ["10.1.0.0/16", ...]}``, in the `marshal`
format (built into the interpreter: parent and child are the same interpreter, and the
daemon does not have to load json, ~0.2 MB).  On success: exit status 0 and one
marshalled dict on stdout.  On failure: exit status 1 and exactly one line on stderr
saying what failed, which the parent shows to the operator as is.  Never a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import marshal
import os
import sys
from collections.abc import Callable
from typing import Any

# <linux/if_addr.h>, <linux/rtnetlink.h>, <linux/if.h>
IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254


class Failure(Exception):
    """A failure to report to the operator; str() is the one line to print."""


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)  # pyroute2's NetlinkError carries the errno here
    if isinstance(code, int) and code > 0:
        text = os.strerror(code)
        if code == errno.EPERM:
            text += " (needs CAP_NET_ADMIN; run as root)"
        return text
    return str(exc) or type(exc).__name__


def _step(what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - anything from pyroute2 becomes one line
        raise Failure(f"{what}: {_reason(exc)}") from exc


def _ifindex(ipr: Any, name: str) -> int:
    found = _step(f"looking up interface {name!r}", ipr.link_lookup, ifname=name)
    if not found:
        raise Failure(f"no such interface {name!r}")
    return found[0]


def _ifname(ipr: Any, index: int) -> str:
    try:
        return ipr.get_links(index)[0].get("ifname") or f"#{index}"
    except Exception:  # noqa: BLE001 - only used to decorate a message
        return f"#{index}"


def _disable_link_local(name: str) -> None:
    path = f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"
    if not os.path.exists(path):  # IPv6 disabled on this host: nothing to do
        return
    try:
        with open(path, "w") as f:
            f.write("1")  # IN6_ADDR_GEN_MODE_NONE
    except OSError as exc:
        raise Failure(f"disabling IPv6 link-local on {name!r}: {exc.strerror}") from exc


def configure(ipr: Any, request: dict[str, Any]) -> dict[str, Any]:
    name = request["ifname"]
    mtu = int(request["mtu"])
    index = _ifindex(ipr, name)

    # MTU before addresses: lowering it below 1280 later would drop the IPv6 ones.
    _step(f"setting MTU {mtu} on {name!r}", ipr.link, "set", index=index, mtu=mtu)

    for text in request["addresses"]:
        iface = ipaddress.ip_interface(text)
        args: dict[str, Any] = {
            "index": index,
            "address": str(iface.ip),
            "prefixlen": iface.network.prefixlen,
        }
        if iface.version == 6:
            # Skip duplicate-address detection: a tunnel has no neighbours to collide
            # with, and a tentative address cannot be used for the first second or so.
            args["flags"] = IFA_F_NODAD
        # "replace" rather than "add" so that configuring twice is not an error.
        _step(f"adding address {text} to {name!r}", ipr.addr, "replace", **args)

    # No IPv6 link-local address: a point-to-point tunnel has no neighbours, and the
    # router solicitations and MLD reports sent from fe80:: would only be dropped by
    # the server as sourced outside the client's allowed IPs. Must precede link up.
    _disable_link_local(name)

    # Up before routes: the kernel refuses routes through a down interface.
    _step(f"bringing {name!r} up", ipr.link, "set", index=index, state="up")

    for text in request["routes"]:
        net = ipaddress.ip_network(text)
        args = {"dst": str(net), "oif": index, "table": RT_TABLE_MAIN}
        if net.version == 4:
            # What `ip route add NET dev IF` does; it makes source-address selection
            # pick the tunnel's own address for traffic into these routes.
            args["scope"] = RT_SCOPE_LINK
        try:
            ipr.route("add", **args)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "code", None) == errno.EEXIST:
                others = _route_oifs(ipr, net)
                if index in others:
                    continue  # e.g. the connected prefix of an address: already right
                where = ", ".join(_ifname(ipr, i) for i in others) or "another route"
                raise Failure(
                    f"adding route {net} via {name!r}: a route to {net} already exists via {where}"
                ) from exc
            raise Failure(f"adding route {net} via {name!r}: {_reason(exc)}") from exc
    return {"ifname": name, "index": index}


def _route_oifs(ipr: Any, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[int]:
    """Output interfaces of the main-table routes whose destination is exactly `net`."""
    routes = _step(
        f"listing routes to {net}",
        ipr.route,
        "dump",
        dst=str(net.network_address),
        dst_len=net.prefixlen,
        table=RT_TABLE_MAIN,
    )
    return [r.get("oif") for r in routes if r.get("oif") is not None]


OPERATIONS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "configure": configure,
}


def main() -> int:
    try:
        try:
            request = marshal.load(sys.stdin.buffer)
            operation = OPERATIONS[request["op"]]
        except (EOFError, ValueError, KeyError, TypeError) as exc:
            raise Failure(f"interface helper: malformed request ({exc})") from exc
        try:
            from pyroute2 import IPRoute
        except ImportError as exc:
            raise Failure(
                "interface configuration needs pyroute2, which is not installed "
                "(pip install pyroute2; OpenWrt: opkg install python3-pyroute2, or run the "
                "tunnel as a network interface with proto vpncrypt); or set "
                "configure_interface = no and configure the interface yourself"
            ) from exc
        with _step("opening a netlink socket", IPRoute) as ipr:
            result = operation(ipr, request)
    except Failure as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug here must still read as one line
        message = f"interface helper failed: {type(exc).__name__}: {exc}"
    else:
        marshal.dump(result, sys.stdout.buffer)
        return 0
    print(" ".join(message.split()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    os.chdir("/")  # tun.linux starts us from the daemon's directory: hold on to none
    sys.exit(main())
