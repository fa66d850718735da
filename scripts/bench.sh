#!/usr/bin/env bash
# Install what is needed, then run the benchmarks side by side with raw ZeroMQ,
# NATS and Redis (python -m bench). The benchmark itself installs Debian's
# nats-server and redis-server (and zookeeper) when they are missing.
# Arguments go to python -m bench: --quick for a small run, --help for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m bench "$@"
