#!/usr/bin/env bash
# End-to-end benchmark: direct mosquitto vs the gateway (/mqtt, /tunnel) vs mosquitto's own
# WebSocket listener vs the device agent (-> /tunnel), then gateway memory per idle device and
# the agent's RSS with 100 local connections. See benches/e2e.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

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
