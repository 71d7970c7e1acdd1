#!/usr/bin/env python3
"""Memory of faultlined under what clients do to it, reported as RSS:

  idle      N clients connected through the proxy (each with its upstream connection), silent;
  no-read   64 clients whose upstream pushes without pause and who never read;
  flood     64 clients sending as fast as they can into a blackhole fault.

    python3 Tests/Benchmarks/memory-under-load.py [--connections 10000] [--faultlined .build/release/faultlined]

Loopback only; every phase is bounded in time. The daemon's descriptor limit is raised for it
(prlimit) when the machine allows; otherwise N is lowered to fit and the report says so.
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UPSTREAM = r"""
import socket, sys, threading, time
mode = sys.argv[1]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0)); server.listen(4096)
print(server.getsockname()[1], flush=True)
held = []
def push(conn):
    chunk = b"x" * 65536
    try:
        while True: conn.sendall(chunk)
    except OSError: pass
deadline = time.time() + float(sys.argv[2])
server.settimeout(1)
while time.time() < deadline:
    try: conn, _ = server.accept()
    except socket.timeout: continue
    held.append(conn)
    if mode == "push": threading.Thread(target=push, args=(conn,), daemon=True).start()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def raise_own_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for value in (wanted, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(value, max(hard, value)), max(hard, value)))
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ValueError, OSError):
            continue
    return soft


def start_daemon(args, upstream_port, rules_text, limit):
    folder = tempfile.mkdtemp(prefix="faultline-mem-")
    with open(os.path.join(folder, "r.yaml"), "w") as f:
        f.write(rules_text.format(listen=args.listen_port, upstream=upstream_port))
    command = ["prlimit", "--nofile=%d:%d" % (limit, limit), "--", args.faultlined, "--rules", folder,
               "--no-metrics", "--no-control", "--log-level", "error"]
    daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", args.listen_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    return daemon


def upstream(mode, seconds):
    process = subprocess.Popen([sys.executable, "-c", UPSTREAM, mode, str(seconds)], stdout=subprocess.PIPE)
    port = int(process.stdout.readline())
    return process, port


RULES = """\
listeners:
  - {{name: m, listen: "127.0.0.1:{listen}", upstream: "127.0.0.1:{upstream}", max_connections: 20000}}
"""
BLACKHOLE = RULES + """\
faults:
  - {{name: hole, listener: m, direction: upstream, blackhole: {{}}}}
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faultlined", default=os.path.join(ROOT, ".build/release/faultlined"))
    args = parser.parse_args()
    if not os.path.exists(args.faultlined):
        args.faultlined = os.path.join(ROOT, ".build/debug/faultlined")
    args.listen_port = free_port()
    wanted = 2 * args.connections + 512
    own = raise_own_limit(args.connections + 512)
    # The upstream holds the other end of every connection in a process of its own.
    n = min(args.connections, own - 512)
    daemon_limit = max(wanted, 1024)
    try:
        subprocess.run(["prlimit", "--nofile=%d:%d" % (daemon_limit, daemon_limit), "--", "true"], check=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        daemon_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        n = min(n, (daemon_limit - 512) // 2)
    print("binary: %s" % os.path.relpath(args.faultlined, ROOT))
    if n < args.connections:
        print("descriptor limits allow %d connections, not %d" % (n, args.connections))

    # Idle clients, round after round: what later rounds add is what a round leaks. Every
    # closed connection leaves two loopback ports in TIME_WAIT for a minute (the client's and
    # the daemon's towards its upstream), so the rounds after the first are sized to fit the
    # rest of the ephemeral port range; a connect that fails anyway ends its round.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    ports = int((high - low) * 0.9)
    later = min(n, max(100, (ports - 2 * n) // (2 * max(1, args.rounds - 1))))
    up, up_port = upstream("hold", 300)
    daemon = start_daemon(args, up_port, RULES, daemon_limit)
    base = rss_mib(daemon.pid)
    for round in range(1, args.rounds + 1):
        clients = []
        start = time.monotonic()
        for _ in range(n if round == 1 else later):
            try:
                clients.append(socket.create_connection(("127.0.0.1", args.listen_port), timeout=10))
            except OSError as error:
                print("idle, round %d: connect %d failed (%s); the round ends there" % (round, len(clients) + 1, error))
                break
            if time.monotonic() - start > 60:
                break
        time.sleep(3)
        idle = rss_mib(daemon.pid)
        opened = len(clients)
        print("idle, round %d: %d connections: RSS %.1f MiB -> %.1f MiB, %.1f KiB per connection"
              % (round, opened, base, idle, (idle - base) * 1024 / max(1, opened)))
        for client in clients:
            client.close()
        time.sleep(3)
        print("idle, round %d: after they all closed: RSS %.1f MiB" % (round, rss_mib(daemon.pid)))
    daemon.terminate(); daemon.wait(timeout=30); up.kill()

    # Clients that never read while the upstream pushes.
    up, up_port = upstream("push", 60)
    daemon = start_daemon(args, up_port, RULES, daemon_limit)
    base = rss_mib(daemon.pid)
    stuck = []
    for _ in range(64):
        s = socket.create_connection(("127.0.0.1", args.listen_port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.append(s)
    peak = base
    for _ in range(10):
        time.sleep(0.5)
        peak = max(peak, rss_mib(daemon.pid))
    print("no-read: 64 clients that never read, upstream pushing: RSS %.1f MiB -> peak %.1f MiB over 5 s (%.1f KiB per connection)"
          % (base, peak, (peak - base) * 1024 / 64))
    for s in stuck:
        s.close()
    daemon.terminate(); daemon.wait(timeout=30); up.kill()

    # A flood into a blackhole.
    up, up_port = upstream("hold", 60)
    daemon = start_daemon(args, up_port, BLACKHOLE, daemon_limit)
    base = rss_mib(daemon.pid)
    sent = [0]
    stop = time.monotonic() + 5
    def flood():
        s = socket.create_connection(("127.0.0.1", args.listen_port), timeout=10)
        chunk = b"y" * 65536
        while time.monotonic() < stop:
            try:
                s.sendall(chunk)
                sent[0] += len(chunk)
            except OSError:
                break
        s.close()
    threads = [threading.Thread(target=flood) for _ in range(64)]
    for t in threads:
        t.start()
    peak = base
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        peak = max(peak, rss_mib(daemon.pid))
    print("flood: 64 clients sent %.0f MiB in 5 s into a blackhole: RSS %.1f MiB -> peak %.1f MiB"
          % (sent[0] / 1048576, base, peak))
    daemon.terminate(); daemon.wait(timeout=30); up.kill()


if __name__ == "__main__":
    main()
