"""Operator tools against real daemons: `vpncrypt show` (table, JSON, Prometheus), control socket."""

import json
import os
import socket
import stat

import pytest

from hostile import delta, filter_drops, udp_snmp
from vpnharness import SERVER_TUN4, Deployment, client_tun4, show, transfer, vpncrypt

pytestmark = pytest.mark.netns

MB = 1 << 20


def test_show_json_counts_match_traffic(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path, clients=2, keepalive=0).start()
    for i in (1, 2):
        vpn.wait_ping(vpn.client_host(i), SERVER_TUN4)
    before = json.loads(show(vpn.state_dir("server"), "--json"))[0]
    size = 4 * MB
    sent, received = transfer(vpn.client_host(1), vpn.server_host, SERVER_TUN4, size)
    assert sent["sha256"] == received["sha256"]
    after = json.loads(show(vpn.state_dir("server"), "--json"))[0]
    assert after["role"] == "server" and after["interface"] == "vpn0"
    assert after["crypto"] in ("native", "reference") and after["version"] == 1
    c1 = next(c for c in after["clients"] if c["name"] == "c1")
    c1_before = next(c for c in before["clients"] if c["name"] == "c1")
    assert c1["id"] == 1 and c1["allowed_ips"] == ["10.201.0.2/32", "fd00:201::2/128"]
    assert c1["endpoint"].startswith("10.200.1.2:")
    assert c1["last_rx_seconds"] is not None and c1["last_rx_seconds"] < 5
    # Bytes received: at least the payload, at most payload plus TCP/IP headers and our 24
    # bytes per packet (a 1448-byte MTU carries >= 1396 payload bytes per packet).
    rx_bytes = c1["rx_bytes"] - c1_before["rx_bytes"]
    rx_packets = c1["rx_packets"] - c1_before["rx_packets"]
    assert size < rx_bytes < size * 1.10, (rx_bytes, size)
    assert size / 1448 <= rx_packets < size / 1000
    assert sum(c["rx_packets"] for c in after["clients"]) == after["totals"]["rx_packets"]
    assert sum(c["tx_bytes"] for c in after["clients"]) == after["totals"]["tx_bytes"]
    c2 = next(c for c in after["clients"] if c["name"] == "c2")
    assert c2["rx_bytes"] < 100_000  # only its pings
    # The client's own view.
    cl = json.loads(show(vpn.state_dir("client1"), "--json"))[0]
    assert cl["role"] == "client" and cl["id"] == 1 and cl["clock_synced"] is True
    assert cl["endpoint"] == "10.200.1.1:51900"
    assert size < cl["totals"]["tx_bytes"] < size * 1.15


def test_show_table_and_prometheus(netns_factory, tmp_path):
    parser = pytest.importorskip("prometheus_client.parser") if not os.environ.get("CI") else \
        __import__("prometheus_client.parser", fromlist=["parser"])
    vpn = Deployment(netns_factory, tmp_path).start()
    vpn.wait_ping(vpn.client_host(), SERVER_TUN4)
    table = show(vpn.state_dir("server"))
    assert "interface: vpn0" in table and "role: server, listening on 0.0.0.0:51900" in table
    header = next(line for line in table.splitlines() if line.startswith("client"))
    assert header.split() == ["client", "id", "allowed", "ips", "endpoint", "last", "rx", "rx",
                              "tx", "roams", "drops"]
    row = next(line for line in table.splitlines() if line.startswith("c1 "))
    assert "10.200.1.2:" in row and "10.201.0.2/32" in row
    text = show(vpn.state_dir("server"), "--prometheus")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["vpncrypt_up"].samples[0].value == 1
    rx = [s for s in families["vpncrypt_rx_packets"].samples
          if s.labels.get("client") == "c1"]
    assert rx and rx[0].value > 0
    client_table = show(vpn.state_dir("client1"))
    assert "role: client 1, server 10.200.1.1:51900" in client_table


NOT_RUNNING = "nobody listening (vpncryptd is not running; the socket is left from its last run)"


