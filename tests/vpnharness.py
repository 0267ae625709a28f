"""A real vpncrypt deployment inside network namespaces, for integration tests.

One server host and N client hosts, each client joined to the server by its own veth
link (underlay 10.200.i.0/24 and fd00:200:i::/64), a tunnel network 10.201.0.0/24 and
fd00:201::/64, generated keys and config files, and real `vpncryptd` processes whose
logs the tests read. Everything lives in namespaces the test made (see netns.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

from netns import REPO_ROOT, TESTS_DIR, link, python_env

from vpncrypt.protocol.keys import generate_key

SERVER_TUN4 = "10.201.0.1"
SERVER_TUN6 = "fd00:201::1"
PORT = 51900


def client_tun4(i: int) -> str:
    return f"10.201.0.{i + 1}"


def client_tun6(i: int) -> str:
    return f"fd00:201::{i + 1:x}"


class Daemon:
    """A running vpncryptd and its log file."""

    def __init__(self, host, conf: str, log: str, prefix=(), env=None, command=None):
        self.host, self.conf, self.log = host, conf, log
        self._log_file = open(log, "ab")
        self.log_start = self._log_file.tell()  # a restarted daemon appends to the same log
        if command is None:  # this checkout's vpncrypt, through this interpreter
            command, env = [sys.executable, "-m", "vpncrypt.cli.vpncryptd"], python_env(env)
        else:  # an installed `vpncryptd` (bench/memory.py): the checkout must not shadow it
            env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTHONPATH"}
        argv = [*prefix, *command, "-c", conf, "-f"]
        self.proc = host.popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                               env=env, cwd=REPO_ROOT)

    def text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern: str, timeout: float = 15.0, after: int | None = None) -> re.Match:
        """Wait until this daemon's log (from character `after`) matches `pattern`."""
        deadline = time.monotonic() + timeout
        after = self.log_start if after is None else after
        while True:
            text = self.text()
            match = re.search(pattern, text[after:])
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"vpncryptd exited ({self.proc.returncode}):\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timeout waiting for /{pattern}/ in log:\n{text}")
            time.sleep(0.05)

    def stats(self) -> dict:
        """Ask for the counters (SIGUSR1) and parse the `stats` and `peer` lines it logs."""
        mark = len(self.text())
        self.proc.send_signal(signal.SIGUSR1)
        self.wait_log(r"stats role=\S+[^\n]*\n", after=mark)
        time.sleep(0.1)  # the peer lines follow the stats line
        out = {"peers": {}}
        for line in self.text()[mark:].splitlines():
            fields = dict(re.findall(r"(\w[\w-]*)=(\"[^\"]*\"|\S+)", line))
            if " stats " in line:
                out.update(fields)
            elif " peer " in line:
                out["peers"][fields["client"]] = fields
        return out

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


