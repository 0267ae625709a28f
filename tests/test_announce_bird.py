"""Route announcement redistributed by a real BIRD 2 (issue 18): the server runs
vpncryptd with `announce_routes = yes` and BIRD with docs/bird-announce.conf (only
addresses and interface names replaced); a router runs BIRD too and learns the
client's tunnel addresses over eBGP; a LAN host behind the router pings the client
through router -> server -> tunnel. When the client falls silent the routes go from
the server's kernel, the router's BIRD and the router's kernel; a clean stop leaves
no route of ours.

    client ==tunnel== server --10.200.50.0/24-- router --10.200.60.0/24-- lan
"""

import os
import shutil
import subprocess
import time

import pytest

from netns import REPO_ROOT, link
from vpnharness import SERVER_TUN4, Deployment, client_tun4, client_tun6

pytestmark = pytest.mark.netns

PROTO = 77
HOLD = 3  # seconds; the client sends a keepalive every second
EXAMPLE = os.path.join(REPO_ROOT, "docs", "bird-announce.conf")
# docs/bird-announce.conf's documentation addresses -> this test's
SERVER_LINK4, ROUTER_LINK4 = "10.200.50.1", "10.200.50.2"
SERVER_LINK6, ROUTER_LINK6 = "fd00:200:50::1", "fd00:200:50::2"
LAN4, LAN6 = "10.200.60.2", "fd00:200:60::2"

ROUTER_CONF = f"""\
router id {ROUTER_LINK4};
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol kernel {{ ipv6 {{ import none; export all; }}; }}
protocol bgp from_vpn4 {{
	local {ROUTER_LINK4} as 65000; neighbor {SERVER_LINK4} as 65001;
	connect delay time 1;
	ipv4 {{ import all; export none; }};
}}
protocol bgp from_vpn6 {{
	local {ROUTER_LINK6} as 65000; neighbor {SERVER_LINK6} as 65001;
	connect delay time 1;
	ipv6 {{ import all; export none; }};
}}
"""


def require_bird():
    if shutil.which("bird") and shutil.which("birdc"):
        return
    message = "BIRD 2 is not installed (apt-get install bird2)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the redistribution test", pytrace=False)
    pytest.skip(message)