def test_control_socket_is_private_and_unanswered_after_exit(netns_factory, tmp_path):
    """The socket is root's and 0600. After the switch to `nobody` the daemon cannot remove
    it from root's state directory: it stays, nobody answers, `show` says why, and the
    next start takes it over."""
    vpn = Deployment(netns_factory, tmp_path).start()
    path = os.path.join(vpn.state_dir("server"), "vpn0.sock")
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert vpn.server.stop() == 0
    proc = vpncrypt("show", "vpn0", "--state-dir", vpn.state_dir("server"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"vpncrypt: {path}: {NOT_RUNNING}"
    vpn.start_server()
    assert json.loads(show(vpn.state_dir("server"), "--json"))[0]["role"] == "server"


def test_stale_control_socket_after_kill_is_replaced(netns_factory, tmp_path):
    vpn = Deployment(netns_factory, tmp_path).start()
    vpn.server.kill()
    vpn.start_server()  # the killed daemon's socket is stale: taken over, not an error
    assert json.loads(show(vpn.state_dir("server"), "--json"))[0]["role"] == "server"


def test_one_stale_socket_does_not_hide_the_running_daemons(netns_factory, tmp_path):
    """`vpncrypt show` without an interface: a killed daemon's socket (nobody listening)
    is named on stderr and reported as vpncrypt_up 0; the running daemon is still shown."""
    parser = pytest.importorskip("prometheus_client.parser") if not os.environ.get("CI") else \
        __import__("prometheus_client.parser", fromlist=["parser"])
    vpn = Deployment(netns_factory, tmp_path).start()
    state = vpn.state_dir("server")
    stale = os.path.join(state, "vpn9.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)
    dead.close()  # the file stays, nobody listens: what kill -9 leaves behind
    want = f"vpncrypt: {stale}: {NOT_RUNNING}"
    for args in ((), ("--json",), ("--prometheus",)):
        proc = vpncrypt("show", "--state-dir", state, *args)
        assert proc.returncode == 0 and proc.stderr.strip() == want, (args, proc.stderr)
        if args == ("--json",):
            assert [d["interface"] for d in json.loads(proc.stdout)] == ["vpn0"]
        elif args == ("--prometheus",):
            up = {s.labels["interface"]: s.value for f in parser.text_string_to_metric_families(
                proc.stdout) if f.name == "vpncrypt_up" for s in f.samples}
            assert up == {"vpn0": 1, "vpn9": 0}
        else:
            assert "interface: vpn0" in proc.stdout
    # Asked by name, the stale one is an error; with only stale sockets, so is the list.
    assert vpncrypt("show", "vpn9", "--state-dir", state).returncode == 1
    assert vpn.server.stop() == 0  # its socket stays too, unanswered
    proc = vpncrypt("show", "--state-dir", state)
    left = os.path.join(state, "vpn0.sock")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"vpncrypt: {left}: {NOT_RUNNING}", want], proc.stderr


def test_reload_through_the_control_socket(netns_factory, tmp_path):
    from vpncrypt import control

    vpn = Deployment(netns_factory, tmp_path, clients=2)
    vpn.server_conf = vpn.write("server.conf", vpn.server_text(clients=[1]))
    vpn.start()
    path = control.socket_path(vpn.state_dir("server"), "vpn0")
    vpn.write("server.conf", vpn.server_text(clients=[1, 2]))
    assert control.request(path, {"command": "reload"}) == {"ok": True}
    vpn.wait_ping(vpn.client_host(2), SERVER_TUN4)
    vpn.write("server.conf", "[server]\nlisten = nonsense\n")
    reply = control.request(path, {"command": "reload"})
    assert reply["ok"] is False and "server.conf:2: [server] listen:" in reply["error"]
    vpn.ping(vpn.client_host(2), SERVER_TUN4)  # the running configuration was kept
    assert control.request(path, {"command": "dance"})["ok"] is False


def test_add_client_output_works_as_is_and_remove_client_cuts_it_off(netns_factory, tmp_path):
    from vpnharness import Daemon

    vpn = Deployment(netns_factory, tmp_path, clients=2)
    vpn.server_conf = vpn.write("server.conf", vpn.server_text(clients=[1]))
    vpn.start_server()
    vpn.start_client(1)
    added = vpncrypt("add-client", "phone", "--config", vpn.server_conf,
                     "--endpoint", "10.200.2.1:51900")
    assert added.returncode == 0, added.stderr
    assert "reload" in added.stderr  # the running daemon was asked to reload
    vpn.server.wait_log(r"reloaded .*2 clients \(1 added, 0 removed\)")
    # The printed configuration, used exactly as printed, on the second host.
    conf = tmp_path / "phone.conf"
    conf.write_text(added.stdout)
    os.chmod(conf, 0o600)
    phone = Daemon(vpn.client_host(2), str(conf), str(tmp_path / "phone.log"))
    phone.wait_log(r"client started")
    address = json.loads(show(vpn.state_dir("server"), "--json"))[0]["clients"][1]
    assert address["name"] == "phone"
    phone_ip = address["allowed_ips"][0].split("/")[0]
    vpn.wait_ping(vpn.client_host(2), SERVER_TUN4)
    vpn.ping(vpn.server_host, phone_ip)
    # Removing it cuts it off at once; the other client is not disturbed.
    removed = vpncrypt("remove-client", "phone", "--config", vpn.server_conf)
    assert removed.returncode == 0, removed.stderr
    vpn.server.wait_log(r"reloaded .*1 clients \(0 added, 1 removed\)")
    snmp_before = udp_snmp(vpn.server_host)
    assert vpn.ping(vpn.client_host(2), SERVER_TUN4, count=2, check=False).returncode != 0
    # Its id is no longer configured: the reload told the socket filter, and the kernel
    # drops its packets (counted there, not by the daemon).
    snmp = delta(udp_snmp(vpn.server_host), snmp_before)
    assert filter_drops(snmp) >= 2, snmp
    assert "unknown-client" not in vpn.server.text()
    vpn.ping(vpn.client_host(1), SERVER_TUN4)
    phone.stop()
