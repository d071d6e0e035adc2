#!/usr/bin/env python3
"""The agent's memory on a device: RSS of `portcullis agent` idle and carrying 100 live MQTT
tunnels (mosquitto <- gateway /tunnel/raw <- agent <- 100 local MQTT clients, loopback).

    python3 benches/agent_rss.py GATEWAY_BIN AGENT_BIN [RUNS]

AGENT_BIN is meant to be the agent-only build, stripped:
    cargo build --release --no-default-features --features agent   (target dir of your choice)
    strip -o /tmp/portcullis-agent target/release/portcullis
Needs mosquitto. Every server gets an ephemeral port; readiness is polled, never slept on.
"""
import os, socket, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, what, deadline_s=20):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} never listened on {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def connect_packet(client_id):
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def run_once(gateway_bin, agent_bin, n=100):
    d = tempfile.mkdtemp()
    mq, gw, ag = free_port(), free_port(), free_port()
    open(f"{d}/m.conf", "w").write(f"listener {mq} 127.0.0.1\nallow_anonymous true\n")
    open(f"{d}/gw.toml", "w").write(
        f'[[listener]]\nbind = "127.0.0.1:{gw}"\n[routes.raw]\nupstreams = ["127.0.0.1:{mq}"]\nprotocol = "tcp"\n')
    open(f"{d}/agent.toml", "w").write(
        f'[[tunnel]]\nlisten = "127.0.0.1:{ag}"\nurl = "ws://127.0.0.1:{gw}/tunnel/raw"\n')
    quiet = subprocess.DEVNULL
    procs = [subprocess.Popen(["mosquitto", "-c", f"{d}/m.conf"], stderr=quiet)]
    try:
        wait_listening(mq, "mosquitto")
        procs.append(subprocess.Popen([gateway_bin, "serve", "--config", f"{d}/gw.toml"], stderr=quiet))
        wait_listening(gw, "the gateway")
        agent = subprocess.Popen([agent_bin, "agent", "--config", f"{d}/agent.toml"], stderr=quiet)
        procs.append(agent)
        wait_listening(ag, "the agent")
        idle = rss_kib(agent.pid)
        conns = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", ag))
            s.sendall(connect_packet(f"rss-{i}"))
            conns.append(s)
        connacks = 0
        for s in conns:
            s.settimeout(10)
            if s.recv(4)[:1] == b"\x20":
                connacks += 1
        busy = rss_kib(agent.pid)
        return idle, busy, connacks
    finally:
        for p in procs:
            p.kill()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    size = os.path.getsize(sys.argv[2])
    print(f"agent binary: {sys.argv[2]} ({size / 2**20:.1f} MiB)")
    for r in range(runs):
        idle, busy, ok = run_once(sys.argv[1], sys.argv[2])
        print(f"run {r + 1}: idle {idle / 1024:.1f} MiB, 100 live tunnels {busy / 1024:.1f} MiB "
              f"({(busy - idle) / 100:.1f} KiB per tunnel), {ok}/100 CONNACKs")


main()
