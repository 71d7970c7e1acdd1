#!/usr/bin/env python3
"""How exactly Faultline's TCP faults happen on the wire.

    Tests/Benchmarks/fault-fidelity.py [--binary .build/release/faultlined] [--quick]

Starts faultlined (loopback only) with one rule at a time in front of an echo server that
this script runs, and measures with plain sockets:

  1. latency 100 ms, no jitter, 500 connections: error of (measured - 100 ms): p50, p99, max
  2. latency 100 ms +- 50 ms, uniform and normal: measured min, p50, p99, max against the
     distribution's own
  3. bandwidth 1 MiB/s on a 10 MiB transfer: achieved rate and its error
  4. refuse with probability 0.3 over 2,000 connections: observed rate and whether it lies in
     the 99 % binomial interval

Every wait is bounded by a socket timeout; the whole run takes about a minute (--quick: less).
"""
import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class EchoServer(threading.Thread):
    """Echoes what it reads; on a line 'PUSH n' it sends n bytes instead and closes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    @staticmethod
    def serve(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                if data.startswith(b"PUSH "):
                    remaining = int(data.split()[1])
                    chunk = b"x" * 65536
                    while remaining > 0:
                        n = conn.send(chunk[: min(remaining, len(chunk))])
                        remaining -= n
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


class Daemon:
    def __init__(self, binary, upstream_port, faults_yaml):
        self.dir = tempfile.mkdtemp(prefix="faultline-fidelity-")
        self.port = free_port()
        with open(os.path.join(self.dir, "rules.yaml"), "w") as f:
            f.write(f"listeners:\n  - name: bench\n    listen: {HOST}:{self.port}\n"
                    f"    upstream: {HOST}:{upstream_port}\n")
            if faults_yaml:
                f.write("faults:\n" + faults_yaml)
        self.process = subprocess.Popen(
            [binary, "--rules", self.dir, "--no-metrics", "--no-control", "--log-level", "error", "--seed", "7"],
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("faultlined did not start")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def round_trip(port):
    """Connect, send one byte, time until it comes back (seconds)."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("echo failed")
        return time.perf_counter() - start


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(p / 100 * len(ordered))) - 1)]


def summary(values_ms):
    return (f"min {min(values_ms):7.2f}  p50 {percentile(values_ms, 50):7.2f}  "
            f"p99 {percentile(values_ms, 99):7.2f}  max {max(values_ms):7.2f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=".build/release/faultlined")
    parser.add_argument("--quick", action="store_true", help="fewer connections, 4 MiB transfer")
    args = parser.parse_args()
    connections = 100 if args.quick else 500
    echo = EchoServer()
    echo.start()

    print("1. latency 100 ms, no jitter, downstream, per chunk")
    d = Daemon(args.binary, echo.port, "  - {name: lat, listener: bench, direction: downstream, latency: {delay: 100ms}}\n")
    try:
        errors = [(round_trip(d.port) - 0.100) * 1000 for _ in range(connections)]
    finally:
        d.stop()
    print(f"   {connections} connections, error (measured - 100 ms): p50 {percentile(errors, 50):.2f}  "
          f"p99 {percentile(errors, 99):.2f}  max {max(errors):.2f} ms  (min {min(errors):.2f})")

    for distribution in ("uniform", "normal"):
        print(f"2. latency 100 ms +- 50 ms, {distribution}")
        d = Daemon(args.binary, echo.port,
                   "  - {name: lat, listener: bench, direction: downstream, "
                   f"latency: {{delay: 100ms, jitter: 50ms, distribution: {distribution}}}}}\n")
        try:
            measured = [round_trip(d.port) * 1000 for _ in range(connections)]
        finally:
            d.stop()
        if distribution == "uniform":
            stated = "min   50.00  p50  100.00  p99  149.00  max  150.00 ms"
        else:
            stated = "min    0.00  p50  100.00  p99  216.32  max       - ms (sd 50)"
        print(f"   measured {summary(measured)}  sd {statistics.pstdev(measured):.1f}")
        print(f"   stated   {stated}")

    size = (4 if args.quick else 10) << 20
    print(f"3. bandwidth 1 MiB/s, downstream, {size >> 20} MiB transfer")
    d = Daemon(args.binary, echo.port, "  - {name: bw, listener: bench, direction: downstream, bandwidth: {rate: 1MiB}}\n")
    try:
        with socket.create_connection((HOST, d.port), timeout=30) as s:
            start = time.perf_counter()
            s.sendall(f"PUSH {size}".encode())
            received = 0
            while received < size:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
            elapsed = time.perf_counter() - start
    finally:
        d.stop()
    rate = received / elapsed / (1 << 20)
    print(f"   {received} bytes in {elapsed:.3f} s: {rate:.4f} MiB/s, error {100 * (rate - 1):+.2f} %")

    trials = 500 if args.quick else 2000
    print(f"4. refuse with probability 0.3 over {trials} connections")
    d = Daemon(args.binary, echo.port, "  - {name: p, listener: bench, probability: 0.3, refuse: {}}\n")
    refused = 0
    try:
        for _ in range(trials):
            try:
                round_trip(d.port)
            except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError, RuntimeError):
                refused += 1
    finally:
        d.stop()
    mean = 0.3 * trials
    half_width = 2.576 * math.sqrt(trials * 0.3 * 0.7)
    inside = mean - half_width <= refused <= mean + half_width
    print(f"   refused {refused} of {trials} = {refused / trials:.4f}; 99 % interval "
          f"[{(mean - half_width) / trials:.4f}, {(mean + half_width) / trials:.4f}]: {'inside' if inside else 'OUTSIDE'}")


if __name__ == "__main__":
    sys.exit(main())
