#!/usr/bin/env bash
# Install what is needed, then start a local mesh of 3 nodes and show messages
# flowing between them. Ctrl-C stops it; every node is shut down on the way out.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/meshnode demo "$@"
