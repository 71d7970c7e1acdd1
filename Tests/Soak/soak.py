#!/usr/bin/env python3
"""Soak: mixed TCP and HTTP load through faultlined while its rules reload every second and
faults are switched through the control socket every 100 ms.

    python3 Tests/Soak/soak.py --duration 600 [--faultlined .build/release/faultlined]

Loopback only, bounded in time (the duration plus a minute at most). Passes (exit 0) when no
client saw an unexpected error, the daemon never died, and its RSS after warm-up stayed flat
(end within 15 % + 4 MiB of the start); prints the figures either way.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


RULES = """\
# Written by the soak every second; version {version}.
listeners:
  - name: tcp
    listen: 127.0.0.1:{tcp}
    upstream: 127.0.0.1:{demo}
  - name: web
    listen: 127.0.0.1:{web}
    upstream: 127.0.0.1:{demo}
    protocol: http
faults:
  - name: tcp-lag
    listener: tcp
    enabled: false
    latency: {{delay: {delay}ms, jitter: 1ms}}
  - name: web-lag
    listener: web
    enabled: false
    latency: {{delay: {delay}ms, apply: response}}
{extra}"""

# Faults that never make a client fail: what is switched must slow traffic, not break it.
EXTRA = """\
  - name: tagged-abort
    listener: web
    match: {headers: {x-soak-never-sent: "yes"}}
    abort: {status: 503}
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the control socket, as `curl --unix-socket` does."""

    def __init__(self, path):
        super().__init__("faultline", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


class Load(threading.Thread):
    """One keep-alive client: HTTP requests through either listener, each answer checked."""

    def __init__(self, name, port, deadline, errors, counts, index):
        super().__init__(daemon=True)
        self.name, self.port, self.deadline, self.errors, self.counts, self.index = name, port, deadline, errors, counts, index

    def run(self):
        conn = None
        paths = ["/", "/bytes/1000", "/bytes/65536", "/status/204"]
        while time.monotonic() < self.deadline:
            path = paths[random.randrange(len(paths))]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                expected = {"/": 200, "/bytes/1000": 200, "/bytes/65536": 200, "/status/204": 204}[path]
                if response.status != expected:
                    raise RuntimeError("%s: status %d" % (path, response.status))
                if path.startswith("/bytes/") and len(body) != int(path.split("/")[-1]):
                    raise RuntimeError("%s: %d bytes" % (path, len(body)))
                self.counts[self.index] += 1
            except Exception as error:  # every failure is unexpected here
                self.errors.append("%.1f s %s listener %s: %r" % (time.monotonic() % 1000, self.name, path, error))
                conn = None
                time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=None, help="default: a tenth of the duration, at most 60 s")
    parser.add_argument("--clients", type=int, default=8, help="per listener")
    parser.add_argument("--faultlined", default=os.path.join(ROOT, ".build/debug/faultlined"))
    parser.add_argument("--faultctl", default=None)
    parser.add_argument("--no-reload", action="store_true", help="do not edit the rules (to narrow a failure down)")
    parser.add_argument("--no-switch", action="store_true", help="do not switch faults (likewise)")
    args = parser.parse_args()
    faultctl = args.faultctl or os.path.join(os.path.dirname(args.faultlined), "faultctl")
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 10)

    folder = tempfile.mkdtemp(prefix="faultline-soak-")
    rules_dir = os.path.join(folder, "rules")
    os.mkdir(rules_dir)
    socket_path = os.path.join(folder, "control.sock")
    demo, tcp, web, metrics = free_port(), free_port(), free_port(), free_port()
    ports = dict(demo=demo, tcp=tcp, web=web)

    def write_rules(version, valid=True):
        text = RULES.format(version=version, delay=1 + version % 3, extra=EXTRA if version % 2 else "", **ports)
        if not valid:
            text += "  - {name: broken, listener: nowhere, latency: {delay: soon}}\n"
        path = os.path.join(rules_dir, "soak.yaml")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)  # as editors and deploy tools do

    write_rules(0)
    log = open(os.path.join(folder, "faultlined.log"), "w")
    daemon = subprocess.Popen(
        [args.faultlined, "--rules", rules_dir, "--demo", "127.0.0.1:%d" % demo, "--metrics", "127.0.0.1:%d" % metrics,
         "--control-socket", socket_path, "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    start = time.monotonic()
    while not os.path.exists(socket_path) and time.monotonic() - start < 20:
        time.sleep(0.05)
    time.sleep(0.3)

    deadline = time.monotonic() + args.duration
    errors, counts = [], [0] * (2 * args.clients)
    clients = [Load(*(("tcp", tcp) if i % 2 == 0 else ("http", web)), deadline, errors, counts, i) for i in range(2 * args.clients)]
    for client in clients:
        client.start()

    toggles, toggle_failures, reloads, invalid_reloads = [0], [], [0], [0]

    def toggler():
        """Every 100 ms a change through the control socket: a file fault on or off (on for
        a second at most), now and then a runtime fault with an expiry; every 50th through
        the faultctl binary."""
        environment = dict(os.environ, FAULTLINE_SOCKET=socket_path)
        names = ["tcp-lag", "web-lag"]
        control = None
        step = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            step += 1
            name = names[step % 2]
            verb = "enable" if (step // 2) % 2 == 0 else "disable"
            try:
                if step % 50 == 0:
                    command = [faultctl, verb, name] + (["--for", "1s"] if verb == "enable" else [])
                    result = subprocess.run(command, env=environment, capture_output=True, timeout=10)
                    if result.returncode != 0:
                        raise RuntimeError("faultctl %s: %s" % (" ".join(command[1:]), result.stderr.decode()[:200]))
                else:
                    if step % 10 == 0:
                        path, body = "/v1/faults", {"fault": {"name": "soak-%d" % step, "listener": "tcp",
                                                              "latency": {"delay": "2ms"}}, "for": "2s"}
                    else:
                        path, body = "/v1/faults/%s/%s" % (name, verb), ({"for": "1s"} if verb == "enable" else {})
                    if control is None:
                        control = UnixHTTPConnection(socket_path)
                    control.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
                    response = control.getresponse()
                    text = response.read()
                    if response.status >= 300:
                        raise RuntimeError("POST %s: %d %s" % (path, response.status, text[:200]))
            except Exception as error:
                toggle_failures.append(repr(error))
                control = None
            toggles[0] += 1
            next_at += 0.1
            time.sleep(max(0, next_at - time.monotonic()))

    def reloader():
        version = 0
        while time.monotonic() < deadline:
            time.sleep(1)
            version += 1
            valid = version % 10 != 0  # every tenth edit is invalid: the last good rules must stay
            write_rules(version, valid)
            reloads[0] += 1
            invalid_reloads[0] += 0 if valid else 1

    threads = ([] if args.no_switch else [threading.Thread(target=toggler, daemon=True)]) + (
        [] if args.no_reload else [threading.Thread(target=reloader, daemon=True)])
    for thread in threads:
        thread.start()

    samples = []
    while time.monotonic() < deadline:
        time.sleep(1)
        if daemon.poll() is not None:
            break
        samples.append((time.monotonic() - start, rss_kib(daemon.pid)))

    for thread in clients + threads:
        thread.join(timeout=30)
    alive = daemon.poll() is None
    metrics_text = ""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", metrics, timeout=10)
        conn.request("GET", "/metrics")
        metrics_text = conn.getresponse().read().decode()
        conn.close()
    except Exception:
        pass
    if alive:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    log.close()

    after = [rss for (t, rss) in samples if t >= warmup] or [rss for (_, rss) in samples] or [0]
    rss_start, rss_peak, rss_end = after[0], max(after), after[-1]
    flat = rss_end <= rss_start * 1.15 + 4096
    reload_lines = [line.replace("faultline_rules_reload_total", "reloads")
                    for line in metrics_text.splitlines() if line.startswith("faultline_rules_reload_total")]
    print("soak: %.0f s, %d clients per listener (TCP and HTTP)" % (args.duration, args.clients))
    print("requests answered: %d, unexpected client errors: %d" % (sum(counts), len(errors)))
    print("fault switches through the control socket: %d (%d failed)" % (toggles[0], len(toggle_failures)))
    print("rule edits: %d (%d invalid); %s" % (reloads[0], invalid_reloads[0], "; ".join(reload_lines)))
    print("daemon alive at the end: %s, exit status %s" % (alive, daemon.returncode))
    print("RSS after %.0f s warm-up: start %.1f MiB, peak %.1f MiB, end %.1f MiB (%s)" % (
        warmup, rss_start / 1024, rss_peak / 1024, rss_end / 1024, "flat" if flat else "GREW"))
    for line in (errors + toggle_failures)[:10]:
        print("  " + line)
    ok = alive and not errors and not toggle_failures and flat and daemon.returncode == 0 and sum(counts) > 0
    if ok:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print("kept for a look: %s" % folder)
    print("soak: %s" % ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
