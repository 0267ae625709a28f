"""One real tunnel across architectures, for scripts/cross-test.sh (run as root).

    python scripts/cross_tunnel.py CHROOT

Two tunnels, one after the other: over UDP, then over TCP (`listen_tcp`, `transport =
tcp`: frames whose lengths the big-endian CPU must write and read in network order).
The server is the vpncryptd built inside CHROOT (a foreign-architecture Debian chroot,
run by qemu-user), the client this checkout's native one; each in its own network
namespace, joined by a veth link (the test harness of tests/vpnharness.py), both with
`configure_interface = no` as on OpenWrt (see below). Checks:
ping both ways over IPv4 and IPv6, and a TCP transfer each way whose SHA-256 must
match on both ends. Prints the emulated daemon's start-up lines (what it fell back
from) and exits non-zero on any failure.
"""

import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from netns import Netns  # noqa: E402
from vpnharness import (  # noqa: E402
    SERVER_TUN4, SERVER_TUN6, Daemon, Deployment, client_tun4, client_tun6, transfer)

SIZE = 4 << 20  # bytes each way: enough for many full-size packets, quick under emulation


def one_tunnel(chroot: str, transport: str) -> int:
    print(f"cross tunnel over {transport.upper()}:")
    hosts: list[Netns] = []
    # The chroot sees the configs and logs at the same path as the host (a bind mount).
    tmp = tempfile.mkdtemp(prefix="vpncrypt-cross-")
    inside = chroot + tmp
    os.makedirs(inside, exist_ok=True)
    subprocess.run(["mount", "--bind", tmp, inside], check=True)
    failures = []
    try:
        def make_host() -> Netns:
            hosts.append(Netns())
            return hosts[-1]

        emulated = ["chroot", chroot, "/usr/bin/env", "PYTHONPATH=/src",
                    "/opt/vpn/bin/python", "-m", "vpncrypt.cli.vpncryptd"]
        # The emulated server runs the router's path: `configure_interface = no`, its
        # addresses added from outside (by the native ip(8), as netifd would), so it
        # needs no rtnetlink. That is also the only way on s390x: qemu-user's rtnetlink
        # translation garbles big-endian messages (even the chroot's own `ip link`
        # prints "!!!Deficit"), which a real big-endian kernel never does.
        dep = Deployment(make_host, tmp, command=emulated, configure=False,
                         tcp=(1,) if transport == "tcp" else ())
        # Not dep.start_server(): under emulation the start can take far longer than
        # the harness waits.
        server = dep.server = Daemon(dep.server_host, dep.server_conf, dep.log("server"),
                                     env=dep.env, command=emulated)
        server.wait_log(r"server started", timeout=180)
        dep.check_loop(server)
        dep.configure_externally(dep.server_host, dep.server_addresses())
        dep.command = None  # the client: this checkout, native (configured the same way)
        dep.start_client(1)
        print("emulated server:", *server.text().strip().splitlines()[:6], sep="\n  ")
        client = dep.client_host(1)
        # The client holds data until its first time sync, which under emulation may take
        # longer than the first pings wait: the checks start once the tunnel is up.
        dep.wait_ping(client, SERVER_TUN4, timeout=60)
        for host, target in ((client, SERVER_TUN4), (client, SERVER_TUN6),
                             (dep.server_host, client_tun4(1)), (dep.server_host, client_tun6(1))):
            proc = dep.ping(host, target, count=5, check=False)
            ok = proc.returncode == 0
            print(f"ping {target}: {'ok' if ok else 'FAILED'}")
            if not ok:
                failures.append(f"ping {target}")
        for name, sender, receiver, target in (
                ("native -> emulated", client, dep.server_host, SERVER_TUN4),
                ("emulated -> native", dep.server_host, client, client_tun4(1))):
            sent, got = transfer(sender, receiver, target, SIZE, timeout=300)
            ok = sent["sha256"] == got["sha256"] and got["bytes"] == SIZE
            print(f"transfer {name}: {got['bytes']} bytes, sha256 "
                  f"{'matches' if ok else 'DIFFERS'}, {SIZE / sent['seconds'] / 1e6:.1f} MB/s")
            if not ok:
                failures.append(f"transfer {name}")
        for d in (dep.clients[0], server):
            if d.proc.poll() is not None:
                failures.append(f"a daemon exited ({d.log})")
    except Exception as exc:  # reported as a failure of the run, with the logs kept
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        for host in hosts:
            host.close()
        subprocess.run(["umount", "-l", inside], check=False)
    if failures:
        print(f"cross tunnel over {transport.upper()} FAILED:", "; ".join(failures),
              f"(logs in {tmp})")
        return 1
    print(f"cross tunnel over {transport.upper()}: ok")
    return 0


def main(chroot: str) -> int:
    chroot = os.path.abspath(chroot)
    return max(one_tunnel(chroot, transport) for transport in ("udp", "tcp"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: cross_tunnel.py CHROOT")
    sys.exit(main(sys.argv[1]))
