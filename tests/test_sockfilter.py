"""The daemon's kernel socket filter and forced receive buffer
(vpncrypt/daemon/sockfilter.py), on real sockets.

A UDP socket on loopback with the filter attached, as the daemon attaches it, receives
datagrams of every type byte and of every short length: exactly the ones the role can
receive arrive, and the kernel counts the others as the socket's drops (the "drops"
column of /proc/net/udp6, where a dual-stack socket is listed). Loopback needs no root
and no namespace; Linux only. Pinned clients (a flood naming them) are tested the same
way. The daemons' use of it under a flood is in
tests/test_hostile.py::test_garbage_flood_legit_transfer_survives.

The receive buffer tests need root (SO_RCVBUFFORCE needs CAP_NET_ADMIN): without it they
skip, or fail when the CI environment variable is set.
"""

import os
import select
import socket
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import flooder
from netns import REPO_ROOT, python_env

from vpncrypt.daemon import sockfilter
from vpncrypt.daemon.pinning import MAX_PINS, MAX_SAMPLE
from vpncrypt.protocol import wire

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket filter")

# Every type byte at the smallest valid length, every short length with a valid type byte,
# and a few full-size ones.
SHORT = range(0, wire.MIN_PACKET)


def datagrams(role: str) -> list[bytes]:
    good = sorted(sockfilter.accepted_types(role))
    out = [bytes([t]) + bytes(wire.MIN_PACKET - 1) for t in range(256)]
    out += [(bytes([good[n % len(good)]]) + bytes(n))[:n] for n in SHORT]
    out += [bytes([t]) + os.urandom(1399) for t in (*good, 0x00, 0x05, 0x41, 0x83, 0xFF)]
    return out


def wanted(role: str, packets: list[bytes]) -> list[bytes]:
    types = sockfilter.accepted_types(role)
    return [p for p in packets if len(p) >= wire.MIN_PACKET and p[0] in types]


def socket_drops(sock: socket.socket) -> int:
    """The kernel's drop count of `sock` (its line in /proc/net/udp or udp6)."""
    port = sock.getsockname()[1]
    table = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    with open(table) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and int(fields[9]) == sock_inode(sock):
                return int(fields[-1])
    raise AssertionError(f"socket on port {port} not in {table}")


def sock_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def receive_all(sock: socket.socket, expect: int) -> list[bytes]:
    """Datagrams until `expect` arrived, or nothing more came within 1 s."""
    got = []
    while len(got) < expect or select.select([sock], [], [], 0.2)[0]:
        if not select.select([sock], [], [], 1.0)[0]:
            break
        got.append(sock.recv(65535))
    return got