class Bird:
    """A `bird` in a namespace, with its own control socket."""

    def __init__(self, host, tmp, name: str, conf: str):
        self.host = host
        self.sock = os.path.join(tmp, f"{name}.ctl")
        path = os.path.join(tmp, f"{name}.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.log = open(os.path.join(tmp, f"{name}.log"), "ab")
        self.proc = host.popen(["bird", "-f", "-c", path, "-s", self.sock,
                                "-P", os.path.join(tmp, f"{name}.pid")],
                               stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while self.host.run(["birdc", "-s", self.sock, "show", "status"], check=False,
                            timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(self.log.name) as f:
                    raise AssertionError(f"bird in {host.name} did not start:\n{f.read()}")
            time.sleep(0.1)

    def cmd(self, *args) -> str:
        return self.host.run(["birdc", "-s", self.sock, *args], timeout=10).stdout

    def routes(self, table: str) -> str:
        return self.cmd("show", "route", "table", table)

    def learned(self, protocol: str) -> set[str]:
        """The networks BIRD has from one of its protocols."""
        out = self.cmd("show", "route", "protocol", protocol)
        return {line.split()[0] for line in out.splitlines()
                if line[:1].isalnum() and "/" in line.split()[0]}


def wait_for(what, predicate, timeout, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\n{detail()}")
        time.sleep(0.2)


def kernel_routes(host, family: str, proto: str) -> list[str]:
    return [r["dst"] for r in host.ip_json(family, "route", "show", "proto", proto)]


def test_router_learns_active_clients_from_the_server_over_bgp(netns_factory, tmp_path):
    require_bird()
    vpn = Deployment(netns_factory, tmp_path, keepalive=1)
    server_host, client = vpn.server_host, vpn.client_host(1)
    router, lan = netns_factory(), netns_factory()
    up, _ = link(server_host, router, [f"{SERVER_LINK4}/24", f"{SERVER_LINK6}/64"],
                 [f"{ROUTER_LINK4}/24", f"{ROUTER_LINK6}/64"])
    link(router, lan, ["10.200.60.1/24", "fd00:200:60::1/64"], [f"{LAN4}/24", f"{LAN6}/64"])
    lan.ip("route", "add", "default", "via", "10.200.60.1")
    lan.ip("-6", "route", "add", "default", "via", "fd00:200:60::1")
    # The server reaches the LAN through the router (static here: the example's BGP
    # takes nothing in), and both forward.
    server_host.add_route("10.200.60.0/24", "via", ROUTER_LINK4)
    server_host.add_route("fd00:200:60::/64", "via", ROUTER_LINK6)
    for host in (server_host, router):
        host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])

    text = vpn.server_text().replace(
        "[server]\n", f"[server]\nannounce_routes = yes\nannounce_hold = {HOLD}\n", 1)
    vpn.server_conf = vpn.write("server.conf", text)
    vpn.client_confs[0] = vpn.write(
        "client1.conf", vpn.client_text(1, 1) + "routes = 10.200.60.0/24, fd00:200:60::/64\n")

    with open(EXAMPLE) as f:
        example = f.read()
    for doc, ours in (("192.0.2.254", ROUTER_LINK4), ("192.0.2.1", SERVER_LINK4),
                      ("2001:db8::fe", ROUTER_LINK6), ("2001:db8::1", SERVER_LINK6)):
        assert doc in example, doc
        example = example.replace(doc, ours)
    server = vpn.start_server()
    server_bird = Bird(server_host, vpn.tmp, "bird-server", example)
    router_bird = Bird(router, vpn.tmp, "bird-router", ROUTER_CONF)

    def tables():
        return (f"server BIRD:\n{server_bird.routes('master4')}{server_bird.routes('master6')}"
                f"router BIRD:\n{router_bird.routes('master4')}{router_bird.routes('master6')}"
                f"{router_bird.cmd('show', 'protocols')}")

    wait_for("both BGP sessions up",
             lambda: router_bird.cmd("show", "protocols").count("Established") == 2, 30, tables)
    assert f"{client_tun4(1)}/32" not in router_bird.routes("master4")  # nobody active yet

    vpn.start_client(1)
    vpn.wait_ping(client, SERVER_TUN4)
    # The kernel route (ours) -> the server's BIRD -> BGP -> the router's BIRD and kernel.
    wait_for("the router's kernel routes to the client",
             lambda: (client_tun4(1) in kernel_routes(router, "-4", "bird")
                      and client_tun6(1) in kernel_routes(router, "-6", "bird")), 20, tables)
    assert f"{client_tun4(1)}/32" in server_bird.routes("master4")
    assert f"{client_tun6(1)}/128" in server_bird.routes("master6")
    # Only ours: not the server's connected prefixes nor its static route to the LAN.
    assert router_bird.learned("from_vpn4") == {f"{client_tun4(1)}/32"}, tables()
    assert router_bird.learned("from_vpn6") == {f"{client_tun6(1)}/128"}, tables()
    for target in (client_tun4(1), client_tun6(1)):
        vpn.wait_ping(lan, target, timeout=10)
        vpn.ping(lan, target)  # LAN -> router -> server -> tunnel -> client, and back

    vpn.clients[0].stop()  # silent, as if it had moved to another server
    wait_for("withdrawn from the server's kernel",
             lambda: not kernel_routes(server_host, "-4", str(PROTO))
             and not kernel_routes(server_host, "-6", str(PROTO)), HOLD + 10, tables)
    wait_for("withdrawn from the router",
             lambda: (f"{client_tun4(1)}/32" not in router_bird.routes("master4")
                      and f"{client_tun6(1)}/128" not in router_bird.routes("master6")
                      and client_tun4(1) not in kernel_routes(router, "-4", "bird")
                      and client_tun6(1) not in kernel_routes(router, "-6", "bird")), 10, tables)
    assert vpn.ping(lan, client_tun4(1), count=1, check=False).returncode != 0

    vpn.start_client(1)  # back: announced again, then a clean stop of the server
    vpn.wait_ping(client, SERVER_TUN4)
    wait_for("announced again",
             lambda: client_tun4(1) in kernel_routes(router, "-4", "bird"), 20, tables)
    assert server.stop() == 0
    assert kernel_routes(server_host, "-4", str(PROTO)) == []
    assert kernel_routes(server_host, "-6", str(PROTO)) == []
    assert up in server_host.link_names()
