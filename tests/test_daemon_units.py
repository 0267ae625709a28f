"""Daemon pieces without I/O: allowed-IPs routing, inner packet parsing, ICMP replies, log
limits and log line formats."""

import ipaddress
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import packets
from vpncrypt.daemon import ippacket
from vpncrypt.daemon.logs import RateLimiter, kv
from vpncrypt.daemon.routing import AllowedIPs


def networks(version):
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits)).map(
        lambda t: make((t[0] >> (bits - t[1]) << (bits - t[1]), t[1])))


@settings(max_examples=200, deadline=None)
@given(nets=st.lists(st.one_of(networks(4), networks(6)), max_size=30),
       probes=st.lists(st.one_of(st.integers(0, 2**32 - 1).map(lambda a: (4, a)),
                                 st.integers(0, 2**128 - 1).map(lambda a: (6, a))), max_size=30),
       seed=st.integers(0, 1000))
def test_longest_prefix_match_agrees_with_brute_force(nets, probes, seed):
    table, owners = AllowedIPs(), {}
    for i, net in enumerate(nets):
        table.add(net, i)
        owners[net] = i  # a later identical network replaces the earlier owner
    rng = random.Random(seed)
    # Probe addresses inside the networks too, not only random ones.
    for net in nets[:10]:
        probes.append((net.version, int(net.network_address) + rng.randrange(net.num_addresses)))
    for version, addr in probes:
        ip = ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr)
        matches = [n for n in owners if n.version == version and ip in n]
        expected = owners[max(matches, key=lambda n: n.prefixlen)] if matches else None
        assert table.lookup(version, addr) == expected


def test_addresses_of_inner_packets():
    v4 = packets.echo_request("10.1.2.3", "10.9.8.7")
    v6 = packets.echo_request("fd00::1", "fd00::2")
    assert ippacket.addresses(v4) == (4, int(ipaddress.ip_address("10.1.2.3")),
                                      int(ipaddress.ip_address("10.9.8.7")))
    assert ippacket.addresses(v6) == (6, int(ipaddress.ip_address("fd00::1")),
                                      int(ipaddress.ip_address("fd00::2")))
    for bad in (b"", b"\x45" * 19, b"\x60" * 39, b"\x00" * 60, b"\x55" * 60):
        assert ippacket.addresses(bad) is None


def test_icmp_fragmentation_needed_is_well_formed():
    big = packets.ipv4("10.1.0.9", "10.2.0.1", 17, bytes(1500), dont_fragment=True)
    reply = ippacket.too_big(big, 1400, ipaddress.ip_address("10.1.0.1").packed, None)
    ip = packets.parse_ip(reply)  # checks the header checksum and lengths
    assert (str(ip.src), str(ip.dst), ip.proto) == ("10.1.0.1", "10.1.0.9", 1)
    icmp = ip.payload
    assert icmp[0] == 3 and icmp[1] == 4  # destination unreachable, fragmentation needed
    assert int.from_bytes(icmp[6:8], "big") == 1400
    assert packets.checksum(icmp) == 0
    assert icmp[8:] == big[:28]  # quotes the IP header and 8 bytes of payload
    no_df = packets.ipv4("10.1.0.9", "10.2.0.1", 17, bytes(1500), dont_fragment=False)
    assert ippacket.too_big(no_df, 1400, b"\x0a\x01\x00\x01", None) is None


def test_icmpv6_packet_too_big_is_well_formed():
    big = packets.ipv6("fd00::9", "fd00:2::1", 17, bytes(1500))
    ours = ipaddress.ip_address("fd00::1").packed
    reply = ippacket.too_big(big, 1400, None, ours)
    ip = packets.parse_ip(reply)
    assert (str(ip.src), str(ip.dst), ip.proto) == ("fd00::1", "fd00::9", 58)
    assert len(reply) <= 1280
    body = ip.payload
    assert body[0] == 2 and int.from_bytes(body[4:8], "big") == 1400
    pseudo = packets.pseudo_header("fd00::1", "fd00::9", 58, len(body))
    assert packets.checksum(pseudo + body) == 0
    assert ippacket.too_big(big, 1400, b"\x0a\x00\x00\x01", None) is None  # no v6 address


