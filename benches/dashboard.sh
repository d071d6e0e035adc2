#!/usr/bin/env bash
# The dashboard's cost (benches/dashboard.rs): every call it makes, timed, with 1,000 devices
# and 10,000 bans, and the gateway's CPU while a page is open in headless chromium. About eight
# minutes (it waits for an hour's worth of monitor samples at one a second).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
browser_venv="$PWD/target/browser-venv"
if ! "$browser_venv/bin/python" -c 'import selenium' >/dev/null 2>&1; then
    python3 -m venv "$browser_venv"
    "$browser_venv/bin/pip" install --quiet --disable-pip-version-check selenium==4.38.0
fi
export PORTCULLIS_BROWSER_PYTHON="$browser_venv/bin/python"
exec cargo bench --bench dashboard "$@"
