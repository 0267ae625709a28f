#!/usr/bin/env bash
# The demo, from a fresh Debian 12 machine as root: set up, then run a server and a
# client in two network namespaces, ping through the tunnel and move 100 MB through it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py
