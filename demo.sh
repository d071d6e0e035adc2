#!/usr/bin/env bash
# The first command: builds portcullis and runs its self-contained demo (embedded broker, the
# gateway, simulated devices, the agent), on a fresh Debian machine that has only the Rust
# toolchain. Extra arguments go to `portcullis demo` (e.g. --seconds 60).
#
# The one thing the build needs beyond Rust and a C compiler is cmake: pingora-core (our upstream
# pools and health checks) compiles zlib-ng through flate2, and zlib-ng's build script drives cmake.
# This script installs what is missing, says why, and changes nothing else.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "demo.sh: the build needs ${need[*]} (pingora-core compiles zlib-ng, whose build runs cmake and a C compiler); installing with apt-get" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "demo.sh: no apt-get here; install ${need[*]} with your package manager and run me again" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

exec cargo run --locked --release -- demo "$@"
