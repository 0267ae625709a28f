"""Two vpncrypt servers and one client in namespaces (issue 18), for the failover tests
and bench/failover.py.

The client reaches each server over a link of its own (10.200.1.0/24 to server 1,
10.200.2.0/24 to server 2) and lists both (`server = 10.200.1.1:51900,
10.200.2.1:51900` with `server_id = 7, 8`). The servers share the client table the way
operators share it, by the same text in both files; they have the same tunnel
addresses (10.201.0.1, fd00:201::1), so the client pings one address whichever server
it uses. Nothing is synchronised between them at run time.
"""

import os
import time

from netns import link
from vpnharness import PORT, Daemon, write_private

from vpncrypt.protocol.keys import generate_key

SERVER_TUN4 = "10.201.0.1"
CLIENT_TUN4, CLIENT_TUN6 = "10.201.0.2", "fd00:201::2"
IDS = (7, 8)


def underlay(i: int) -> str:
    return f"10.200.{i}.1"


class TwoServers:
    def __init__(self, make_host, tmp_path, loop: str = "native", server_extra: str = "",
                 client_extra: str = "", keepalive: int = 25):
        self.tmp = str(tmp_path)
        self.env = {"VPNCRYPT_LOOP": loop}
        self.client_host = make_host()
        self.server_hosts = [make_host(), make_host()]
        self.key = generate_key()
        self.links = [link(host, self.client_host, [f"{underlay(i)}/24"], [f"10.200.{i}.2/24"])
                      for i, host in enumerate(self.server_hosts, start=1)]
        self.server_confs = [self.write(f"server{i}.conf", self.server_text(i, server_extra))
                             for i in (1, 2)]
        self.client_conf = self.write("client.conf", self.client_text(keepalive, client_extra))
        self.servers = [None, None]
        self.client = None

    def write(self, name: str, text: str) -> str:
        return write_private(self.tmp, name, text)

    def state_dir(self, name: str) -> str:
        return os.path.join(self.tmp, name + "-state")

    def server_text(self, i: int, extra: str = "") -> str:
        return (f"[server]\nlisten = 0.0.0.0:{PORT}\ninterface = vpn0\n"
                f"address = {SERVER_TUN4}/24, fd00:201::1/64\nserver_id = {IDS[i - 1]}\n"
                f"state_dir = {self.state_dir(f'server{i}')}\n{extra}"
                # The client table: the same on both servers.
                f"\n[client c1]\nid = 1\nkey = {self.key}\n"
                f"allowed_ips = {CLIENT_TUN4}/32, {CLIENT_TUN6}/128\n")

    def client_text(self, keepalive: int, extra: str = "") -> str:
        return (f"[client]\nid = 1\nserver = {underlay(1)}:{PORT}, {underlay(2)}:{PORT}\n"
                f"server_id = {IDS[0]}, {IDS[1]}\nkey = {self.key}\ninterface = vpn0\n"
                f"address = {CLIENT_TUN4}/24, {CLIENT_TUN6}/64\nkeepalive = {keepalive}\n"
                f"state_dir = {self.state_dir('client')}\n{extra}")

    def start_server(self, i: int) -> Daemon:
        d = Daemon(self.server_hosts[i - 1], self.server_confs[i - 1],
                   os.path.join(self.tmp, f"server{i}.log"), env=self.env)
        d.wait_log(r"server started")
        self.servers[i - 1] = d
        return d

    def start_client(self) -> Daemon:
        self.client = Daemon(self.client_host, self.client_conf,
                             os.path.join(self.tmp, "client.log"), env=self.env)
        self.client.wait_log(r"client started")
        return self.client

    def start(self) -> "TwoServers":
        self.start_server(1)
        self.start_server(2)
        self.start_client()
        return self

    def ping(self, host, target: str, count: int = 1, check: bool = False):
        return host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", target],
                        check=check, timeout=count * 3 + 10)

    def wait_ping(self, host, target: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ping(host, target).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no ping reply from {target} within {timeout} s")


class PingWatch:
    """`ping -D` running in a namespace; which replies came back, and when (wall clock)."""

    def __init__(self, host, target: str, interval: float = 0.05):
        import subprocess

        self.proc = host.popen(["ping", "-D", "-n", "-i", str(interval), "-W", "1", target],
                               stdout=subprocess.PIPE, text=True)

    def stop(self) -> list[float]:
        """The wall-clock times of every reply."""
        import re
        import signal

        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out,
                                                       re.M)]


def resumed_after(replies: list[float], event: float) -> float | None:
    """Seconds from `event` to the first reply after it that ends the gap it caused."""
    later = [t for t in replies if t > event]
    return later[0] - event if later else None
