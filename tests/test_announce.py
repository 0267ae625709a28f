"""Route announcement (daemon/announce.py, `[server] announce_routes`): the decisions
in-process; the rtnetlink part against a real kernel in a namespace; and real daemons
(both packet loops) announcing a client's networks while it talks, withdrawing them
when it falls silent or at a stop, and a restart after kill -9 removing what was left.
The BIRD redistribution is tests/test_announce_bird.py."""

import ipaddress
import json
import re
import signal
import time

import pytest

from vpncrypt.daemon.announce import Announcements
from vpncrypt.status import render_prometheus, render_table
from vpnharness import Deployment, SERVER_TUN4, client_tun4, client_tun6, show

N = ipaddress.ip_network
V4, V6, LAN = N("10.201.0.2/32"), N("fd00:201::2/128"), N("192.168.50.0/24")
PROTO = 77


# --------------------------------------------------------------------------- decisions


def test_first_activity_adds_every_network_of_the_client():
    plan = Announcements(hold=90)
    clients = [(1, None, (V4, V6, LAN)), (2, None, (N("10.201.0.3/32"),))]
    assert plan.plan(clients, now=1000.0) == ([], [])  # nobody has sent anything
    clients[0] = (1, 999.5, (V4, V6, LAN))
    adds, withdraws = plan.plan(clients, now=1000.0)
    assert withdraws == [] and adds == [(V4, 1), (V6, 1), (LAN, 1)]
    for net, cid in adds:
        plan.added(net, cid)
    assert plan.plan(clients, now=1000.5) == ([], [])  # installed: nothing more to do
    assert plan.of(1) == {V4, V6, LAN} and plan.of(2) == set()


def test_withdrawn_after_the_hold_and_added_again_when_the_client_is_back():
    plan = Announcements(hold=90)
    plan.added(V4, 1)
    plan.added(V6, 1)
    assert plan.plan([(1, 100.0, (V4, V6))], now=189.9) == ([], [])
    adds, withdraws = plan.plan([(1, 100.0, (V4, V6))], now=190.0)
    assert adds == [] and withdraws == [(V4, 1), (V6, 1)]
    for net, _ in withdraws:
        plan.withdrawn(net)
    assert plan.installed == {} and plan.of(1) == set()
    assert plan.plan([(1, 100.0, (V4, V6))], now=500.0) == ([], [])  # still silent
    assert plan.plan([(1, 499.0, (V4, V6))], now=500.0) == ([(V4, 1), (V6, 1)], [])


def test_a_client_removed_by_a_reload_is_withdrawn_and_a_moved_network_changes_owner():
    plan = Announcements(hold=90)
    for net, cid in ((V4, 1), (LAN, 1), (N("10.201.0.3/32"), 2)):
        plan.added(net, cid)
    # Client 2 removed; client 1 gave its LAN to a new client 3, which is active.
    clients = [(1, 10.0, (V4,)), (3, 10.0, (LAN,))]
    adds, withdraws = plan.plan(clients, now=11.0)
    assert withdraws == [(LAN, 1), (N("10.201.0.3/32"), 2)]
    assert adds == [(LAN, 3)]


def test_a_refused_network_is_not_tried_again_until_the_client_was_inactive():
    plan = Announcements(hold=5)
    clients = [(1, 0.0, (V4, LAN))]
    adds, _ = plan.plan(clients, now=1.0)
    plan.added(V4, 1)
    plan.refuse(LAN, 1)  # someone else's route to the LAN is there
    assert plan.plan(clients, now=2.0) == ([], [])
    assert plan.plan(clients, now=6.0) == ([], [(V4, 1)])  # silent: V4 goes
    plan.withdrawn(V4)
    assert plan.plan([(1, 7.0, (V4, LAN))], now=7.5) == ([(V4, 1), (LAN, 1)], [])


def test_a_shorter_hold_from_a_reload_applies_at_once():
    plan = Announcements(hold=90)
    plan.added(V4, 1)
    plan.hold = 10
    assert plan.plan([(1, 100.0, (V4,))], now=111.0) == ([], [(V4, 1)])


