#!/usr/bin/env bash
# Install what is needed (including Debian's zookeeper), then run the whole test
# suite. Extra arguments go to pytest. pytest's "no tests ran" (exit 5) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
