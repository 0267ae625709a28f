"""The demo: a vpncrypt server and client in two network namespaces on this machine.

Generates keys and configs, starts both daemons, pings through the tunnel (IPv4 and
IPv6), moves 100 MB through it by TCP (checked by SHA-256 on both ends) and prints
the throughput. Everything it creates (namespaces, processes, files) is removed at
the end. Run as root: `scripts/demo.sh`.
"""

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..")]

from netns import Netns, _unavailable_reason  # noqa: E402
from vpnharness import SERVER_TUN4, SERVER_TUN6, Deployment, transfer  # noqa: E402

SIZE = 100 << 20


def main() -> int:
    reason = _unavailable_reason()
    if reason:
        print(f"demo: cannot run: {reason}", file=sys.stderr)
        return 1
    hosts = []

    def make():
        hosts.append(Netns())
        return hosts[-1]

    with tempfile.TemporaryDirectory(prefix="vpncrypt-demo-") as tmp:
        try:
            vpn = Deployment(make, tmp).start()
            print("demo: server and client running in namespaces", hosts[0].name, hosts[1].name)
            print(open(vpn.server.log).read().strip().splitlines()[0].split("INFO ", 1)[1])
            client = vpn.client_host()
            vpn.wait_ping(client, SERVER_TUN4)
            for target in (SERVER_TUN4, SERVER_TUN6):
                out = vpn.ping(client, target, count=3).stdout.strip().splitlines()
                print(f"demo: ping {target}: {out[-2]}")
            started = time.monotonic()
            sent, received = transfer(client, vpn.server_host, SERVER_TUN4, SIZE)
            seconds = time.monotonic() - started
            ok = sent["sha256"] == received["sha256"] and received["bytes"] == SIZE
            print(f"demo: moved {SIZE >> 20} MB client -> server in {seconds:.2f} s = "
                  f"{SIZE * 8 / seconds / 1e6:.0f} Mbit/s; SHA-256 "
                  f"{'matches' if ok else 'DIFFERS'} ({received['sha256'][:16]}...)")
            return 0 if ok else 1
        finally:
            for host in hosts:
                host.close()


if __name__ == "__main__":
    sys.exit(main())
