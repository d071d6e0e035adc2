#!/usr/bin/env bash
# The test command: installs what the integration tests run for real and what the build needs,
# then runs every test, twice over:
#   1. the default build (gateway, agent, demo): every test;
#   2. the agent-only build (--no-default-features --features agent), which is what devices
#      carry: the agent's own tests, against the gateway of build 1 run as a process.
# Works on a fresh Debian machine with only the Rust toolchain. Extra args go to `cargo test`
# of build 1.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
# The build: cmake for zlib-ng, which pingora-core compiles through flate2.
have cmake || need+=(cmake)
# The gateway's and the agent's peers: mosquitto and its clients (legacy MQTT devices), a real
# CONNECT proxy (squid: it answers wrong credentials with 407, tinyproxy 1.11 with 401), openssl
# for squid's htpasswd line, stdbuf.
have mosquitto || need+=(mosquitto)
have mosquitto_sub || need+=(mosquitto-clients)
have squid || need+=(squid)
have openssl || need+=(openssl)
have stdbuf || need+=(coreutils)
# The cluster's meeting point: bans shared between gateways.
have redis-server || need+=(redis-server)
# Python for schemathesis (the admin API's OpenAPI conformance run), installed below in a venv.
have python3 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The dashboard's browser test: Debian's chromium and its driver (one build, so they match).
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
# The edges the profiles are for, run from profiles/ in front of the gateway.
have nginx || need+=(nginx)
have haproxy || need+=(haproxy)
have caddy || need+=(caddy)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# schemathesis, from PyPI at a pinned version, in a venv of its own under target/.
st_venv="$PWD/target/st-venv"
if [ ! -x "$st_venv/bin/schemathesis" ]; then
  echo "installing: schemathesis (PyPI) into target/st-venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
fi
export PORTCULLIS_SCHEMATHESIS="$st_venv/bin/schemathesis"

# selenium, from PyPI at a pinned version, in its own venv: it drives chromium for the dashboard.
browser_venv="$PWD/target/browser-venv"
if ! "$browser_venv/bin/python" -c 'import selenium' >/dev/null 2>&1; then
  echo "installing: selenium (PyPI) into target/browser-venv"
  python3 -m venv "$browser_venv"
  "$browser_venv/bin/pip" install --quiet --disable-pip-version-check selenium==4.38.0
fi
export PORTCULLIS_BROWSER_PYTHON="$browser_venv/bin/python"

# Envoy and Traefik have profiles too, but no package in Debian's archive or in a registry these
# machines reach: tests/deploy.rs parses their YAML; nothing runs them.
for edge in envoy traefik; do
  have "$edge" || echo "skipped: $edge is not installable here; profiles/$edge*.y*ml is parsed, not run"
done

echo "== 1/2: the default build"
cargo test --locked "$@"

echo "== 2/2: the agent-only build, against the gateway of build 1"
# Its own target dir: the same binary name would otherwise replace build 1's gateway.
# Tests that need the gateway in the library are left out by their required-features.
PORTCULLIS_GATEWAY_BIN="$PWD/target/debug/portcullis" CARGO_TARGET_DIR=target/agent-only \
  cargo test --locked --no-default-features --features agent
