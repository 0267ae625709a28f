"""The daemon end to end: real vpncryptd processes, TUN devices and UDP between namespaces."""

import re
import signal
import subprocess
import sys
import time

import pytest

from netns import python_env
from vpnharness import (SERVER_TUN4, SERVER_TUN6, Deployment, client_tun4, client_tun6,
                        receiver_result, start_receiver, start_sender, transfer)

pytestmark = pytest.mark.netns

MB = 1 << 20


def assert_same(sent: dict, received: dict, size: int) -> None:
    assert sent["bytes"] == received["bytes"] == size
    assert sent["sha256"] == received["sha256"]


@pytest.mark.parametrize("v6_underlay", [False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def test_ping_both_ways_ipv4_and_ipv6_inside(netns_factory, tmp_path, v6_underlay):
    vpn = Deployment(netns_factory, tmp_path, v6_underlay=v6_underlay).start()
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


def test_64mb_tcp_transfer_checked_by_hash(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    sent, received = transfer(vpn.client_host(), vpn.server_host, SERVER_TUN4, 64 * MB)
    assert_same(sent, received, 64 * MB)
    # And the other direction, over IPv6 inside the tunnel.
    sent, received = transfer(vpn.server_host, vpn.client_host(), client_tun6(1), 16 * MB, seed=2)
    assert_same(sent, received, 16 * MB)


def test_three_clients_and_no_client_speaks_for_another(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path, clients=3).start()
    for i in (1, 2, 3):
        vpn.wait_ping(vpn.client_host(i), SERVER_TUN4)
    receivers = [start_receiver(vpn.server_host, 6000 + i) for i in (1, 2, 3)]
    senders = [start_sender(vpn.client_host(i), SERVER_TUN4, 8 * MB, seed=i, port=6000 + i)
               for i in (1, 2, 3)]
    for send, recv in zip(senders, receivers):
        out, _ = send.communicate(timeout=180)
        import json

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


def test_roaming_mid_transfer(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    recv = start_receiver(vpn.server_host)
    send = start_sender(client, SERVER_TUN4, 48 * MB)
    time.sleep(1.5)
    assert send.poll() is None, "transfer finished before the move: make it larger"
    # Wi-Fi to LTE: the client's underlay address changes under the running transfer.
    client.replace_addr(vpn.links[0][1], "10.200.1.2/24", "10.200.1.77/24")
    out, _ = send.communicate(timeout=180)
    import json

    assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), 48 * MB)
    vpn.server.wait_log(r"endpoint client=c1 id=1 old=10\.200\.1\.2:\d+ new=10\.200\.1\.77:\d+")
    assert vpn.server.stats()["peers"]["c1"]["roams"] == "1"


def test_server_killed_and_restarted_mid_transfer(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    client = vpn.client_host()
    vpn.wait_ping(client, SERVER_TUN4)
    recv = start_receiver(vpn.server_host)
    send = start_sender(client, SERVER_TUN4, 48 * MB)
    time.sleep(1.5)
    assert send.poll() is None, "transfer finished before the kill: make it larger"
    vpn.server.kill(signal.SIGKILL)
    time.sleep(1.0)
    vpn.start_server()
    out, _ = send.communicate(timeout=180)
    import json

    assert_same(json.loads(out.strip().splitlines()[-1]), receiver_result(recv), 48 * MB)


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


def test_config_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nlisten = 0.0.0.0:99999\n")
    proc = subprocess.run([sys.executable, "-m", "vpncrypt.cli.vpncryptd", "-c", str(bad), "-f"],
                          capture_output=True, text=True, env=python_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr
