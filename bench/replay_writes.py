"""How often the daemons write their replay state (the flash-wear figure for a router
that puts `state_dir` on flash): a server and a client in namespaces, the state files'
save generations read before and after a minute idle (keepalive 25 s) and a minute of
pings every 0.2 s. Needs root and `ip netns`.

    python bench/replay_writes.py [--seconds 60]
"""

import argparse
import glob
import os
import re
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (puts tests/ on sys.path)
from netns import Netns
from vpnharness import SERVER_TUN4, Deployment


def generations(vpn, who) -> dict:
    out = {}
    for path in glob.glob(os.path.join(vpn.state_dir(who), "*.replay*")):
        ends = re.findall(r"^end (\d+) ", open(path).read(), re.M)
        out[path] = int(ends[-1]) if ends else 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    harness.require_netns("replay_writes.py")
    hosts = []

    def make():
        hosts.append(Netns())
        return hosts[-1]

    try:
        vpn = Deployment(make, Path(tempfile.mkdtemp()), keepalive=25).start()
        client = vpn.client_host()
        vpn.wait_ping(client, SERVER_TUN4)
        count = int(args.seconds / 0.2)
        for label, work in (("idle, keepalive 25 s", lambda: time.sleep(args.seconds)),
                            ("ping every 0.2 s", lambda: client.run(
                                ["ping", "-q", "-i", "0.2", "-c", str(count), SERVER_TUN4],
                                timeout=args.seconds + 30))):
            before = {w: generations(vpn, w) for w in ("server", "client1")}
            work()
            after = {w: generations(vpn, w) for w in ("server", "client1")}
            for who in before:
                saves = sum(n - before[who].get(p, 0) for p, n in after[who].items())
                print(f"{label}: {who}: {saves} saves in {args.seconds} s, "
                      f"{saves * 3600 // args.seconds} an hour")
    finally:
        for h in hosts:
            h.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
