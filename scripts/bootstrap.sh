#!/usr/bin/env bash
# Install what meshnode needs on a fresh Debian machine, idempotently:
# Debian packages (python3-venv; with --test also zookeeper, a JRE,
# chromium for the browser tests and faketime for the clock-skew tests), a
# virtualenv in .venv and the project with its test and bench extras.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3 python3-venv python3-pip)
if [ "${1:-}" = "--test" ]; then
    [ -f /usr/share/java/zookeeper.jar ] || packages+=(zookeeper)
    command -v java >/dev/null || packages+=(default-jre-headless)
    [ -x /usr/bin/chromium ] || packages+=(chromium)
    command -v ip >/dev/null || packages+=(iproute2)
    compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || packages+=(faketime)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${packages[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.meshnode-installed
want=$(sha256sum setup.py | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing Python packages into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
    echo "$want" > "$stamp"
fi
