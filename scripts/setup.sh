#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) to build, test and demo vpncrypt:
# system packages, a virtual environment in .venv with the package installed in
# editable mode (which builds the native extension vpncrypt._fast), and a check
# that the extension loads. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# nftables: tests/test_tcp_transport.py drops a client network's UDP with nft.
# bird2: tests/test_announce_bird.py runs docs/bird-announce.conf (Debian enables its
# service, whose default configuration adds and removes no routes).
APT_PACKAGES=(python3 python3-venv python3-dev gcc libssl-dev iproute2 iputils-ping iperf3 tcpdump faketime scdoc shellcheck busybox make ethtool bird2 nftables)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 'setuptools>=77' >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# The editable install built the extension once; build it in place again, so a .pyx
# edited since is regenerated (Cython compares the times) and tests never run a stale one.
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
.venv/bin/python -c 'import vpncrypt._fast as f; print("setup: native core OK,", f.openssl_version())'
