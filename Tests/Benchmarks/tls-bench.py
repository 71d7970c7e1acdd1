#!/usr/bin/env python3
"""New TLS connections per second: faultlined and HAProxy terminating TLS in front of the same
nginx upstream, with the same P-256 certificate, measured in turns in one run.

    python3 Tests/Benchmarks/tls-bench.py [--duration 5] [--rounds 3] [--conns 32] [--workers 1]
                                          [--faultlined .build/release/faultlined]

Every request is a new TCP connection and a full TLS handshake (wrk with `Connection: close`
does no session resumption), then a 128-byte response. Three proxies take turns, each round
starting one later so that drift spreads evenly:

  haproxy        HAProxy, `mode tcp`, `bind ... ssl crt`, nbthread = --workers
  faultline      faultlined, `tls: {certificate, key}` (the same files), --event-loops = --workers
  faultline-ca   faultlined, `tls: {names: [...]}`: leaves minted by its own CA, cached

and a second client, `openssl s_time -new` (one connection at a time), checks the order.
Printed per proxy: the median connections/s over the rounds, the proxy's CPU time per
connection (its /proc stat), errors, and each as a ratio to HAProxy from the same run.

Loopback only; every client run is bounded by its duration and a timeout. Needs wrk, haproxy,
nginx and openssl (Debian: apt-get install wrk haproxy nginx-light openssl); the numbers are
the machine's, so compare the ratios, not the absolute figures.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "bench.faultline.test"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def cpu_seconds(pid):
    """User + system time of the process and its reaped children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is fields[0]; utime, stime, cutime, cstime are fields 11..14.
    return sum(int(x) for x in fields[11:15]) / TICKS


def make_certificates(work):
    """A throwaway CA and a P-256 leaf for NAME and 127.0.0.1 signed by it."""
    def openssl(*args):
        run(["openssl", *args], cwd=work)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem")
    openssl("req", "-x509", "-new", "-key", "ca-key.pem", "-subj", "/CN=Bench CA", "-days", "2", "-out", "ca.pem")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf-key.pem")
    openssl("req", "-new", "-key", "leaf-key.pem", "-subj", f"/CN={NAME}", "-out", "leaf.csr")
    with open(os.path.join(work, "ext.cnf"), "w") as f:
        f.write(f"subjectAltName=DNS:{NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "leaf.pem")
    with open(os.path.join(work, "haproxy.pem"), "w") as out:
        for part in ("leaf.pem", "leaf-key.pem"):
            with open(os.path.join(work, part)) as f:
                out.write(f.read())


class Proxy:
    def __init__(self, name, command, port, env=None):
        self.name, self.command, self.port, self.env = name, command, port, env
        self.process = None

    def start(self, log):
        self.process = subprocess.Popen(self.command, stdout=log, stderr=log, start_new_session=True, env=self.env)
        wait_for_port(self.port)

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def tree_cpu(self):
        """CPU seconds of the proxy and its children (HAProxy's master/worker, if any)."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.process.pid:  # its session (started with a new one)
                    total += cpu_seconds(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return total


def wrk_new_connections(port, duration, conns, threads):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "-H", "Connection: close",
         f"https://127.0.0.1:{port}/small"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=duration + 30).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return rate, requests, errors


def s_time(port, duration, ca):
    out = subprocess.run(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(duration),
         "-www", "/small", "-CAfile", ca],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=duration + 30).stdout
    m = re.search(r"([\d.]+) connections/user sec", out)
    # s_time reports per second of its own CPU; the wall-clock figure is what a client sees.
    n = re.search(r"(\d+) connections in (\d+) real seconds", out)
    if not n:
        raise RuntimeError(f"openssl s_time printed no result:\n{out}")
    return int(n.group(1)) / int(n.group(2))


def handshake_summary(port, ca):
    """Protocol, cipher and key exchange the proxy negotiates with OpenSSL's client."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME, "-CAfile", ca,
         "-verify_return_error", "-brief"],
        input="", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10).stdout
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return "{} {} {}+{} {}".format(fields.get("Protocol version", "?"), fields.get("Ciphersuite", "?"),
                                   fields.get("Signature type", "?"), fields.get("Hash used", "?"),
                                   fields.get("Negotiated TLS1.3 group", fields.get("Server Temp Key", "?")))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="HAProxy nbthread and faultlined --event-loops")
    parser.add_argument("--faultlined", default=os.path.join(ROOT, ".build/release/faultlined"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    for tool in ("wrk", "haproxy", "nginx", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing (Debian: apt-get install wrk haproxy nginx-light openssl)")
    if not os.access(args.faultlined, os.X_OK):
        sys.exit(f"{args.faultlined} is not built (bash Tests/build-release.sh --product faultlined)")

    work = tempfile.mkdtemp(prefix="faultline-tls-bench-")
    os.chmod(work, 0o755)  # nginx workers run as another user
    procs = []
    log = open(os.path.join(work, "proxies.log"), "w")
    try:
        make_certificates(work)
        ca = os.path.join(work, "ca.pem")
        os.makedirs(os.path.join(work, "www"))
        with open(os.path.join(work, "www", "small"), "wb") as f:
            f.write(os.urandom(128))
        upstream = free_port()
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{upstream}; root {work}/www; }}
}}
""")
        nginx = Proxy("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-c", f"{work}/nginx.conf",
                                "-p", work], upstream)
        nginx.start(log)
        procs.append(nginx)

        haproxy_port, ours_port, minted_port = free_port(), free_port(), free_port()
        with open(os.path.join(work, "haproxy.cfg"), "w") as f:
            f.write(f"""global
    nbthread {args.workers}
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls
    bind 127.0.0.1:{haproxy_port} ssl crt {work}/haproxy.pem
    default_backend upstream