def test_rate_limiter_holds_back_and_counts():
    limiter = RateLimiter(interval=10.0, max_keys=3)
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("a", 1.0) is None
    assert limiter.allow("a", 2.0) is None
    assert limiter.allow("b", 2.0) == 0
    assert limiter.allow("a", 10.0) == 2  # two lines were held back
    for key in "cdefgh":  # a flood of distinct keys keeps the table bounded
        limiter.allow(key, 11.0)
    assert len(limiter._next) <= 3


def test_kv_quotes_values_with_spaces():
    assert kv("drop", reason="auth", detail="a b") == 'drop reason=auth detail="a b"'
    assert kv("x", empty="") == 'x empty=""'


def test_rate_limiter_caps_lines_over_all_keys():
    limiter = RateLimiter(interval=10.0, rate=5.0)
    allowed = [limiter.allow(("auth", f"192.0.2.{i}"), 100.0) for i in range(50)]
    assert sum(a is not None for a in allowed) == 5  # 50 spoofed sources, 5 lines
    assert limiter.allow(("auth", "192.0.2.99"), 101.0) == 0  # refilled a second later


def test_log_lines_keep_the_logging_formats(monkeypatch, capsys, tmp_path):
    import re
    import socket

    from vpncrypt.daemon import logs

    logs.setup(False, True)
    logs.log.warning("drop reason=%s n=%d", "auth", 3)
    logs.log.debug("only with --verbose")
    logs.log.info("100% literal")
    logs.setup(True, True)
    logs.log.debug("now %s", "shown")
    lines = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" vpncryptd: WARNING drop reason=auth n=3", lines[0])
    assert re.fullmatch(stamp + r" vpncryptd: INFO 100% literal", lines[1])
    assert re.fullmatch(stamp + r" vpncryptd: DEBUG now shown", lines[2]) and len(lines) == 3

    # Detached: one datagram per line to /dev/log (here a socket of the test's own).
    path = str(tmp_path / "log")
    syslogd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslogd.bind(path)

    def connect():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(path)
        return sock

    monkeypatch.setattr(logs, "_connect_syslog", connect)
    logs.setup(False, False)
    logs.log.warning("drop reason=%s", "stale")
    logs.log.info("started")
    logs.log.debug("not without --verbose")
    pid = os.getpid()
    assert syslogd.recv(4096) == b"<28>vpncryptd[%d]: drop reason=stale\0" % pid
    assert syslogd.recv(4096) == b"<30>vpncryptd[%d]: started\0" % pid
    syslogd.setblocking(False)
    with pytest.raises(BlockingIOError):
        syslogd.recv(4096)
    logs.log._syslog.close()
    logs.log.__init__()


DROP_CHILD = """
import os, sys
from vpncrypt.daemon import privileges
if sys.argv[1] == "ctypes":  # the path taken without the native extension
    sys.modules["vpncrypt._fast"] = None
import pwd
privileges.drop(pwd.getpwnam("nobody"))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(status["Uid"].split()[0], int(status["CapEff"], 16), int(status["CapPrm"], 16),
      "ctypes" in sys.modules)
"""


