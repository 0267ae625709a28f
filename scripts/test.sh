#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine as root: set up, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k session).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