backend upstream
    server nginx 127.0.0.1:{upstream}
""")
        for name, port, tls in (("fixed", ours_port, f"{{certificate: {work}/leaf.pem, key: {work}/leaf-key.pem}}"),
                                ("minted", minted_port, f"{{names: [{NAME}, 127.0.0.1]}}")):
            os.makedirs(os.path.join(work, f"rules-{name}"))
            with open(os.path.join(work, f"rules-{name}", "bench.yaml"), "w") as f:
                f.write(f"listeners:\n  - name: bench\n    listen: 127.0.0.1:{port}\n"
                        f"    upstream: 127.0.0.1:{upstream}\n    tls: {tls}\n")
        state = os.path.join(work, "state")
        if os.path.exists(state):
            shutil.rmtree(state)
        os.makedirs(state, mode=0o700)

        def faultlined(rules, port):
            return Proxy(f"faultlined {rules}", [
                args.faultlined, "serve", "--rules", os.path.join(work, rules), "--state-dir", state,
                "--event-loops", str(args.workers), "--no-metrics", "--no-control", "--log-level", "warning"], port)

        proxies = {
            "haproxy": Proxy("haproxy", ["haproxy", "-f", f"{work}/haproxy.cfg", "-db"], haproxy_port),
            "faultline": faultlined("rules-fixed", ours_port),
            "faultline-ca": faultlined("rules-minted", minted_port),
        }
        # The minted listener's CA is made on its first start; export it so clients can trust it.
        minted_ca = os.path.join(work, "faultline-ca.pem")

        order = list(proxies)
        results = {name: {"rate": [], "cpu_us": [], "errors": 0, "s_time": []} for name in order}
        handshakes = {}
        for round_index in range(args.rounds):
            rotation = order[round_index % len(order):] + order[:round_index % len(order)]
            for name in rotation:
                proxy = proxies[name]
                proxy.start(log)
                try:
                    trust = ca
                    if name == "faultline-ca":
                        with open(minted_ca, "w") as f:
                            f.write(run([args.faultlined, "ca", "export", "--state-dir", state]).stdout)
                        trust = minted_ca
                    if name not in handshakes:
                        handshakes[name] = handshake_summary(proxy.port, trust)
                    wrk_new_connections(proxy.port, 1, args.conns, args.threads)  # warm-up
                    before = proxy.tree_cpu()
                    rate, requests, errors = wrk_new_connections(proxy.port, args.duration, args.conns, args.threads)
                    used = proxy.tree_cpu() - before
                    results[name]["rate"].append(rate)
                    results[name]["cpu_us"].append(used / max(requests, 1) * 1e6)
                    results[name]["errors"] += errors
                    results[name]["s_time"].append(s_time(proxy.port, args.duration, trust))
                finally:
                    proxy.stop()
                print(f"round {round_index + 1} {name}: {rate:.0f} conn/s, "
                      f"{results[name]['cpu_us'][-1]:.0f} us CPU/conn, s_time {results[name]['s_time'][-1]:.0f} conn/s",
                      flush=True)

        print(f"\nNew TLS connections (full handshake + 128 B response), {args.rounds} rounds of {args.duration} s, "
              f"wrk -t{args.threads} -c{args.conns}, workers {args.workers}; median (spread)")
        base = {key: statistics.median(results["haproxy"][key]) for key in ("rate", "cpu_us", "s_time")}
        print(f"{'proxy':<14}{'conn/s':>10}{'ratio':>8}{'spread':>8}{'us CPU/conn':>13}{'ratio':>8}"
              f"{'s_time/s':>10}{'ratio':>8}{'errors':>8}  handshake")
        for name in order:
            r = results[name]
            rate, cpu, st = (statistics.median(r[k]) for k in ("rate", "cpu_us", "s_time"))
            spread = (max(r["rate"]) - min(r["rate"])) / rate if rate else 0
            print(f"{name:<14}{rate:>10.0f}{rate / base['rate']:>8.2f}{spread:>8.0%}{cpu:>13.0f}"
                  f"{cpu / base['cpu_us']:>8.2f}{st:>10.0f}{st / base['s_time']:>8.2f}{r['errors']:>8}  {handshakes[name]}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": results, "handshakes": handshakes}, f, indent=1)
    except Exception:
        log.flush()
        with open(os.path.join(work, "proxies.log")) as f:
            sys.stderr.write("proxies' output:\n" + f.read()[-4000:])
        raise
    finally:
        for proxy in procs:
            proxy.stop()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