def test_show_and_prometheus_render_the_announcement():
    doc = {"version": 1, "role": "server", "interface": "vpn0", "pid": 1, "crypto": "native",
           "loop": "native", "offloads": None, "uptime": 5.0, "mtu": 1420,
           "addresses": ["10.201.0.1/24"], "listen": "0.0.0.0:51900", "server_id": 7,
           "announce": {"protocol": 77, "hold": 90},
           "totals": {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0,
                      "drops": {}}, "clients": []}
    counters = {"rx_packets": 1, "rx_bytes": 80, "tx_packets": 1, "tx_bytes": 80, "drops": {}}
    for name, cid, routed in (("a", 1, ["10.201.0.2/32", "fd00:201::2/128"]),
                              ("b", 2, ["10.201.0.3/32"]), ("c", 3, [])):
        owned = [f"10.201.0.{cid + 1}/32", f"fd00:201::{cid + 1}/128"]
        doc["clients"].append({"name": name, "id": cid, "endpoint": None,
                               "allowed_ips": owned if cid != 3 else owned[:1],
                               "last_rx_seconds": None, "roams": 0, "pinned": False,
                               "announced": routed, **counters})
    table = render_table(doc)
    assert "announcing client routes: protocol 77, hold 90 s; 2 of 3 clients announced" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines()[-3:]}
    assert rows["a"][-1] == "yes" and rows["b"][-1] == "10.201.0.3/32" and rows["c"][-1] == "no"
    prom = render_prometheus([doc])
    assert 'vpncrypt_client_announced{interface="vpn0",role="server",client="c",id="3"} 0' in prom
    assert 'vpncrypt_client_announced{interface="vpn0",role="server",client="a",id="1"} 1' in prom
    doc["announce"] = None
    assert "announc" not in render_table(doc) and "announced" not in render_prometheus([doc])


def test_elsewhere_than_linux_the_start_is_refused_in_one_line(monkeypatch):
    from vpncrypt.daemon import announce, logs

    monkeypatch.setattr(announce.sys, "platform", "freebsd14")
    with pytest.raises(announce.AnnounceError) as e:
        announce.Announcer("vpn0", PROTO, 90, logs.RateLimiter())
    assert str(e.value) == ("announce_routes = yes needs Linux (rtnetlink); it is not "
                            "implemented on freebsd14")


# --------------------------------------------------------------------------- rtnetlink (namespace)


def _routes(host, family="-4"):
    """`ip -j route show` of the main table in `host`: [(dst, dev, protocol)]."""
    return sorted((r["dst"], r.get("dev"), str(r.get("protocol")))
                  for r in host.ip_json(family, "route", "show", "table", "main"))


@pytest.fixture
def tun_host(netns_factory):
    """A namespace with a persistent TUN `t0` (10.201.0.1/24, fd00:201::1/64, up) and a
    second one `t1`, as the server's interface and some other interface."""
    host = netns_factory()
    for name in ("t0", "t1"):
        host.ip("tuntap", "add", name, "mode", "tun")
        host.set_up(name)
    host.add_addr("t0", "10.201.0.1/24")
    host.add_addr("t0", "fd00:201::1/64")
    return host


def route_socket_steps():
    """Run inside the namespace: RouteSocket against the kernel."""
    import errno as errno_mod

    from vpncrypt.daemon.announce import RouteSocket

    out = {}
    routes = RouteSocket("t0", PROTO)
    routes.add(ipaddress.ip_network("192.168.50.0/24"))  # the test added the other two
    out["ours"] = sorted(map(str, routes.ours()))
    try:
        routes.add(ipaddress.ip_network("10.201.0.2/32"))
        out["again"] = "added twice"
    except OSError as e:
        out["again"] = errno_mod.errorcode[e.errno]
    try:
        routes.add(ipaddress.ip_network("10.99.0.0/24"))  # an operator's route to it exists
        out["foreign"] = "added"
    except OSError as e:
        out["foreign"] = errno_mod.errorcode[e.errno]
    out["delete_foreign"] = routes.delete(ipaddress.ip_network("10.99.0.0/24"))
    out["delete"] = routes.delete(ipaddress.ip_network("192.168.50.0/24"))
    out["delete_again"] = routes.delete(ipaddress.ip_network("192.168.50.0/24"))
    out["flushed"] = sorted(map(str, routes.flush()))
    out["after_flush"] = sorted(map(str, routes.ours()))
    routes.close()
    return out


