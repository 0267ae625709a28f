"""Real tests of the Linux TUN backend: kernel TUN devices inside throwaway namespaces.

Nothing is mocked.  The test process stays in the root namespace, so everything that
creates or configures an interface runs in a child inside the namespace: the
`inside_*` functions below are called there through `Netns.call()` and return plain
JSON data, and the assertions are made here.  Only the name and argument checks that
never reach the kernel run in-process.
"""

from __future__ import annotations

import ipaddress
import json
import select
import subprocess
import sys
import time
from typing import Any

import pytest

import packets
from netns import link, python_env, require_netns

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backend")

TUN = "vpct0"  # each test has its own namespace, so a fixed name cannot collide
V4_LOCAL, V4_PEER = "10.201.0.1/24", "10.201.0.2"
V6_LOCAL, V6_PEER = "fd00:201::1/64", "fd00:201::2"
MTU = 1400
ECHO_ID, ECHO_SEQ, ECHO_PAYLOAD = 0x7A3C, 9, bytes(range(48))


# --------------------------------------------------------------------------- run inside a netns


def _configured_tun(routes: list[str] | None = None) -> Any:
    from vpncrypt.tun import configure_interface, open_tun

    tun = open_tun(TUN)
    configure_interface(
        tun.name,
        [ipaddress.ip_interface(V4_LOCAL), ipaddress.ip_interface(V6_LOCAL)],
        MTU,
        [ipaddress.ip_network(r) for r in routes or []],
    )
    return tun