def make_receiver(family: int, role: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if role is not None:
        assert sockfilter.attach(sock, role)
    sock.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock


@pytest.fixture(params=["native", "ctypes"])
def attach_via(request, monkeypatch):
    """The filter attached through the extension (as the daemon does) or through the
    ctypes fallback (the pure-Python install)."""
    if request.param == "native":
        if sockfilter._native_attach() is None:
            if os.environ.get("CI"):
                pytest.fail("the native extension is not built")
            pytest.skip("the native extension is not built")
    else:
        monkeypatch.setattr(sockfilter, "_native_attach", lambda: None)
    return request.param


@pytest.mark.parametrize("role", ["server", "client"])
@pytest.mark.parametrize("family,sender,dest", [
    (socket.AF_INET, socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, socket.AF_INET, "127.0.0.1"),  # IPv4 to a dual-stack socket
    (socket.AF_INET6, socket.AF_INET6, "::1"),
], ids=["v4", "v4-to-dual-stack", "v6"])
def test_filter_passes_exactly_what_the_role_receives(role, family, sender, dest, attach_via):
    if sender == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    packets = datagrams(role)
    want = wanted(role, packets)
    assert len(want) == 2 * len(sockfilter.accepted_types(role))  # 25 bytes, and 1400
    with make_receiver(family, role) as recv, socket.socket(sender, socket.SOCK_DGRAM) as send:
        port = recv.getsockname()[1]
        for p in packets:
            send.sendto(p, (dest, port))
        got = receive_all(recv, len(want))
        assert sorted(got) == sorted(want)
        # The kernel counted what it dropped (nothing else was dropped: the receive
        # buffer holds all of these with room to spare).
        assert socket_drops(recv) == len(packets) - len(want)


def test_without_filter_everything_arrives():
    """The control: the same datagrams on an unfiltered socket all arrive (so the filter
    test above does not pass by loopback losing datagrams)."""
    packets = datagrams("server")
    with make_receiver(socket.AF_INET, None) as recv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as send:
        for p in packets:
            send.sendto(p, ("127.0.0.1", recv.getsockname()[1]))
        assert sorted(receive_all(recv, len(packets))) == sorted(packets)
        assert socket_drops(recv) == 0


def test_filter_can_be_turned_off_by_the_environment():
    code = ("import socket; from vpncrypt.daemon import sockfilter; "
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "print(sockfilter.attach(s, 'server'))")
    for value, attached in (("off", "False"), ("", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=python_env({"VPNCRYPT_SOCKFILTER": value}), cwd=REPO_ROOT,
                             check=True).stdout
        assert out.strip() == attached


def test_unknown_role_gets_no_filter():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert sockfilter.attach(s, "?") is False


def test_program_is_well_formed():
    """Every jump lands inside the program, and it ends in the two returns."""
    for role in ("server", "client"):
        prog = sockfilter.program(role)
        assert len(prog) < sockfilter.MAX_INSNS
        check_jumps(prog)
        assert prog[-2] == (0x06, 0, 0, 0) and prog[-1][0] == 0x06 and prog[-1][3] > 0


SERVER_IDS = [1, 2, 3, 7, 9, 10, 100, 4242, 65535]


@pytest.mark.parametrize("family,sender,dest", [
    (socket.AF_INET, socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, socket.AF_INET6, "::1"),
], ids=["v4", "v6"])
def test_server_filter_drops_unknown_client_ids(family, sender, dest, attach_via):
    """Given the configured ids, the server's filter also drops datagrams naming any
    other id (every type a server receives); the configured ones all arrive."""
    if sender == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    probe = sorted(set(range(0, 130)) | {4241, 4242, 4243, 65534, 65535} | set(SERVER_IDS))
    packets = [packet(t, cid) for cid in probe for t in sockfilter.accepted_types("server")]
    want = [p for p in packets if int.from_bytes(p[1:3], "big") in SERVER_IDS]
    with make_receiver(family, None) as recv, socket.socket(sender, socket.SOCK_DGRAM) as send:
        assert sockfilter.attach(recv, "server", ids=SERVER_IDS)
        for p in packets:
            send.sendto(p, (dest, recv.getsockname()[1]))
        assert sorted(receive_all(recv, len(want))) == sorted(want)
        assert socket_drops(recv) == len(packets) - len(want)


@given(st.sets(st.integers(0, 65535), min_size=1, max_size=400), st.integers(1, 70))
def test_id_ranges_cover_every_id_within_the_limit(ids, limit):
    ranges = sockfilter.id_ranges(ids, limit)
    assert 1 <= len(ranges) <= limit
    assert all(a <= b < c for (a, b), (c, _) in zip(ranges, ranges[1:]))  # sorted, apart
    assert all(any(a <= cid <= b for a, b in ranges) for cid in ids)
    assert all(a in ids and b in ids for a, b in ranges)  # no wider than it needs be
    if len(ranges) < limit:  # nothing merged: exactly the ids
        assert sum(b - a + 1 for a, b in ranges) == len(ids)


def test_many_sparse_ids_fit_and_screen_a_superset():
    """5 000 ids spread over the whole space: 64 ranges, every configured id inside."""
    ids = set(range(3, 65536, 13))
    prog = sockfilter.program("server", ids=ids)
    assert len(prog) < 200 and len(sockfilter.id_ranges(ids)) == sockfilter.MAX_RANGES
    check_jumps(prog)
    with make_receiver(socket.AF_INET, None) as recv:
        assert sockfilter.attach(recv, "server", ids=ids)


def test_flooder_knows_what_the_server_filter_drops():
    """tests/flooder.py is standalone; its copy of the server's filter rule must agree."""
    assert flooder.MIN_PACKET == wire.MIN_PACKET
    assert flooder.SERVER_RECEIVES == sockfilter.accepted_types("server")
    packets = datagrams("server")  # client id 0, but for the 1400-byte random ones
    passed = wanted("server", packets)
    for p in packets:
        ids = {int.from_bytes(p[1:3], "big")}
        assert flooder.prescreened(p, ids) == (p not in passed)
        assert flooder.prescreened(p, {-1}) is True
    for cid in (0, 1, 9, 65535):
        assert flooder.prescreened(packet(1, cid), SERVER_IDS) == (cid not in SERVER_IDS)


def rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as f:
        return int(f.read())


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("receive buffer test needs root (CI is set)", pytrace=False)
    pytest.skip("receive buffer test needs root")


def test_receive_buffer_is_forced_past_rmem_max():
    require_root()
    size = 2 * rmem_max() + 4096  # more than SO_RCVBUF alone could give
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        assert sockfilter.force_receive_buffer(s, size) == 2 * size
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * size


FALLBACK = """
import socket, sys
from vpncrypt.daemon import sockfilter
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(sockfilter.force_receive_buffer(s, int(sys.argv[1])))
"""


def test_receive_buffer_without_cap_net_admin_falls_back_and_warns():
    """A process without CAP_NET_ADMIN (root, with it dropped from the bounding set by
    setpriv(1) before exec) gets what SO_RCVBUF gives, at most twice net.core.rmem_max,
    and a warning that says so."""
    require_root()
    size = 2 * rmem_max() + 4096
    proc = subprocess.run(["setpriv", "--bounding-set", "-net_admin", sys.executable, "-c",
                           FALLBACK, str(size)], capture_output=True, text=True,
                          env=python_env(), cwd=REPO_ROOT, check=True)
    assert int(proc.stdout) == 2 * rmem_max()
    assert "UDP receive buffer is" in proc.stderr and "net.core.rmem_max" in proc.stderr


# --------------------------------------------------------------------------- pinned clients

def send_counting(send: socket.socket, recv: socket.socket, packet: bytes, times: int) -> int:
    """Send `packet` `times` times in bursts the receive buffer holds; how many arrived."""
    port, dest, arrived = recv.getsockname()[1], send.getsockname()[0], 0
    for start in range(0, times, 200):
        for _ in range(min(200, times - start)):
            send.sendto(packet, (dest, port))
        # Loopback delivers within the send; the last burst gets a moment more.
        while select.select([recv], [], [], 0.05 if start + 200 >= times else 0)[0]:
            recv.recv(65535)
            arrived += 1
    return arrived


def packet(ptype: int, cid: int) -> bytes:
    return bytes([ptype]) + cid.to_bytes(2, "big") + bytes(wire.MIN_PACKET)


@pytest.mark.parametrize("family,sender,host", [
    (socket.AF_INET, socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, socket.AF_INET, "127.0.0.1"),  # endpoint ::ffff:127.0.0.1
    (socket.AF_INET6, socket.AF_INET6, "::1"),
], ids=["v4", "v4-to-dual-stack", "v6"])
def test_pinned_client_passes_from_its_endpoint_only_and_a_sample_from_elsewhere(
        family, sender, host, attach_via):
    """Client 7 is pinned to socket `a`'s address and port; client 8 is pinned without an
    endpoint; client 9 is not pinned. From `a`, everything of 7 and 9 arrives; from `b`
    (same address, another port), 7's and 8's DATA and keepalives come through 1 in
    SAMPLE (a binomial draw: 64 expected, the bounds are over 5 standard deviations
    away), their time
    requests all, and 9's all."""
    if sender == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    n = 64 * 64  # expect 64 through from elsewhere
    with make_receiver(family, None) as recv, socket.socket(sender, socket.SOCK_DGRAM) as a, \
            socket.socket(sender, socket.SOCK_DGRAM) as b:
        recv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        a.bind((host, 0))
        b.bind((host, 0))
        endpoint = a.getsockname()
        if family == socket.AF_INET6 and sender == socket.AF_INET:
            endpoint = ("::ffff:" + endpoint[0], endpoint[1])
        assert sockfilter.attach(recv, "server", {7: (endpoint, 64), 8: (None, 64)})
        for ptype in (wire.Kind.DATA, wire.Kind.KEEPALIVE, wire.Kind.TIME_REQUEST):
            assert send_counting(a, recv, packet(ptype, 7), 500) == 500
            assert send_counting(a, recv, packet(ptype, 9), 500) == 500
            assert send_counting(b, recv, packet(ptype, 9), 500) == 500
            for cid, src in ((7, b), (8, a), (8, b)):
                got = send_counting(src, recv, packet(ptype, cid), n)
                if ptype == wire.Kind.TIME_REQUEST:
                    assert got == n, (cid, got)
                else:
                    assert 20 <= got <= 140, (cid, ptype, got)
        # The pre-screen still runs first: a short or wrong-type datagram from the
        # endpoint is dropped.
        assert send_counting(a, recv, packet(0x05, 7), 100) == 0
        assert send_counting(a, recv, packet(wire.Kind.DATA, 7)[:wire.MIN_PACKET - 1], 100) == 0


def test_largest_pinned_program_is_accepted_by_the_kernel():
    pins = {cid: ((f"2001:db8::{cid:x}", 40000 + cid, 0, 0), MAX_SAMPLE)
            for cid in range(1, MAX_PINS + 1)}
    ids = set(range(3, 65536, 13))  # as many id ranges as there may be
    prog = sockfilter.program("server", pins, ids)
    assert len(prog) < sockfilter.MAX_INSNS
    check_jumps(prog)
    with make_receiver(socket.AF_INET6, None) as recv:
        assert sockfilter.attach(recv, "server", pins, ids)


def check_jumps(prog) -> None:
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert i + 1 + max(jt, jf) < len(prog)
    assert prog[-1][0] == 0x06  # ends in a return


def test_only_a_server_pins_and_samples_are_powers_of_two():
    with pytest.raises(ValueError):
        sockfilter.program("client", {1: (None, 2)})
    with pytest.raises(ValueError):
        sockfilter.program("server", {1: (None, 3)})
