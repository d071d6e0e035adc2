#!/usr/bin/env bash
# End-to-end benchmark (issue 11's table): MQTT throughput, CPU per message and latency direct
# to mosquitto vs through the gateway (/mqtt, /tunnel), mosquitto's own WebSocket listener and
# the device agent; bulk bytes against direct TCP and websockify; scale curves (publishing
# devices, connections per second); memory per idle device and the agent's RSS. See
# benches/e2e.rs for the knobs (BENCH_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto and the peer (websockify) from Debian, like the tests' tools.
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
[ -x /usr/bin/websockify ] || need+=(websockify)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "please install: ${need[*]} (the peer rows are skipped without websockify)"
    fi
fi

# 10,000 idle devices need ~20k descriptors in the gateway alone (device + upstream socket
# each), more than the usual hard limit. Raising the hard limit needs CAP_SYS_RESOURCE (root
# in a container may lack it); everything spawned inherits whatever we get.
for n in 1048576 524288 262144 131072 65536 32768; do
    if ulimit -Hn "$n" 2>/dev/null && ulimit -Sn "$n" 2>/dev/null; then
        break
    fi
done
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 21000 ]; then
    echo "open files limit: $(ulimit -n) (could not raise it: no CAP_SYS_RESOURCE?)"
else
    echo "open files limit: $(ulimit -n)"
fi

exec cargo bench --bench e2e "$@"
