#!/usr/bin/env bash
# Prepare this checkout to run Cube: a .venv with the pinned dependencies, a Docker
# engine that answers, and the offline images the tests and examples use.
# Idempotent: a second run only checks what the first one did.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -q >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "$@" >/dev/null
}

# --- Python environment -------------------------------------------------------
# A fresh Debian has no python3, or one without venv/ensurepip (python3-venv).
if [ ! -x .venv/bin/python ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing Debian's python3 and python3-venv"
    apt_install python3 python3-venv
fi
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import cube' 2>/dev/null \
    || [ requirements.lock -nt .venv/.cube-installed ] \
    || [ pyproject.toml -nt .venv/.cube-installed ]; then
    log "installing pinned dependencies"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
    touch .venv/.cube-installed
fi

# --- OpenAPI client generator -------------------------------------------------------
# tests/integration/test_generated_client.py generates a Python client from each
# server's served OpenAPI document, as a user of the API would, and uses it. The
# generator lives in a venv of its own: openapi-python-client pins typer below the one
# in requirements.lock, so it cannot join .venv. Pinned, as the lock pins the rest: a
# new release must not change what the test checks unseen.
OPENAPI_CLIENT="openapi-python-client==0.29.1"
if [ "$(cat .venv-openapi/.cube-installed 2>/dev/null)" != "$OPENAPI_CLIENT" ]; then
    log "installing $OPENAPI_CLIENT in .venv-openapi"
    [ -x .venv-openapi/bin/python ] || python3 -m venv .venv-openapi
    .venv-openapi/bin/python -m pip install -q "$OPENAPI_CLIENT"
    echo "$OPENAPI_CLIENT" >.venv-openapi/.cube-installed
fi

# --- Docker engine --------------------------------------------------------------
docker_ok() { docker info >/dev/null 2>&1; }
if ! docker_ok; then
    if ! command -v dockerd >/dev/null 2>&1; then
        log "installing Debian's docker.io"
        apt_install docker.io
    fi
    if ! docker_ok; then
        log "starting dockerd in the background (log: /var/log/cube-dockerd.log)"
        # A pid file left by a dockerd that died stops the next one from starting.
        if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
            as_root rm -f /var/run/docker.pid
        fi
        # In its own session: killing whatever ran setup (its process group) must not
        # take the engine with it.
        as_root setsid sh -c 'nohup dockerd >>/var/log/cube-dockerd.log 2>&1 &' </dev/null
        for _ in $(seq 1 120); do
            docker_ok && break
            sleep 0.5
        done
        docker_ok || { log "dockerd did not answer; see /var/log/cube-dockerd.log"; exit 1; }
    fi
fi

# --- Network fault tools ----------------------------------------------------------
# The chaos suite's partition tests put workers in network namespaces (iproute2's ip)
# and drop packets with iptables; they skip, saying why, where these cannot be used.
if ! command -v ip >/dev/null 2>&1; then
    log "installing Debian's iproute2"
    apt_install iproute2
fi
if ! command -v iptables >/dev/null 2>&1; then
    log "installing Debian's iptables"
    apt_install iptables
fi

# --- Servers the tests run themselves ----------------------------------------------
# Only their binaries are wanted: the packages' services are not started (policy-rc.d
# answers 101, "not allowed", while they install), and no recommendations.
apt_install_binary() {
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        made_policy=1
    fi
    apt_install --no-install-recommends "$@" || { [ "$made_policy" -eq 0 ] || as_root rm -f "$policy"; exit 1; }
    [ "$made_policy" -eq 0 ] || as_root rm -f "$policy"
}
# tests/integration/test_prometheus.py runs a real Prometheus server (its own config
# and storage in a temp dir) to scrape a cluster.
if ! command -v prometheus >/dev/null 2>&1; then
    log "installing Debian's prometheus (the binary only; its service stays stopped)"
    apt_install_binary prometheus
fi
# `cube manager --store etcd://...` keeps the manager's state in etcd; its tests start
# their own single-member etcd (/usr/bin/etcd) on loopback ports with a temp data dir.
if [ ! -x /usr/bin/etcd ]; then
    log "installing Debian's etcd-server (the binary only; its service stays stopped)"
    apt_install_binary etcd-server
fi

# --- A browser for the web UI's tests ---------------------------------------------
# tests/ui drives Debian's chromium, headless, through Playwright (a PyPI package that is
# only the driver: `playwright install` would download a browser build, which must never
# happen). Headless needs none of its recommendations (a desktop's upower, udev,
# notification daemon, printer setup); its dependencies bring a font for screenshots.
if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian's chromium (for the web UI's tests, headless)"
    apt_install --no-install-recommends chromium
fi

# --- Offline images ---------------------------------------------------------------
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    log "installing Debian's busybox-static"
    apt_install busybox-static
fi
# The same command builds them on a machine that installed Cube from a wheel
# (docs/operations.md); the recipe is src/cube/images/build.sh.
.venv/bin/cube images build >/dev/null
log "ready"