@pytest.mark.parametrize("path", ["native", "ctypes"])
def test_privilege_drop_system_calls(path):
    """prctl/capset through the extension (no ctypes in the daemon) and through ctypes
    (no extension): the same uid and capabilities either way. Needs root: in CI, fails
    rather than skips without it."""
    import pwd
    import subprocess
    import sys

    from netns import python_env
    from vpncrypt.daemon import privileges

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root to drop privileges (CI runs as root)")
        pytest.skip("needs root")
    out = subprocess.run([sys.executable, "-c", DROP_CHILD, path], capture_output=True,
                         text=True, env=python_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    uid, eff, prm, loaded_ctypes = out.stdout.split()
    kept = sum(1 << cap for cap in privileges.KEPT)
    assert (int(uid), int(eff), int(prm)) == (pwd.getpwnam("nobody").pw_uid, kept, kept)
    assert loaded_ctypes == ("True" if path == "ctypes" else "False")


def test_roaming_budget_of_the_python_loop():
    """PeerState.may_open (the Python loop's twin of the native ROAM_RATE): from the
    endpoint always; from elsewhere, or before there is an endpoint, ROAM_RATE a second,
    with a burst of one second's worth, refilled with time (never by a clock going back)."""
    from types import SimpleNamespace

    from vpncrypt.daemon.server import ROAM_RATE, PeerState

    peer = PeerState(SimpleNamespace(name="a", id=1, allowed_ips=()))
    home, away = ("192.0.2.1", 5000), ("198.51.100.7", 6000)
    assert sum(peer.may_open(away, 50.0) for _ in range(5000)) == ROAM_RATE  # no endpoint yet
    peer.endpoint = home
    assert all(peer.may_open(home, 100.0) for _ in range(5000))
    assert sum(peer.may_open(away, 100.0) for _ in range(5000)) == ROAM_RATE
    assert not peer.may_open(away, 100.0)
    assert sum(peer.may_open(away, 100.5) for _ in range(5000)) == ROAM_RATE / 2
    assert not peer.may_open(away, 90.0)  # the clock stepped back: no refill
    assert sum(peer.may_open(away, 200.0) for _ in range(5000)) == ROAM_RATE  # capped


# --------------------------------------------------------------------- pins (pinning.py)

def test_pins_follow_the_foreign_rate_with_the_sample_scaled_back():
    """A client named from elsewhere at twice the budget or more is pinned; while pinned,
    its count is the filter's sample, scaled back up, and the sample follows the rate so
    that 1..3 budgets a second pass; the pin is lifted QUIET s after the estimate last
    reached twice the budget."""
    from vpncrypt.daemon.pinning import QUIET, Pins

    pins = Pins(budget=1000.0)
    assert pins.update({1: 10**6}, 100.0) == ([], [], False)  # the first call starts the clock
    # 0.5 s: client 1 just under 2000/s, client 2 at it: pinned, 1 in 2 kept.
    assert pins.update({1: 999, 2: 1000}, 100.5) == ([(2, 2000.0)], [], True)
    assert pins.samples() == {2: 2}
    # The flood grows to 50 000/s: what the filter kept (25 000/s) is scaled back up, and
    # the sample becomes 32 (1 562/s kept, within 1..2 budgets).
    assert pins.update({2: 25_000}, 101.5) == ([], [], True)
    assert pins.samples() == {2: 32}
    # Steady, with noise in the count: the filter is left alone.
    for t, count in enumerate((1562, 1400, 1700, 1100, 2900, 1562)):
        assert pins.update({2: count}, 102.5 + t) == ([], [], False)
    # The flood stops: the sample drops back to 2 at once, the pin goes QUIET s after the
    # last time over the rate.
    now = 107.5
    assert pins.update({}, now + 1) == ([], [], True) and pins.samples() == {2: 2}
    assert pins.update({}, now + QUIET - 0.5) == ([], [], False)
    assert pins.update({}, now + QUIET) == ([], [(2, 0.0)], True)
    assert pins.pinned == {}
    # A clock that did not move changes nothing.
    assert pins.update({5: 10**6}, now + QUIET) == ([], [], False)


@given(st.floats(min_value=2000, max_value=2_000_000))
def test_pin_sample_passes_one_to_two_budgets(rate):
    """So the roaming budget is still spent in full (a roaming client's odds are those
    without the pin), and the daemon reads no more than two budgets' worth."""
    from vpncrypt.daemon.pinning import MAX_SAMPLE, Pins

    pins = Pins(budget=1000.0)
    sample = pins.sample_for(rate)
    assert sample & (sample - 1) == 0 and 2 <= sample <= MAX_SAMPLE
    assert 1000.0 <= rate / sample < 2000.0 or sample == MAX_SAMPLE


def test_pins_are_capped_and_forgotten_with_their_clients():
    from vpncrypt.daemon.pinning import MAX_PINS, Pins

    pins = Pins(budget=1000.0)
    pins.update({}, 0.0)
    flood = {cid: 2000 for cid in range(1, MAX_PINS + 50)}
    added, _, _ = pins.update(flood, 1.0)
    assert len(added) == len(pins.pinned) == MAX_PINS  # the first ones; the rest wait
    assert pins.forget([1, 2, 10**5]) and len(pins.pinned) == MAX_PINS - 2
    assert not pins.forget([10**5])
    added, _, _ = pins.update(flood, 2.0)  # freed room goes to the next ones over the rate
    assert len(added) == 2 and len(pins.pinned) == MAX_PINS


# --------------------------------------------------------------------- replay state files

def test_replay_state_files_take_turns_and_survive_a_torn_save(tmp_path):
    from vpncrypt.daemon.replaystate import ReplayStateFiles

    path = str(tmp_path / "vpn0.replay")
    files = ReplayStateFiles(path)
    for p in (path, path + ".1"):
        assert os.stat(p).st_mode & 0o777 == 0o600
    assert files.load() == ({}, None)  # new, empty files: nothing to restore, no warning
    files.save({"1": 1764100000, "7": 1764100005})
    files.save({"1": 1764100010, "7": 1764100015, "9": 5})
    files.close()
    # Each save went to the other file; a fresh start takes the newer one.
    assert open(path + ".1").read().startswith("1 1764100000\n")
    assert open(path).read().startswith("1 1764100010\n")
    again = ReplayStateFiles(path)
    assert again.load() == ({"1": 1764100010, "7": 1764100015, "9": 5}, None)
    # A third save cut short (kill -9 mid-write): a new beginning over the old file,
    # no complete trailer. The save before it is still there and is what counts.
    with open(path + ".1", "r+b") as f:
        f.write(b"1 1764100020\n7 17641")
    assert ReplayStateFiles(path).load() == ({"1": 1764100010, "7": 1764100015, "9": 5}, None)
    # A flipped bit in the other fails its CRC: now neither file is whole (a damaged
    # disk, files from elsewhere), so nothing is restored, and that is said.
    data = bytearray(open(path, "rb").read())
    data[3] ^= 1
    open(path, "wb").write(bytes(data))
    assert ReplayStateFiles(path).load() == ({}, "no complete save")


def test_replay_state_files_refuse_a_symlink(tmp_path):
    from vpncrypt.daemon.replaystate import ReplayStateError, ReplayStateFiles

    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", tmp_path / "vpn0.replay")
    with pytest.raises(ReplayStateError, match=r"^replay state .*vpn0\.replay: "):
        ReplayStateFiles(str(tmp_path / "vpn0.replay"))


def test_state_directory_must_be_ours_alone(tmp_path):
    from vpncrypt.daemon.runtime import FatalError, check_state_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    check_state_dir(str(state))
    os.chmod(state, 0o770)
    with pytest.raises(FatalError, match=r"mode 0770: it must be uid \d+'s, writable by it alone"):
        check_state_dir(str(state))
    if os.geteuid() == 0:
        # What an older vpncryptd left: the directory and its files handed to `nobody`.
        # Root takes them back (a symlink is changed itself, not what it points to).
        (state / "vpn0.replay").write_text("1 1764000000\n")
        (tmp_path / "elsewhere").write_text("")
        os.symlink(tmp_path / "elsewhere", state / "vpn1.replay")
        for path in (state / "vpn0.replay", tmp_path / "elsewhere"):
            os.chown(path, 65534, 65534)
        os.lchown(state / "vpn1.replay", 65534, 65534)
        os.chown(state, 65534, 65534)
        os.chmod(state, 0o755)
        check_state_dir(str(state))
        assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (0, 0o700)
        assert (state / "vpn0.replay").stat().st_uid == 0
        assert os.lstat(state / "vpn1.replay").st_uid == 0
        assert (tmp_path / "elsewhere").stat().st_uid == 65534
