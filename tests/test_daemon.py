"""The daemon end to end: real vpncryptd processes, TUN devices and UDP between namespaces."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hostile import REPLAY_SENDER, delta, filter_drops, udp_snmp
from netns import REPO_ROOT, TESTS_DIR, python_env
from vpnharness import (SERVER_TUN4, SERVER_TUN6, Deployment, client_tun4, client_tun6,
                        receiver_result, start_receiver, start_sender, transfer)

pytestmark = pytest.mark.netns

MB = 1 << 20
# The native loop (the default with the extension) and the Python fallback loop.
LOOPS = pytest.mark.parametrize("loop", ["native", "python"])
# Big enough to still be running when a test disturbs it 0.7 s in, on either loop.
LONG_TRANSFER = {"native": 768 * MB, "python": 192 * MB}  # native: offloads, 2+ Gbit/s;
# python: ~70 MB/s here (48 MB once crossed within the 0.7 s, CI 2026-12-07)


def assert_same(sent: dict, received: dict, size: int) -> None:
    assert sent["bytes"] == received["bytes"] == size
    assert sent["sha256"] == received["sha256"]


@LOOPS
@pytest.mark.parametrize("v6_underlay", [False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def test_ping_both_ways_ipv4_and_ipv6_inside(netns_factory, tmp_path, v6_underlay, loop):
    vpn = Deployment(netns_factory, tmp_path, v6_underlay=v6_underlay, loop=loop).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    vpn.ping(client, SERVER_TUN4)
    vpn.ping(client, SERVER_TUN6)
    vpn.ping(vpn.server_host, client_tun4(1))
    vpn.ping(vpn.server_host, client_tun6(1))
    log = vpn.server.text()
    underlay = r"\[fd00:200:1::2\]" if v6_underlay else r"10\.200\.1\.2"
    assert re.search(r"connected client=c1 id=1 endpoint=" + underlay, log), log
    assert "crypto native" in log or "crypto reference" in log


def test_interface_set_up_by_a_network_manager(netns_factory, tmp_path):
    """`configure_interface = no` (OpenWrt's netifd path): the daemons create their TUNs
    and set the MTU; addresses and link state come from ip(8), and pyroute2 is never
    needed (here it cannot even be imported, as on a router without it)."""
    shim = tmp_path / "no-pyroute2"
    (shim / "pyroute2").mkdir(parents=True)
    (shim / "pyroute2" / "__init__.py").write_text("raise ImportError('not on this router')\n")
    vpn = Deployment(netns_factory, tmp_path, configure=False)
    vpn.env["PYTHONPATH"] = os.pathsep.join([str(shim), REPO_ROOT, TESTS_DIR])
    vpn.start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    vpn.ping(client, SERVER_TUN6)
    vpn.ping(vpn.server_host, client_tun4(1))
    mtu = client.run(["cat", "/sys/class/net/vpn0/mtu"]).stdout.strip()
    assert mtu == "1448", mtu  # the veth's 1500 minus the overhead, set by the daemon
    sent, received = transfer(client, vpn.server_host, SERVER_TUN4, 4 * MB)
    assert_same(sent, received, 4 * MB)


@LOOPS
def test_64mb_tcp_transfer_checked_by_hash(netns_factory, tmp_path, loop):
    vpn = Deployment(netns_factory, tmp_path, loop=loop).start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    sent, received = transfer(vpn.client_host(), vpn.server_host, SERVER_TUN4, 64 * MB)
    assert_same(sent, received, 64 * MB)
    # And the other direction, over IPv6 inside the tunnel.
    sent, received = transfer(vpn.server_host, vpn.client_host(), client_tun6(1), 16 * MB, seed=2)
    assert_same(sent, received, 16 * MB)


@LOOPS
def test_three_clients_and_no_client_speaks_for_another(netns_factory, tmp_path, loop):
    vpn = Deployment(netns_factory, tmp_path, clients=3, loop=loop).start()
    for i in (1, 2, 3):
        vpn.wait_ping(vpn.client_host(i), SERVER_TUN4)
    receivers = [start_receiver(vpn.server_host, 6000 + i) for i in (1, 2, 3)]
    senders = [start_sender(vpn.client_host(i), SERVER_TUN4, 8 * MB, seed=i, port=6000 + i)
               for i in (1, 2, 3)]
    for send, recv in zip(senders, receivers):
        out, _ = send.communicate(timeout=180)
        assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), 8 * MB)
    # Client 1 forges client 2's tunnel address as the source: nothing gets through.
    c1 = vpn.client_host(1)
    c1.add_addr("vpn0", client_tun4(2) + "/32")
    forged = vpn.ping(c1, SERVER_TUN4, count=3, check=False, extra=["-I", client_tun4(2)])
    assert forged.returncode != 0 and " 0 received" in forged.stdout, forged.stdout
    vpn.server.wait_log(r"drop reason=spoofed-source client=c1 .*inner source 10\.201\.0\.3")
    stats = vpn.server.stats()
    assert int(stats["peers"]["c1"]["drop_spoofed-source"]) >= 3
    vpn.ping(c1, SERVER_TUN4)  # its own address still works


@LOOPS
def test_roaming_mid_transfer(netns_factory, tmp_path, loop):
    vpn = Deployment(netns_factory, tmp_path, loop=loop).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    size = LONG_TRANSFER[loop]
    recv = start_receiver(vpn.server_host)
    send = start_sender(client, SERVER_TUN4, size)
    time.sleep(0.7)
    assert send.poll() is None, "transfer finished before the move: make it larger"
    # Wi-Fi to LTE: the client's underlay address changes under the running transfer.
    client.replace_addr(vpn.links[0][1], "10.200.1.2/24", "10.200.1.77/24")
    out, _ = send.communicate(timeout=180)
    assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), size)
    vpn.server.wait_log(r"endpoint client=c1 id=1 old=10\.200\.1\.2:\d+ new=10\.200\.1\.77:\d+")
    assert vpn.server.stats()["peers"]["c1"]["roams"] == "1"


def test_server_killed_and_restarted_mid_transfer(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    size = LONG_TRANSFER["native"]
    recv = start_receiver(vpn.server_host)
    send = start_sender(client, SERVER_TUN4, size)
    time.sleep(0.7)
    assert send.poll() is None, "transfer finished before the kill: make it larger"
    vpn.server.kill(signal.SIGKILL)
    time.sleep(1.0)
    vpn.start_server()
    out, _ = send.communicate(timeout=180)
    assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), size)


def test_client_restart_is_accepted_again(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    vpn.clients[0].kill(signal.SIGKILL)
    vpn.start_client(1)
    started = time.monotonic()
    vpn.wait_ping(client, SERVER_TUN4, timeout=10)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("skew", [100, 10_000, -10_000])
def test_clock_skew(netns_factory, tmp_path, skew):
    vpn = Deployment(netns_factory, tmp_path)
    vpn.start_server()
    client = vpn.start_client(1, prefix=["faketime", "-f", f"{skew:+d}s"])
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    vpn.ping(vpn.client_host(), SERVER_TUN4)
    vpn.ping(vpn.server_host, client_tun4(1))
    m = client.wait_log(r"clock-sync correction=(\S+)s local_clock_off_by=(\S+)s")
    assert abs(float(m.group(2)) - skew) < 2, m.group(0)


def test_sigterm_removes_interface_and_sighup_reloads(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path, clients=2)
    # Start with only client 1 configured; client 2 is added by a reload.
    vpn.server_conf = vpn.write("server.conf", vpn.server_text(clients=[1]))
    vpn.start()
    vpn.wait_ping(vpn.client_host(1), SERVER_TUN4)
    assert vpn.ping(vpn.client_host(2), SERVER_TUN4, count=2, check=False).returncode != 0
    before = vpn.server.stats()["peers"]["c1"]
    vpn.write("server.conf", vpn.server_text(clients=[1, 2]))
    mark = len(vpn.server.text())
    vpn.server.proc.send_signal(signal.SIGHUP)
    vpn.server.wait_log(r"reloaded .*2 clients \(1 added, 0 removed\)", after=mark)
    vpn.wait_ping(vpn.client_host(2), SERVER_TUN4)
    after = vpn.server.stats()["peers"]["c1"]
    # Client 1's entry did not change: its endpoint and counters survived the reload.
    assert after["endpoint"] == before["endpoint"]
    assert int(after["rx_packets"]) >= int(before["rx_packets"])
    assert "vpn0" in vpn.server_host.link_names()
    assert vpn.server.stop() == 0
    assert "vpn0" not in vpn.server_host.link_names()


@LOOPS
def test_oversized_packet_is_answered_with_icmp_too_big(netns_factory, tmp_path, loop):
    """An inner packet over the tunnel MTU (here the client's TUN MTU raised behind the
    daemon's back) gets ICMP "fragmentation needed" / "packet too big" with the tunnel
    MTU back to its sender, not a silent black hole. The daemon answers from its own
    tunnel address, which a host drops as a martian unless told to accept it
    (accept_local): a router forwarding for a LAN never meets that."""
    vpn = Deployment(netns_factory, tmp_path, loop=loop).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    mtu = int(client.run(["cat", "/sys/class/net/vpn0/mtu"]).stdout)
    client.run(["ip", "link", "set", "vpn0", "mtu", str(mtu + 100)])
    client.run(["sysctl", "-qw", "net.ipv4.conf.vpn0.accept_local=1"])
    out = client.run(["ping", "-c", "2", "-W", "1", "-M", "do", "-s", str(mtu + 50 - 28),
                      SERVER_TUN4], check=False).stdout
    assert f"Frag needed and DF set (mtu = {mtu})" in out, out
    out = client.run(["ping", "-6", "-c", "2", "-W", "1", "-M", "do", "-s",
                      str(mtu + 50 - 48), SERVER_TUN6], check=False).stdout
    assert f"Packet too big: mtu={mtu}" in out, out
    vpn.ping(client, SERVER_TUN4)  # packets that fit still pass
    assert vpn.server.proc.poll() is None and vpn.clients[0].proc.poll() is None


def test_keepalives_only_while_the_tunnel_is_idle(netns_factory, tmp_path):
    """A client sends keepalives (here every second) when it has sent nothing else: data
    that the native loop sends keeps NAT mappings and the server's view fresh already, so
    a client busy with traffic both ways sends none, and an idle one sends them again."""
    from hostile import ONE_WAY_SINK, ONE_WAY_SOURCE, capture_client_packets

    vpn = Deployment(netns_factory, tmp_path, keepalive=1).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)

    def keepalives(traffic) -> int:
        packets = capture_client_packets(vpn, tmp_path, traffic)
        assert packets, "nothing captured"
        return sum(1 for p in packets if p[0] == 0x02)  # Kind.KEEPALIVE, client -> server

    # Pings both ways from well before the capture to after it.
    pinger = client.popen(["ping", "-q", "-i", "0.2", "-c", "40", SERVER_TUN4],
                          stdout=subprocess.DEVNULL)
    time.sleep(1.5)
    busy = keepalives(lambda: time.sleep(4))
    pinger.wait(30)
    time.sleep(1.5)
    idle = keepalives(lambda: time.sleep(4))
    # A one-way stream (nothing comes back) keeps them: their answers are the only sign
    # of a live server.
    sink = vpn.server_host.popen([sys.executable, "-c", ONE_WAY_SINK, SERVER_TUN4],
                                 stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    one_way = keepalives(lambda: client.run(
        [sys.executable, "-c", ONE_WAY_SOURCE, SERVER_TUN4, "4"], timeout=30))
    sink.kill()
    print(f"keepalives in 4 s: busy {busy}, idle {idle}, one-way {one_way}")
    assert busy == 0 and idle >= 3 and one_way >= 3, (busy, idle, one_way)


def test_config_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nlisten = 0.0.0.0:99999\n")
    proc = subprocess.run([sys.executable, "-m", "vpncrypt.cli.vpncryptd", "-c", str(bad), "-f"],
                          capture_output=True, text=True, env=python_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr




@LOOPS
def test_replayed_packets_never_reach_the_other_side(netns_factory, tmp_path, loop):
    vpn = Deployment(netns_factory, tmp_path, keepalive=0, loop=loop).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    vpn.segment_on_the_wire()
    pcap_path = str(tmp_path / "tunnel.pcap")
    dump = vpn.server_host.popen(["tcpdump", "-n", "-U", "-i", vpn.links[0][0], "-w", pcap_path,
                                  "udp port 51900"], stderr=subprocess.PIPE, text=True)
    assert "listening on" in dump.stderr.readline()
    vpn.ping(client, SERVER_TUN4, count=10)
    vpn.ping(vpn.server_host, client_tun4(1), count=10)
    sent, received = transfer(client, vpn.server_host, SERVER_TUN4, 2 * MB)
    assert_same(sent, received, 2 * MB)
    time.sleep(0.5)
    dump.send_signal(signal.SIGINT)
    dump.wait(10)

    from pcap import udp_payloads

    packets = udp_payloads(pcap_path)
    to_server = [p for p in packets if p[3] == 51900]
    to_client = [p for p in packets if p[1] == 51900]
    assert len(to_server) > 100 and len(to_client) > 50
    client_port = to_client[0][3]
    (tmp_path / "up.hex").write_text("\n".join(p[4].hex() for p in to_server))
    (tmp_path / "down.hex").write_text("\n".join(p[4].hex() for p in to_client))

    server_before = vpn.server.stats()["peers"]["c1"]
    client_before = vpn.clients[0].stats()
    snmp_before = udp_snmp(vpn.server_host)
    for delay in (0, 6):  # at once (duplicates), and after 6 s (stale)
        time.sleep(delay)
        client.python(REPLAY_SENDER, str(tmp_path / "up.hex"), "10.200.1.1", "51900")
        vpn.server_host.python(REPLAY_SENDER, str(tmp_path / "down.hex"), "10.200.1.2",
                               str(client_port))
    time.sleep(0.5)
    server_after = vpn.server.stats()["peers"]["c1"]
    client_after = vpn.clients[0].stats()
    # Nothing replayed was accepted (so nothing reached a TUN) and every copy was counted.
    assert server_after["rx_packets"] == server_before["rx_packets"]
    assert client_after["rx_packets"] == client_before["rx_packets"]

    def dropped(stats):
        return sum(int(v) for k, v in stats.items() if k.startswith("drop_"))

    # Time-sync requests carry no timestamp; a replayed one earns at most a (rate-limited)
    # answer, never an accepted packet. Every other replayed packet is a counted drop: by
    # the server, or by the kernel's socket filter once the burst (from another port than
    # c1's endpoint, thousands a second) got c1 pinned (daemon/pinning.py).
    timed_up = [p for p in to_server if p[4][0] != 0x03]
    snmp = delta(udp_snmp(vpn.server_host), snmp_before)
    filtered = filter_drops(snmp)
    assert dropped(server_after) - dropped(server_before) + filtered >= 2 * len(timed_up)
    assert dropped(client_after) - dropped(client_before) == 2 * len(to_client)
    # The replays came from another port, yet never moved the client's endpoint.
    assert "endpoint client=c1" not in vpn.server.text()
    # And the real tunnel still works.
    vpn.ping(client, SERVER_TUN4)


def test_client_follows_the_server_name_when_the_server_moves(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path, keepalive=2)
    client = vpn.client_host()
    # `ip netns exec` bind-mounts /etc/netns/NAME/hosts over /etc/hosts for the client.
    etc = f"/etc/netns/{client.name}"
    os.makedirs(etc, exist_ok=True)
    try:
        hosts = os.path.join(etc, "hosts")
        with open(hosts, "w") as f:
            f.write("10.200.1.1 vpn.test\n")
        vpn.write("client1.conf", vpn.client_text(1, 2).replace("10.200.1.1:51900",
                                                                 "vpn.test:51900"))
        vpn.start()
        vpn.clients[0].wait_log(r"server vpn\.test \(10\.200\.1\.1:51900\)")
        vpn.wait_ping(client, SERVER_TUN4)
        # The server gets a new address and DNS follows; the old address goes dark.
        vpn.server_host.replace_addr(vpn.links[0][0], "10.200.1.1/24", "10.200.1.5/24")
        with open(hosts, "r+") as f:  # in place: the bind mount keeps the same inode
            f.write("10.200.1.5 vpn.test\n")
            f.truncate()
        vpn.clients[0].wait_log(r"server-silent", timeout=30)
        vpn.clients[0].wait_log(r"server-address server=vpn\.test old=10\.200\.1\.1:51900 "
                                r"new=10\.200\.1\.5:51900", timeout=15)
        vpn.wait_ping(client, SERVER_TUN4, timeout=15)
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_detached_daemon_reports_start_up(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path)
    argv = [sys.executable, "-m", "vpncrypt.cli.vpncryptd", "-c", vpn.server_conf]
    # Detached, it returns once the server is up (exit 0) and keeps running.
    up = vpn.server_host.run(argv, env=python_env(), check=False, timeout=30)
    assert up.returncode == 0, up.stderr
    assert "vpn0" in vpn.server_host.link_names()
    # A second one fails to start (the port is taken): the failure reaches the terminal.
    again = vpn.server_host.run(argv, env=python_env(), check=False, timeout=30)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vpncryptd: "), again.stderr


def test_daemons_drop_root_after_set_up(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    for daemon in (vpn.server, vpn.clients[0]):
        daemon.wait_log(r"running as nobody \(uid 65534\) with CAP_NET_ADMIN and "
                        r"CAP_DAC_READ_SEARCH only")
        status = open(f"/proc/{daemon.proc.pid}/status").read()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
        assert uids == ("65534",) * 4, status
        assert re.search(r"^Groups:\s*$", status, re.M), status
        cap_eff = int(re.search(r"^CapEff:\s+([0-9a-f]+)", status, re.M).group(1), 16)
        cap_prm = int(re.search(r"^CapPrm:\s+([0-9a-f]+)", status, re.M).group(1), 16)
        assert cap_eff == cap_prm == (1 << 12) | (1 << 2), hex(cap_eff)  # NET_ADMIN, DAC_READ_SEARCH
        # Every thread, the native loop's included, runs with the same reduced rights.
        for task in os.listdir(f"/proc/{daemon.proc.pid}/task"):
            tstatus = open(f"/proc/{daemon.proc.pid}/task/{task}/status").read()
            assert re.search(r"^Uid:\s+65534\s", tstatus, re.M)
            assert int(re.search(r"^CapEff:\s+([0-9a-f]+)", tstatus, re.M).group(1), 16) == cap_eff
    # The private control socket still answers root, and traffic still flows.
    vpn.ping(vpn.client_host(), SERVER_TUN4)
    assert vpn.server.stats()["role"] == "server"
    # Nothing in the state directory is the unprivileged user's (other services may run
    # as `nobody` too), yet the daemon keeps saving its replay state there.
    for name in ("server", "client1"):
        state = vpn.state_dir(name)
        st = os.stat(state)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), (state, st)
        entries = sorted(os.listdir(state))
        assert entries == ["vpn0.replay", "vpn0.replay.1", "vpn0.sock"], entries
        for entry in entries:
            assert os.stat(os.path.join(state, entry)).st_uid == 0, entry
            assert os.stat(os.path.join(state, entry)).st_mode & 0o077 == 0, entry
    before = {p: open(p).read() for p in glob.glob(os.path.join(vpn.state_dir("server"), "*.replay*"))}
    time.sleep(1.2)
    vpn.ping(vpn.client_host(), SERVER_TUN4)
    time.sleep(1.2)  # saved every 0.5 s
    after = {p: open(p).read() for p in before}
    assert after != before and all(re.search(r"^end \d+ \d+$", t, re.M) for t in after.values())


def capture_tunnel(vpn, tmp_path, traffic):
    """Run `traffic()` while capturing the server's underlay; return client->server payloads."""
    from hostile import capture_client_packets

    return capture_client_packets(vpn, tmp_path, traffic)


@LOOPS
@pytest.mark.parametrize("how", ["sigterm", "sigkill", "state-lost"])
def test_replays_across_a_server_restart_are_refused(netns_factory, tmp_path, loop, how):
    """Captured client packets replayed at a restarted server: none accepted, whether the
    server saved its replay state (SIGTERM), was killed (SIGKILL), or lost the state as a
    router's tmpfs /run loses it at a reboot (then its start time is the floor)."""
    vpn = Deployment(netns_factory, tmp_path, keepalive=0, loop=loop).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)

    def traffic():
        vpn.ping(client, SERVER_TUN4, count=5)
        sent, received = transfer(client, vpn.server_host, SERVER_TUN4, 1 * MB)
        assert_same(sent, received, 1 * MB)

    captured = capture_tunnel(vpn, tmp_path, traffic)
    assert len(captured) > 50
    time.sleep(1.0)  # a steady tunnel: its state has been saved (every 0.5 s)
    if how == "sigterm":
        assert vpn.server.stop() == 0
    else:
        vpn.server.kill(signal.SIGKILL)
    if how == "state-lost":
        for path in glob.glob(os.path.join(vpn.state_dir("server"), "*.replay*")):
            os.unlink(path)
        time.sleep(1.0)  # the restart comes after the capture's last second
    vpn.start_server()
    if how == "state-lost":
        vpn.server.wait_log(r"running as")  # the windows are set up right after
        time.sleep(0.3)
    else:
        vpn.server.wait_log(r"replay state restored for 1 sender")
    (tmp_path / "up.hex").write_text("\n".join(p.hex() for p in captured))
    client.python(REPLAY_SENDER, str(tmp_path / "up.hex"), "10.200.1.1", "51900")
    time.sleep(0.5)
    stats = vpn.server.stats()["peers"]
    # Nothing captured before the restart was accepted by the new server process.
    assert "c1" not in stats or stats["c1"]["rx_packets"] == "0", stats
    if how == "state-lost":
        vpn.server.wait_log(r"replay windows start at \d+: nothing sent before")
    # The real client gets through again (within the 2-s margin of the restored state).
    vpn.wait_ping(client, SERVER_TUN4, timeout=15)


@LOOPS
def test_replays_to_a_client_restarted_without_state_are_refused(netns_factory, tmp_path, loop):
    """A router reboots: its /run (tmpfs) lost the replay state. Server->client packets
    captured before the reboot, replayed at the restarted client once it has synced its
    clock: none accepted (its first time sync sets the floor at its start)."""
    from pcap import udp_payloads

    vpn = Deployment(netns_factory, tmp_path, keepalive=0, loop=loop).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    vpn.segment_on_the_wire()
    pcap_path = str(tmp_path / "down.pcap")
    dump = vpn.server_host.popen(["tcpdump", "-n", "-U", "-i", vpn.links[0][0], "-w", pcap_path,
                                  "udp src port 51900"], stderr=subprocess.PIPE, text=True)
    assert "listening on" in dump.stderr.readline()
    vpn.ping(vpn.server_host, client_tun4(1), count=10)
    time.sleep(0.5)
    dump.send_signal(signal.SIGINT)
    dump.wait(10)
    down = [p[4] for p in udp_payloads(pcap_path) if p[1] == 51900]
    assert len(down) >= 10
    vpn.clients[0].kill(signal.SIGKILL)
    for path in glob.glob(os.path.join(vpn.state_dir("client1"), "*.replay*")):
        os.unlink(path)
    time.sleep(1.0)  # the restart comes after the capture's last second
    restarted = vpn.start_client(1)
    restarted.wait_log(r"clock-sync")
    time.sleep(0.3)
    port = re.search(r"0\.0\.0\.0:(\d+)\s", client.run(["ss", "-H", "-uan"]).stdout)
    assert port, "the restarted client's UDP socket"
    before = restarted.stats()
    (tmp_path / "down.hex").write_text("\n".join(p.hex() for p in down))
    vpn.server_host.python(REPLAY_SENDER, str(tmp_path / "down.hex"), "10.200.1.2", port.group(1))
    time.sleep(0.5)
    after = restarted.stats()
    assert after["rx_packets"] == before["rx_packets"], (before, after)
    assert int(after.get("drop_stale", 0)) + int(after.get("drop_replay", 0)) >= len(down), after