@pytest.mark.netns
def test_route_socket_adds_lists_deletes_and_flushes_only_its_own(tun_host):
    host = tun_host
    host.ip("route", "add", "10.99.0.0/24", "dev", "t0", "proto", "static")  # not ours
    host.ip("route", "add", "10.98.0.0/24", "dev", "t1", "proto", str(PROTO))  # ours, other dev
    host.ip("route", "add", "10.97.0.0/24", "dev", "t0", "proto", "boot")  # other proto, our dev
    before = _routes(host)

    # Let the steps stop half-way to look at the kernel's table: add only.
    added = host.python(
        "import ipaddress\nfrom vpncrypt.daemon.announce import RouteSocket\n"
        "r = RouteSocket('t0', 77)\n"
        "for n in ('10.201.0.2/32', 'fd00:201::2/128'): r.add(ipaddress.ip_network(n))\n")
    assert added.returncode == 0, added.stderr
    v4, v6 = _routes(host), _routes(host, "-6")
    assert ("10.201.0.2", "t0", str(PROTO)) in v4
    assert ("10.201.0.0/24", "t0", "kernel") in v4  # the connected route is untouched
    assert ("fd00:201::2", "t0", str(PROTO)) in v6
    assert ("fd00:201::/64", "t0", "kernel") in v6
    # The kernel sends traffic for the client's address through the more specific route.
    assert host.ip_json("route", "get", "10.201.0.2")[0]["dev"] == "t0"

    out = host.call(route_socket_steps)
    assert out["ours"] == ["10.201.0.2/32", "192.168.50.0/24", "fd00:201::2/128"]
    assert out["again"] == "EEXIST"
    assert out["foreign"] == "EEXIST"
    assert out["delete_foreign"] is False  # the kernel matched the protocol: not ours
    assert (out["delete"], out["delete_again"]) == (True, False)
    assert out["flushed"] == ["10.201.0.2/32", "fd00:201::2/128"]
    assert out["after_flush"] == []
    assert _routes(host) == before  # every route that was not ours is still there
    assert not [r for r in _routes(host, "-6") if r[2] == str(PROTO)]


def announcer_steps(hold):
    """Run inside the namespace: an Announcer over t0 for two clients, as ticks do."""
    import io
    import subprocess

    from vpncrypt.daemon import announce, logs

    stream = io.StringIO()
    logs.log._stream, logs.log.level = stream, logs.INFO  # the bare lines, into `stream`
    names = {1: "laptop", 2: "office"}.get
    a = announce.Announcer("t0", PROTO, hold, logs.RateLimiter())
    office = (N("10.201.0.3/32"), N("10.99.0.0/24"))  # an operator routes 10.99.0.0/24
    clients = [(1, None, (V4, V6)), (2, 100.0, office)]
    a.update(clients, 100.5, names)
    a.update(clients, 101.0, names)  # the refused network is not tried every tick
    mid = {"laptop": sorted(map(str, a.plan.of(1))), "office": sorted(map(str, a.plan.of(2)))}
    clients[0] = (1, 101.0, (V4, V6))
    a.update(clients, 101.5, names)
    both = sorted(map(str, a.routes.ours()))
    # Deleted behind its back (the link went down, an operator): back within RESYNC.
    subprocess.run(["ip", "route", "del", "10.201.0.2/32", "dev", "t0"], check=True)
    a.update(clients, 102.0, names)  # not checked again yet
    behind = sorted(map(str, a.routes.ours()))
    t = 101.0 + announce.RESYNC
    clients = [(1, t - 0.5, (V4, V6)), (2, t - 0.5, office)]
    a.update(clients, t, names)
    restored = sorted(map(str, a.routes.ours()))
    clients[0] = (1, t + hold, (V4, V6))
    a.update(clients, t - 0.5 + hold, names)  # office silent for the hold, laptop not
    a.withdraw_all(200.0)
    left = sorted(map(str, a.routes.ours()))
    a.close()
    return {"mid": mid, "both": both, "behind": behind, "restored": restored, "left": left,
            "log": stream.getvalue()}


