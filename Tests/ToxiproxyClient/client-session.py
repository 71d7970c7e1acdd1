#!/usr/bin/env python3
"""A session of the real toxiproxy-python client (from PyPI) against faultlined.

Usage: client-session.py API_PORT UPSTREAM_PORT

The upstream is faultlined's demo HTTP service. Every step prints one line; the first that
does not hold raises, so the exit status says whether the session went as it would against
Toxiproxy. Loopback only; every request has a timeout.
"""
import socket
import sys
import time
import urllib.request

from toxiproxy import Toxiproxy
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

api_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])


def get(listen):
    """One HTTP GET through the proxy; returns (status, seconds taken)."""
    start = time.monotonic()
    with urllib.request.urlopen("http://%s/" % listen, timeout=10) as response:
        response.read()
        return response.status, time.monotonic() - start


def refused(listen):
    host, port = listen.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, int(port))) != 0


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


server = Toxiproxy()
server.update_api_consumer("127.0.0.1", api_port)
check(server.running(), "the API answers")
check(b"2." in server.version(), "version %r" % server.version())

proxy = server.create(upstream="127.0.0.1:%d" % upstream_port, name="demo")
check(proxy.listen.startswith("127.0.0.1:") and not proxy.listen.endswith(":0"), "proxy listens on %s" % proxy.listen)
try:
    server.create(upstream="127.0.0.1:%d" % upstream_port, name="demo")
    check(False, "a second proxy named demo is refused")
except ProxyExists:
    check(True, "a second proxy named demo is refused")

status, plain = get(proxy.listen)
check(status == 200, "GET through the proxy: %d in %.3fs" % (status, plain))

proxy.add_toxic(type="latency", attributes={"latency": 300})
check(list(proxy.toxics()) == ["latency_downstream"], "toxics: %s" % list(proxy.toxics()))
status, slow = get(proxy.listen)
check(status == 200 and 0.3 <= slow < 5, "with a 300 ms latency toxic: %.3fs" % slow)

proxy.destroy_toxic("latency_downstream")
status, fast = get(proxy.listen)
check(status == 200 and fast < 0.3, "toxic removed: %.3fs" % fast)

try:
    proxy.add_toxic(type="meteor")
    check(False, "an unknown toxic type is refused")
except InvalidToxic:
    check(True, "an unknown toxic type is refused")

with proxy.down():
    check(refused(proxy.listen), "proxy down: connections refused")
status, _ = get(proxy.listen)
check(status == 200, "proxy up again")

proxy.add_toxic(type="bandwidth", attributes={"rate": 10})
proxy.disable()
server.reset()
again = server.get_proxy("demo")
check(again.enabled and not proxy.toxics(), "reset: enabled, no toxics")
status, _ = get(again.listen)
check(status == 200, "GET after reset")

proxy.destroy()
check(server.get_proxy("demo") is None, "proxy destroyed")
try:
    proxy.destroy_toxic("latency_downstream")
    check(False, "a toxic of a destroyed proxy is not found")
except NotFound:
    check(True, "a toxic of a destroyed proxy is not found")
print("toxiproxy client session: passed")