def write_private(directory: str, name: str, text: str) -> str:
    """A configuration or key file only its owner may read (the daemon refuses others)."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


class Deployment:
    def __init__(self, make_host, tmp_path, clients: int = 1, v6_underlay: bool = False,
                 keepalive: int = 5, server_id: int = 7, loop: str = "native",
                 offload: bool = True, command=None, configure: bool = True,
                 ratchet: str | None = None, tcp: tuple = ()):
        self.tmp = str(tmp_path)
        # Clients (by number) with `transport = tcp`; the server then has listen_tcp too.
        self.tcp = tuple(tcp)
        # `ratchet = ...` on both ends, with each end's own copy of the key in a key file.
        self.ratchet = ratchet
        # False: `configure_interface = no`, and the harness adds the addresses and sets
        # the link up with ip(8) once the daemon has its TUN, as netifd does on OpenWrt.
        self.configure = configure
        self.command = command  # argv of an installed vpncryptd, None: this checkout
        # Which packet loop the daemons run: the native engine or the Python fallback.
        self.env = {"VPNCRYPT_LOOP": loop}
        self.loop = loop
        self.server_host = make_host()
        self.client_hosts = [make_host() for _ in range(clients)]
        self.keys = [generate_key() for _ in range(clients)]
        self.v6_underlay = v6_underlay
        self.server_id = server_id
        self.offload = offload
        self.links = []
        for i, host in enumerate(self.client_hosts, start=1):
            names = link(self.server_host, host,
                         [f"10.200.{i}.1/24", f"fd00:200:{i}::1/64"],
                         [f"10.200.{i}.2/24", f"fd00:200:{i}::2/64"])
            self.links.append(names)
        self.server_conf = self.write("server.conf", self.server_text())
        self.client_confs = [self.write(f"client{i}.conf", self.client_text(i, keepalive))
                             for i in range(1, clients + 1)]
        self.server = None
        self.clients = [None] * clients

    def write(self, name: str, text: str) -> str:
        return write_private(self.tmp, name, text)

    def server_text(self, clients=None) -> str:
        listen = f"[::]:{PORT}" if self.v6_underlay else f"0.0.0.0:{PORT}"
        text = (f"[server]\nlisten = {listen}\ninterface = vpn0\n"
                f"address = {', '.join(self.server_addresses())}\nserver_id = {self.server_id}\n"
                f"state_dir = {self.state_dir('server')}\n{self.offload_line()}")
        if self.tcp:
            text += f"listen_tcp = {'[::]' if self.v6_underlay else '0.0.0.0'}:{PORT}\n"
        for i in clients or range(1, len(self.client_hosts) + 1):
            text += (f"\n[client c{i}]\nid = {i}\n{self.key_lines(i, 'server')}"
                     f"allowed_ips = {client_tun4(i)}/32, {client_tun6(i)}/128\n")
        return text

    def server_underlay(self, i: int) -> str:
        return f"[fd00:200:{i}::1]:{PORT}" if self.v6_underlay else f"10.200.{i}.1:{PORT}"

    def client_text(self, i: int, keepalive: int) -> str:
        return (f"[client]\nid = {i}\nserver = {self.server_underlay(i)}\n"
                f"server_id = {self.server_id}\n{self.key_lines(i, 'client')}interface = vpn0\n"
                f"address = {', '.join(self.client_addresses(i))}\nkeepalive = {keepalive}\n"
                f"state_dir = {self.state_dir(f'client{i}')}\n{self.offload_line()}"
                + ("transport = tcp\n" if i in self.tcp else ""))

    def key_lines(self, i: int, side: str) -> str:
        if self.ratchet is None:
            return f"key = {self.keys[i - 1]}\n"
        path = self.key_path(i, side)
        if not os.path.exists(path):
            self.write(os.path.basename(path), self.keys[i - 1] + "\n")
        return f"key_file = {path}\nratchet = {self.ratchet}\n"

    def key_path(self, i: int, side: str) -> str:
        """Where `side` ("server" or "client") keeps client i's key (with `ratchet`)."""
        return os.path.join(self.tmp, f"{side}-c{i}.key")

    def offload_line(self) -> str:
        return ("" if self.offload else "offload = no\n") + (
            "" if self.configure else "configure_interface = no\n")

    def server_addresses(self) -> list[str]:
        return [f"{SERVER_TUN4}/24", f"{SERVER_TUN6}/64"]

    def client_addresses(self, i: int) -> list[str]:
        return [f"{client_tun4(i)}/24", f"{client_tun6(i)}/64"]

    def configure_externally(self, host, addresses) -> None:
        """What netifd's `proto vpncrypt` does once the daemon has created vpn0."""
        for address in addresses:
            extra = ["nodad"] if ":" in address else []  # IPv6: usable at once
            host.run(["ip", "addr", "add", address, "dev", "vpn0", *extra], check=True)
        host.run(["ip", "link", "set", "vpn0", "up"], check=True)

    def state_dir(self, name: str) -> str:
        """Each daemon's own control-socket directory (the namespaces share one filesystem)."""
        return os.path.join(self.tmp, name + "-state")

    def log(self, name: str) -> str:
        return os.path.join(self.tmp, name + ".log")

    def start_server(self) -> Daemon:
        self.server = Daemon(self.server_host, self.server_conf, self.log("server"), env=self.env,
                             command=self.command)
        self.server.wait_log(r"server started")
        self.check_loop(self.server)
        if not self.configure:
            self.configure_externally(self.server_host, self.server_addresses())
        return self.server

    def start_client(self, i: int = 1, prefix=(), env=None) -> Daemon:
        d = Daemon(self.client_hosts[i - 1], self.client_confs[i - 1], self.log(f"client{i}"),
                   prefix, {**self.env, **(env or {})}, self.command)
        d.wait_log(r"client started")
        self.check_loop(d)
        if not self.configure:
            self.configure_externally(self.client_hosts[i - 1], self.client_addresses(i))
        self.clients[i - 1] = d
        return d

    def check_loop(self, daemon: Daemon) -> None:
        """The daemon says which loop it runs; in CI the native one must be the one asked for."""
        m = daemon.wait_log(r"started: .* (native|Python) loop")
        if self.loop == "python" or os.environ.get("CI"):
            assert m.group(1).lower() == self.loop, m.group(0)

    def start(self) -> "Deployment":
        self.start_server()
        for i in range(1, len(self.client_hosts) + 1):
            self.start_client(i)
        return self

    def segment_on_the_wire(self, i: int = 1) -> None:
        """Make link i segment UDP GSO sends before the wire, as a NIC does.

        veth carries a GSO super-datagram (one send of many sealed packets, the native
        loop's offload) across whole, so a capture there would see one big datagram where
        an on-path attacker sees the packets; tests that capture and replay call this.
        """
        for host, name in ((self.server_host, self.links[i - 1][0]),
                           (self.client_hosts[i - 1], self.links[i - 1][1])):
            host.run(["ethtool", "-K", name, "tx-udp-segmentation", "off"])

    def client_host(self, i: int = 1):
        return self.client_hosts[i - 1]

    def ping(self, host, target: str, count: int = 3, check=True, extra=()):
        return host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", *extra, target],
                        check=check, timeout=count * 3 + 10)

    def wait_ping(self, host, target: str, timeout: float = 15.0, extra=()):
        """Ping until one answer comes back (the first packets may race the set-up)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ping(host, target, count=1, check=False, extra=extra).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no ping reply from {target} within {timeout} s")


def vpncrypt(*args):
    """The `vpncrypt` command of this checkout, run here (not in a namespace)."""
    return subprocess.run([sys.executable, "-m", "vpncrypt.cli.vpncrypt", *args],
                          capture_output=True, text=True, env=python_env(), timeout=60)


def show(state_dir, *args):
    """`vpncrypt show` of the daemons whose control sockets are in `state_dir`."""
    proc = vpncrypt("show", "--state-dir", state_dir, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def start_receiver(host, port: int = 5201):
    proc = host.popen([sys.executable, os.path.join(TESTS_DIR, "tcpxfer.py"), "recv", str(port)],
                      stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "listening"
    return proc


def receiver_result(proc, timeout: float = 120) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def start_sender(host, target: str, size: int, seed: int = 1, port: int = 5201,
                 pause_ms: int = 0):
    return host.popen([sys.executable, os.path.join(TESTS_DIR, "tcpxfer.py"), "send", target,
                       str(port), str(size), str(seed)] + ([str(pause_ms)] if pause_ms else []),
                      stdout=subprocess.PIPE, text=True)


def transfer(sender_host, receiver_host, target: str, size: int, seed: int = 1,
             port: int = 5201, timeout: float = 180) -> tuple[dict, dict]:
    """Move `size` bytes by TCP and return (sender, receiver) reports (bytes, sha256)."""
    recv = start_receiver(receiver_host, port)
    send = start_sender(sender_host, target, size, seed, port)
    out, _ = send.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1]), receiver_result(recv, timeout)