@pytest.mark.netns
def test_announcer_announces_refuses_a_foreign_route_once_and_withdraws(tun_host):
    host = tun_host
    host.ip("route", "add", "10.99.0.0/24", "dev", "t0", "proto", "static")
    # What a killed daemon left on a persistent TUN: flushed when the next one starts.
    host.ip("route", "add", "10.201.0.9/32", "dev", "t0", "proto", str(PROTO))
    out = host.call(announcer_steps, 5)
    log = out["log"]
    assert "withdrawn routes=10.201.0.9/32 reason=left-by-earlier-run" in log, log
    assert out["mid"] == {"laptop": [], "office": ["10.201.0.3/32"]}
    assert out["both"] == ["10.201.0.2/32", "10.201.0.3/32", "fd00:201::2/128"]
    assert out["behind"] == ["10.201.0.3/32", "fd00:201::2/128"]
    assert out["restored"] == out["both"]
    assert log.count("announced client=laptop id=1 routes=10.201.0.2/32") == 2, log
    assert log.count("announce-failed client=office id=2 route=10.99.0.0/24 action=add") == 1, log
    assert "announced client=office id=2 routes=10.201.0.3/32" in log
    assert "announced client=laptop id=1 routes=10.201.0.2/32,fd00:201::2/128" in log
    assert "withdrawn client=office id=2 routes=10.201.0.3/32 reason=silent" in log
    assert ("withdrawn client=laptop id=1 routes=10.201.0.2/32,fd00:201::2/128 "
            "reason=stopping") in log
    assert out["left"] == []
    assert ("10.99.0.0/24", "t0", "static") in _routes(host)


# --------------------------------------------------------------------------- real daemons

LOOPS = pytest.mark.parametrize("loop", ["native", "python"])
HOLD = 3  # seconds; the clients send a keepalive every second


def announcing(vpn, hold=HOLD, extra=""):
    """Rewrite the deployment's server config with announce_routes on."""
    text = vpn.server_text().replace(
        "[server]\n", f"[server]\nannounce_routes = yes\nannounce_hold = {hold}\n{extra}", 1)
    vpn.server_conf = vpn.write("server.conf", text)


def proto_routes(host):
    """Our routes in `host`'s main table, both families: sorted [(dst, dev)]."""
    return sorted((r["dst"], r.get("dev")) for family in ("-4", "-6")
                  for r in host.ip_json(family, "route", "show", "table", "main",
                                        "proto", str(PROTO)))


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def client_doc(vpn):
    [doc] = json.loads(show(vpn.state_dir("server"), "--json"))
    return doc, {c["name"]: c for c in doc["clients"]}


