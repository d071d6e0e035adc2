#!/usr/bin/env bash
# The test command: installs what the integration tests run for real (mosquitto, nginx, squid,
# mosquitto-clients) and what the build needs (cmake, for a C dependency of pingora), then runs
# every test.
# Works on a fresh Debian machine with only the Rust toolchain. Extra args go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# The device agent's tests: legacy MQTT clients, a real CONNECT proxy (squid: it answers wrong
# credentials with 407, tinyproxy 1.11 with 401), openssl for squid's htpasswd line, stdbuf.
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
[ -x /usr/sbin/squid ] || command -v squid >/dev/null 2>&1 || need+=(squid)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v stdbuf >/dev/null 2>&1 || need+=(coreutils)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo test --locked "$@"
