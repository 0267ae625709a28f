#!/usr/bin/env python3
"""Failover time of a client with two servers: kill -9 of the server in use -> the first
ping answered through the other.

Each run builds a fresh deployment (tests/multiserver.py: two servers with the same
tunnel address 10.201.0.1, a client listing both, each over a link of its own), pings
10.201.0.1 every 50 ms from the client (`ping -D`), kills the server in use with
SIGKILL and takes the time from the kill to the first reply after it. The median of
--runs is the figure (README, bench/README.md).

    sudo .venv/bin/python bench/failover.py [--runs 7] [--loop native|python]

Needs root and iproute2; namespaces and processes go away after each run.
"""

import argparse
import statistics
import sys
import tempfile
import time

import harness  # noqa: F401  (sys.path for tests/'s helpers)

from multiserver import SERVER_TUN4, PingWatch, TwoServers, resumed_after  # noqa: E402
from netns import Netns  # noqa: E402


def one_run(loop: str) -> float:
    hosts = []

    def make():
        hosts.append(Netns())
        return hosts[-1]

    try:
        vpn = TwoServers(make, tempfile.mkdtemp(prefix="vpncrypt-failover-"), loop=loop).start()
        vpn.wait_ping(vpn.client_host, SERVER_TUN4)
        time.sleep(2.0)  # past the start-up probes
        watch = PingWatch(vpn.client_host, SERVER_TUN4)
        time.sleep(1.0)
        killed = time.time()
        vpn.servers[0].kill()
        time.sleep(6.0)
        resumed = resumed_after(watch.stop(), killed + 0.06)  # a reply already on its way
        if resumed is None:
            raise SystemExit("pings never resumed:\n" + vpn.client.text())
        return resumed
    finally:
        for host in reversed(hosts):
            host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--loop", choices=("native", "python"), default="native")
    args = parser.parse_args()
    times = []
    for n in range(args.runs):
        times.append(one_run(args.loop))
        print(f"run {n + 1}: {times[-1]:.2f} s", file=sys.stderr)
    print(f"failover ({args.loop} loop, {args.runs} runs): "
          f"median {statistics.median(times):.2f} s, min {min(times):.2f}, max {max(times):.2f}")


if __name__ == "__main__":
    main()