@pytest.mark.netns
@LOOPS
def test_daemon_announces_active_clients_and_withdraws_silent_ones(netns_factory, tmp_path,
                                                                  loop):
    vpn = Deployment(netns_factory, tmp_path, clients=2, keepalive=1, loop=loop)
    announcing(vpn)
    server = vpn.start_server()
    mine = [(client_tun4(1), "vpn0"), (client_tun6(1), "vpn0")]
    time.sleep(1.5)  # a few ticks: nobody has sent anything, nothing is announced
    assert proto_routes(vpn.server_host) == []
    doc, clients = client_doc(vpn)
    assert doc["announce"] == {"protocol": PROTO, "hold": HOLD}
    assert clients["c1"]["announced"] == [] and clients["c2"]["announced"] == []

    vpn.start_client(1)
    vpn.wait_ping(vpn.client_host(1), SERVER_TUN4)
    wait_for("c1's routes", lambda: proto_routes(vpn.server_host) == mine, 5)
    server.wait_log(r"announced client=c1 id=1 routes=10\.201\.0\.2/32,fd00:201::2/128")
    _, clients = client_doc(vpn)
    assert clients["c1"]["announced"] == [f"{client_tun4(1)}/32", f"{client_tun6(1)}/128"]
    assert clients["c2"]["announced"] == []
    # The server's own prefix stays, and traffic to c1 still goes through the tunnel.
    assert any(r["dst"] == "10.201.0.0/24" and r.get("protocol") == "kernel"
               for r in vpn.server_host.ip_json("route", "show"))
    vpn.ping(vpn.server_host, client_tun4(1))
    vpn.ping(vpn.server_host, client_tun6(1))

    # Keepalives (every second) keep it announced well past the hold.
    time.sleep(HOLD + 1.5)
    assert proto_routes(vpn.server_host) == mine

    vpn.clients[0].stop()  # silence: as if it had moved to another server
    stopped = time.monotonic()
    wait_for("c1's routes withdrawn", lambda: proto_routes(vpn.server_host) == [], HOLD + 10)
    assert time.monotonic() - stopped >= HOLD - 1.5  # not before the hold (last packet <1 s before)
    server.wait_log(r"withdrawn client=c1 id=1 routes=10\.201\.0\.2/32,fd00:201::2/128 "
                    r"reason=silent")

    vpn.start_client(1)  # back: announced again
    vpn.wait_ping(vpn.client_host(1), SERVER_TUN4)
    wait_for("c1's routes again", lambda: proto_routes(vpn.server_host) == mine, 5)

    # A reload that removes c1 withdraws its routes at once (not after the hold).
    vpn.server_conf = vpn.write("server.conf", vpn.server_text(clients=[2]).replace(
        "[server]\n", f"[server]\nannounce_routes = yes\nannounce_hold = {HOLD}\n", 1))
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"withdrawn client=c1 id=1 routes=\S+ reason=removed")
    assert proto_routes(vpn.server_host) == []

    assert server.stop() == 0
    assert proto_routes(vpn.server_host) == []


@pytest.mark.netns
def test_clean_stop_withdraws_and_a_start_after_kill_9_flushes(netns_factory, tmp_path):
    """With a persistent TUN (which outlives the daemon, unlike its own) the routes of
    a killed daemon stay; the next start removes them before announcing anything. A
    clean stop withdraws every route, also from a persistent TUN."""
    vpn = Deployment(netns_factory, tmp_path, keepalive=1)
    announcing(vpn, hold=30)
    vpn.server_host.ip("tuntap", "add", "vpn0", "mode", "tun")
    server = vpn.start_server()
    vpn.start_client(1)
    vpn.wait_ping(vpn.client_host(1), SERVER_TUN4)
    mine = [(client_tun4(1), "vpn0"), (client_tun6(1), "vpn0")]
    wait_for("c1's routes", lambda: proto_routes(vpn.server_host) == mine, 5)

    server.kill(signal.SIGKILL)
    assert proto_routes(vpn.server_host) == mine  # left behind on the persistent TUN
    vpn.clients[0].stop()  # the restarted server must not see it: these are stale
    mark = len(server.text())
    server = vpn.start_server()
    server.wait_log(r"withdrawn routes=10\.201\.0\.2/32,fd00:201::2/128 "
                    r"reason=left-by-earlier-run", after=mark)
    time.sleep(1.5)
    assert proto_routes(vpn.server_host) == []

    vpn.start_client(1)
    vpn.wait_ping(vpn.client_host(1), SERVER_TUN4)
    wait_for("c1's routes", lambda: proto_routes(vpn.server_host) == mine, 5)
    assert server.stop() == 0
    assert re.search(r"withdrawn client=c1 id=1 routes=\S+ reason=stopping", server.text())
    assert "vpn0" in vpn.server_host.link_names()  # persistent: still there, without our routes
    assert proto_routes(vpn.server_host) == []