def _ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def _await_echo_reply(tun: Any, timeout: float = 5.0) -> bytes:
    """Next echo reply read from `tun`; other traffic (MLD, router solicitations) is skipped."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        select.select([tun.fd], [], [], remaining)
        try:
            packet = tun.read()
        except BlockingIOError:
            continue
        try:
            echo = packets.parse_echo(packet)
        except ValueError:
            continue
        if echo.type in (packets.ICMP_ECHO_REPLY, packets.ICMPV6_ECHO_REPLY):
            return packet
    raise AssertionError("no echo reply came out of the TUN")


def inside_echo() -> dict[str, Any]:
    from vpncrypt.tun import open_tun

    with open_tun(TUN) as tun:
        # Before configuration the interface is down and nothing can be queued; once it
        # is up the kernel soon sends IPv6 multicast listener reports and the like.
        try:
            tun.read()
            empty_read = "returned"
        except BlockingIOError:
            empty_read = "BlockingIOError"
    tun = _configured_tun()
    try:
        result: dict[str, Any] = {
            "name": tun.name,
            "frame_prefix": tun.frame_prefix,
            "empty_read": empty_read,
            "link": _ip_json("addr", "show", "dev", tun.name),
        }
        for key, src, local in (("v4", V4_PEER, V4_LOCAL), ("v6", V6_PEER, V6_LOCAL)):
            dst = local.split("/")[0]
            request = packets.echo_request(src, dst, ECHO_ID, ECHO_SEQ, ECHO_PAYLOAD)
            tun.write(request)
            result[key] = {"request": request.hex(), "reply": _await_echo_reply(tun).hex()}
        try:
            tun.write(b"\x00" * 40)  # neither IPv4 nor IPv6
            result["garbage_write"] = "accepted"
        except OSError as exc:
            result["garbage_write"] = exc.errno
        return result
    finally:
        tun.close()


def inside_udp() -> dict[str, Any]:
    import socket

    tun = _configured_tun()
    result: dict[str, Any] = {}
    try:
        for key, family, local, peer in (
            ("v4", socket.AF_INET, V4_LOCAL.split("/")[0], V4_PEER),
            ("v6", socket.AF_INET6, V6_LOCAL.split("/")[0], V6_PEER),
        ):
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((local, 0))
                sock.settimeout(5)
                port = sock.getsockname()[1]
                # TUN -> socket: the kernel drops UDP with a bad checksum, so arrival
                # proves the hand-built packet right.
                tun.write(packets.udp_packet(peer, local, 40000, port, b"into the host"))
                data, source = sock.recvfrom(2048)
                # socket -> TUN: what the host routes to the peer comes out of the fd.
                sock.sendto(b"out to the peer", (peer, 40001))
                deadline = time.monotonic() + 5
                while True:
                    select.select([tun.fd], [], [], max(0.0, deadline - time.monotonic()))
                    try:
                        packet = tun.read()
                    except BlockingIOError:
                        assert time.monotonic() < deadline, "no UDP packet came out of the TUN"
                        continue
                    if packets.parse_ip(packet).proto == packets.IPPROTO_UDP:
                        break
                result[key] = {
                    "received": [data.decode(), source[0], source[1]],
                    "sent": packet.hex(),
                    "port": port,
                }
        return result
    finally:
        tun.close()


def inside_routes() -> dict[str, Any]:
    routes = ["10.209.0.0/16", "fd00:209::/48", "10.201.0.0/24"]  # the last is connected
    from vpncrypt.tun import configure_interface

    tun = _configured_tun(routes)
    try:
        # A second configuration of the same interface must be a no-op, not an error.
        configure_interface(
            tun.name,
            [ipaddress.ip_interface(V4_LOCAL), ipaddress.ip_interface(V6_LOCAL)],
            MTU,
            [ipaddress.ip_network(r) for r in routes],
        )
        return {
            "v4": _ip_json("-4", "route", "show", "dev", tun.name),
            "v6": _ip_json("-6", "route", "show", "dev", tun.name),
            "addrs": _ip_json("addr", "show", "dev", tun.name),
        }
    finally:
        tun.close()


def inside_no_pyroute2() -> dict[str, Any]:
    import vpncrypt.tun.linux as linux

    before = sorted(m for m in sys.modules if m.partition(".")[0] == "pyroute2")
    tun = linux.open_tun(TUN)
    linux.configure_interface(tun.name, [ipaddress.ip_interface(V4_LOCAL)], MTU, [])
    mtu = linux.underlay_mtu(None)
    after = sorted(m for m in sys.modules if m.partition(".")[0] == "pyroute2")
    tun.close()
    return {"before": before, "after": after, "underlay_none": mtu}


def inside_set_mtu_only() -> dict[str, Any]:
    import vpncrypt.tun.linux as linux

    tun = linux.open_tun(TUN)
    linux.set_mtu(tun.name, 1360)
    base = f"/sys/class/net/{tun.name}"
    with open(f"{base}/mtu") as f, open(f"{base}/flags") as g:
        mtu, flags = int(f.read()), int(g.read(), 16)
    errors = {}
    for bad in (40, 70000):
        try:
            linux.set_mtu(tun.name, bad)
        except linux.TunError as exc:
            errors[str(bad)] = str(exc)
    try:
        linux.set_mtu("nope0", 1400)
    except linux.TunError as exc:
        errors["missing"] = str(exc)
    tun.close()
    return {"mtu": mtu, "up": bool(flags & 1), "errors": errors,
            "pyroute2": sorted(m for m in sys.modules if m.startswith("pyroute2")),
            "addresses": subprocess.run(["ip", "-o", "addr", "show", "dev", tun.name],
                                        capture_output=True, text=True).stdout}


def inside_close_removes_interface() -> dict[str, Any]:
    import socket

    def exists(name: str) -> bool:
        try:
            socket.if_nametoindex(name)
            return True
        except OSError:
            return False

    # Configuring runs a helper process: it must not inherit the fd and keep the
    # interface alive past close().
    tun = _configured_tun()
    name = tun.name
    present = exists(name)
    tun.close()
    tun.close()  # idempotent
    return {"present_while_open": present, "present_after_close": exists(name)}


def inside_hold_tun() -> None:
    from vpncrypt.tun import open_tun

    tun = open_tun(TUN)
    print("ready", tun.name, flush=True)
    time.sleep(60)


def inside_kernel_name_errors() -> dict[str, str]:
    from vpncrypt.tun import TunError, open_tun

    messages = {}
    first = open_tun("vpct%d")  # kernel picks the number
    messages["pattern"] = first.name
    try:
        open_tun(first.name).close()
    except TunError as exc:
        messages["busy"] = str(exc)
    try:
        open_tun("lo").close()
    except TunError as exc:
        messages["other_kind"] = str(exc)
    first.close()
    return messages


def inside_config_errors(conflicting_route: str) -> dict[str, str]:
    from vpncrypt.tun import TunError, configure_interface, open_tun

    messages = {}
    try:
        configure_interface("nope0", [ipaddress.ip_interface(V4_LOCAL)], MTU, [])
    except TunError as exc:
        messages["missing"] = str(exc)
    tun = open_tun(TUN)
    try:
        route = ipaddress.ip_network(conflicting_route)
        configure_interface(tun.name, [ipaddress.ip_interface(V4_LOCAL)], MTU, [route])
    except TunError as exc:
        messages["conflict"] = str(exc)
    tun.close()
    return messages


def inside_underlay(dests: list[str | None]) -> dict[str, Any]:
    from vpncrypt.tun import TunError, underlay_mtu

    result: dict[str, Any] = {}
    for dest in dests:
        try:
            result[str(dest)] = underlay_mtu(dest)
        except TunError as exc:
            result[str(dest)] = str(exc)
    return result


# --------------------------------------------------------------------------- helpers here


def _one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


def _assert_echo_reply(request_hex: str, reply_hex: str) -> None:
    request = packets.parse_ip(bytes.fromhex(request_hex))
    reply = packets.parse_ip(bytes.fromhex(reply_hex))  # verifies the IPv4 header checksum
    assert reply.version == request.version
    assert (reply.src, reply.dst) == (request.dst, request.src)
    assert reply.proto == request.proto
    assert len(reply.payload) == len(request.payload)
    echo = packets.parse_echo(reply)  # verifies the ICMP / ICMPv6 checksum
    expected_type = packets.ICMP_ECHO_REPLY if reply.version == 4 else packets.ICMPV6_ECHO_REPLY
    assert (echo.type, echo.code) == (expected_type, 0)
    assert (echo.ident, echo.seq, echo.payload) == (ECHO_ID, ECHO_SEQ, ECHO_PAYLOAD)


# --------------------------------------------------------------------------- tests


@pytest.mark.netns
def test_configured_tun_answers_ping_v4_and_v6(netns_factory):
    require_netns()
    host = netns_factory()
    out = host.call(inside_echo)

    assert out["name"] == TUN
    assert out["frame_prefix"] == 0
    assert out["empty_read"] == "BlockingIOError"
    [info] = out["link"]
    assert info["mtu"] == MTU
    assert "UP" in info["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["scope"] == "global"}
    assert addrs == {("10.201.0.1", 24), ("fd00:201::1", 64)}
    [v6] = [a for a in info["addr_info"] if a["local"] == "fd00:201::1"]
    assert v6.get("nodad") and not v6.get("tentative")

    _assert_echo_reply(out["v4"]["request"], out["v4"]["reply"])
    _assert_echo_reply(out["v6"]["request"], out["v6"]["reply"])
    assert out["garbage_write"] == 22  # EINVAL: the kernel refuses a non-IP frame


@pytest.mark.netns
def test_udp_crosses_the_tun_both_ways(netns_factory):
    require_netns()
    out = netns_factory().call(inside_udp)
    for key, local, peer in (("v4", "10.201.0.1", V4_PEER), ("v6", "fd00:201::1", V6_PEER)):
        assert out[key]["received"] == ["into the host", peer, 40000]
        sent = packets.parse_ip(bytes.fromhex(out[key]["sent"]))
        assert (str(sent.src), str(sent.dst)) == (local, peer)
        assert packets.parse_udp(sent) == (out[key]["port"], 40001, b"out to the peer")


@pytest.mark.netns
def test_routes_go_through_the_tun_and_configuring_twice_is_harmless(netns_factory):
    require_netns()
    out = netns_factory().call(inside_routes)

    v4 = {r["dst"]: r for r in out["v4"]}
    assert v4["10.209.0.0/16"]["scope"] == "link"
    assert "10.201.0.0/24" in v4
    assert any(r["dst"] == "fd00:209::/48" for r in out["v6"])
    [info] = out["addrs"]
    assert sum(a["local"] == "10.201.0.1" for a in info["addr_info"]) == 1


@pytest.mark.netns
def test_configure_does_not_import_pyroute2(netns_factory):
    require_netns()
    out = netns_factory().call(inside_no_pyroute2)
    assert out["before"] == []
    assert out["after"] == []
    assert out["underlay_none"] == MTU  # the TUN is the only up, non-loopback interface


@pytest.mark.netns
def test_set_mtu_alone_touches_nothing_else(netns_factory):
    """configure_interface = no (netifd on OpenWrt): only the MTU, by ioctl, no helper."""
    require_netns()
    out = netns_factory().call(inside_set_mtu_only)
    assert out["mtu"] == 1360
    assert out["up"] is False and out["addresses"] == ""  # netifd's to do
    assert out["pyroute2"] == []
    assert out["errors"]["40"] == "configuring 'vpct0': MTU 40 is outside 68..65535"
    assert out["errors"]["70000"] == "configuring 'vpct0': MTU 70000 is outside 68..65535"
    assert out["errors"]["missing"] == "setting MTU 1400 on 'nope0': No such device"


@pytest.mark.netns
def test_interface_disappears_when_fd_closed(netns_factory):
    require_netns()
    host = netns_factory()
    out = host.call(inside_close_removes_interface)
    assert out == {"present_while_open": True, "present_after_close": False}
    assert host.link_names() == ["lo"]


@pytest.mark.netns
def test_interface_disappears_when_owner_is_killed(netns_factory):
    require_netns()
    host = netns_factory()
    code = "import test_tun_linux as t; t.inside_hold_tun()"
    proc = host.popen(
        [sys.executable, "-c", code],
        env=python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().split() == ["ready", TUN]
    assert TUN in host.link_names()
    proc.kill()  # SIGKILL: no chance to clean up, the kernel must do it
    proc.wait(10)
    deadline = time.monotonic() + 5
    while TUN in host.link_names() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.link_names() == ["lo"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "interface name is empty"),
        ("x" * 16, "is longer than 15 characters"),
        ("é" * 8, "is longer than 15 bytes"),
        ("a/b", "contains '/'"),
        ("a b", "contains ' '"),
        ("a\tb", "contains '\\t'"),
        ("eth0:1", "contains ':'"),
        ("..", "is not allowed"),
        ("tun%s", "'%' is only allowed once, as '%d'"),
        ("t%d%d", "'%' is only allowed once, as '%d'"),
    ],
)
def test_bad_names_are_refused_before_touching_the_kernel(name, fragment):
    from vpncrypt.tun import TunError, open_tun

    with pytest.raises(TunError) as info:
        open_tun(name)
    _one_line(str(info.value))
    assert fragment in str(info.value)


def test_valid_names_pass_validation():
    from vpncrypt.tun.linux import validate_name

    for name in ("v", "x" * 15, "vpn%d", "wg-home_1.2", "tunnel@lan"):
        assert validate_name(name) == name.encode()


@pytest.mark.netns
def test_kernel_name_errors_are_clear(netns_factory):
    require_netns()
    out = netns_factory().call(inside_kernel_name_errors)
    assert out["pattern"] == "vpct0"
    assert out["busy"] == "TUN 'vpct0' is already open elsewhere (another vpncrypt running?)"
    assert out["other_kind"] == (
        "cannot create TUN 'lo': an interface of another kind already has that name"
    )


@pytest.mark.netns
def test_configuration_errors_are_one_line(netns_factory):
    require_netns()
    a, b = netns_factory(), netns_factory()
    veth, _ = link(a, b, "10.200.2.1/24", "10.200.2.2/24")
    a.add_route("10.202.0.0/24", "via", "10.200.2.2")
    out = a.call(inside_config_errors, "10.202.0.0/24")

    for message in out.values():
        _one_line(message)
    assert out["missing"] == "no such interface 'nope0'"
    assert out["conflict"] == (
        f"adding route 10.202.0.0/24 via '{TUN}': "
        f"a route to 10.202.0.0/24 already exists via {veth}"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("vpn0", [], 10, []), "MTU 10 is outside 68..65535"),
        (("vpn0", ["fd00::1/64"], 1200, []), "MTU 1200 is below 1280"),
        (("vpn0", ["10.0.0.300/24"], 1400, []), "does not appear to be an IPv4 or IPv6"),
        (("vpn0", [], 1400, ["10.0.0.1/8"]), "has host bits set"),
        (("vpn%d", [], 1400, []), "is a pattern"),
    ],
)
def test_bad_configuration_arguments_are_refused_in_process(args, fragment):
    from vpncrypt.tun import TunError, configure_interface

    with pytest.raises(TunError) as info:
        configure_interface(*args)
    _one_line(str(info.value))
    assert fragment in str(info.value)


@pytest.mark.netns
def test_underlay_mtu_follows_the_route(netns_factory):
    require_netns()
    a, b = netns_factory(), netns_factory()
    veth, _ = link(
        a, b, ["10.200.1.1/24", "fd00:200:1::1/64"], ["10.200.1.2/24", "fd00:200:1::2/64"]
    )
    a.set_mtu(veth, 1380)
    # A route with its own MTU: the kernel would use that, not the interface's.
    a.add_route("10.200.9.0/24", "via", "10.200.1.2", "mtu", "1300")
    # A jumbo link that is down must not count as "the largest up interface".
    jumbo, _ = link(a, b, mtu=9000)
    a.set_up(jumbo, False)

    dests = ["10.200.1.2", "fd00:200:1::2", "10.200.9.7", "203.0.113.7", None]
    out = a.call(inside_underlay, dests)
    assert out["10.200.1.2"] == 1380
    assert out["fd00:200:1::2"] == 1380
    assert out["10.200.9.7"] == 1300
    assert out["None"] == 1380
    _one_line(out["203.0.113.7"])
    assert out["203.0.113.7"] == "no route to 203.0.113.7: Network is unreachable"

    a.set_up(jumbo)
    a.wait_oper_up(jumbo)
    assert a.call(inside_underlay, [None]) == {"None": 9000}


def test_underlay_mtu_refuses_a_non_address():
    from vpncrypt.tun import TunError, underlay_mtu

    with pytest.raises(TunError, match="'example.org' is not an IP address"):
        underlay_mtu("example.org")


@pytest.mark.parametrize("machine, tunsetiff, tunsetoffload", [
    ("x86_64", 0x400454CA, 0x400454D0),   # <asm-generic/ioctl.h>: write = 1, 14 size bits
    ("armv7l", 0x400454CA, 0x400454D0),
    ("aarch64", 0x400454CA, 0x400454D0),
    ("s390x", 0x400454CA, 0x400454D0),
    ("mips", 0x800454CA, 0x800454D0),     # arch/mips/include/uapi/asm/ioctl.h: write = 4
    ("mips64", 0x800454CA, 0x800454D0),
    ("ppc64le", 0x800454CA, 0x800454D0),  # arch/powerpc/include/uapi/asm/ioctl.h
])
def test_tun_ioctl_numbers_per_cpu(machine: str, tunsetiff: int, tunsetoffload: int) -> None:
    """TUNSETIFF/TUNSETOFFLOAD as each architecture's kernel headers encode _IOW: the
    generic number is an unknown ioctl on a MIPS router."""
    from vpncrypt.tun import linux

    assert linux._iow("T", 202, 4, machine) == tunsetiff
    assert linux._iow("T", 208, 4, machine) == tunsetoffload


def test_tun_ioctl_numbers_match_this_kernel_header() -> None:
    """This machine's constants equal what its C compiler gets from <linux/if_tun.h>."""
    import shutil
    import tempfile

    from vpncrypt.tun import linux

    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "gcc is needed (scripts/setup.sh installs it)"
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/n.c"
        with open(src, "w") as f:
            f.write('#include <stdio.h>\n#include <sys/ioctl.h>\n#include <linux/if_tun.h>\n'
                    'int main(void){printf("%lu %lu\\n",(unsigned long)TUNSETIFF,'
                    '(unsigned long)TUNSETOFFLOAD);return 0;}\n')
        subprocess.run([cc, "-o", f"{tmp}/n", src], check=True)
        out = subprocess.run([f"{tmp}/n"], capture_output=True, text=True, check=True).stdout
    assert [int(v) for v in out.split()] == [linux.TUNSETIFF, linux.TUNSETOFFLOAD]
