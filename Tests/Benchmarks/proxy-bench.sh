#!/usr/bin/env bash
# Faultline's own throughput benchmark: the same nginx upstream measured directly and through
# faultlined (release build, no fault configured), in one run, with wrk. Loopback only; every
# wrk run is bounded by its duration.
#
#   Tests/Benchmarks/proxy-bench.sh [--duration SECONDS] [--conns N] [--rounds N] [--http]
#
# Prints requests/s for keep-alive and new-connection (Connection: close) requests on a
# 128-byte response, MiB/s on 1 MiB responses, and each as a ratio to direct, and the daemon's
# CPU time (user + system, from /proc) per keep-alive and per new-connection request. With --http the
# listener is `protocol: http`, and a third column is a second http listener of the same daemon whose abort rule
# answers 10 % of requests itself (503, no upstream): its ratio to the plain http listener
# shows what the abort costs against the upstream work it saves (above 1.0: it saves more; in
# the CPU rows, below 1.0: the daemon spends less per request with the abort rule). Installs wrk
# and nginx-light with apt-get when they are missing (Debian). Compare ratios, not absolute
# numbers: the load generator, nginx and the proxy share the machine's cores.
set -euo pipefail

duration=5
conns=64
rounds=3
http=false
while [ $# -gt 0 ]; do
    case "$1" in
        --http) http=true; shift ;;
        --duration) duration="$2"; shift 2 ;;
        --conns) conns="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/../.." && pwd)"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

# The release build the README recommends: static Swift runtime, no run-time exclusivity checks.
(cd "$root" && swift build -c release --static-swift-stdlib -Xswiftc -enforce-exclusivity=unchecked --product faultlined >/dev/null)
faultlined="$root/.build/release/faultlined"

work="$(mktemp -d)"
# nginx workers run as an unprivileged user: they must be able to read the files.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

upstream_port=18580
proxy_port=18581
mkdir -p "$work/www"
head -c 128 /dev/urandom > "$work/www/small"
head -c 1048576 /dev/urandom > "$work/www/1m"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$upstream_port;
        root $work/www;
    }
}
CONF
"$nginx_bin" -c "$work/nginx.conf" -p "$work" &
pids+=($!)
abort_port=18582
targets="direct:$upstream_port faultline:$proxy_port"
if $http; then
    # Both http listeners in one daemon: the abort's ratio compares two listeners of the same
    # process and threads, not two daemons started one after the other.
    mkdir -p "$work/rules"
    cat > "$work/rules/bench.yaml" <<RULES
listeners:
  - {name: plain, protocol: http, listen: 127.0.0.1:$proxy_port, upstream: 127.0.0.1:$upstream_port}
  - {name: bench, protocol: http, listen: 127.0.0.1:$abort_port, upstream: 127.0.0.1:$upstream_port}
faults:
  - {name: abort-10, listener: bench, probability: 10%, abort: {status: 503, body: "injected\\n"}}
RULES
    "$faultlined" --rules "$work/rules" --no-metrics --no-control --log-level error &
    pids+=($!)
    daemon=$!
    targets="$targets abort10:$abort_port"
else
    "$faultlined" --listen 127.0.0.1:$proxy_port --upstream 127.0.0.1:$upstream_port --no-metrics --no-control --log-level error &
    pids+=($!)
    daemon=$!
fi

wait_for_port() {
    for _ in $(seq 1 100); do
        if curl -sf -o /dev/null "http://127.0.0.1:$1/small"; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not answer" >&2
    exit 1
}
wait_for_port $upstream_port
wait_for_port $proxy_port
if $http; then
    for _ in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$abort_port/small" || true)
        if [ "$code" = 200 ] || [ "$code" = 503 ]; then break; fi
        sleep 0.1
    done
fi

# Byte-exact check before measuring.
cmp <(curl -s "http://127.0.0.1:$proxy_port/1m") "$work/www/1m"

# The daemon's user and system CPU time in clock ticks (fields 14 and 15 of its stat line).
ticks_per_second=$(getconf CLK_TCK)
daemon_ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }

# wrk's summary line: "Requests/sec: N" and "Transfer/sec: N{KB,MB,GB}"; after it, a line of
# ours: "cpu-us-per-request: N" (the daemon's CPU time over the requests of this run; 0 for
# direct, which does not go through it).
measure() { # port path extra-args...
    local port="$1" path="$2"; shift 2
    local before after output
    before=$(daemon_ticks)
    output=$(wrk -t2 -c"$conns" -d"${duration}s" "$@" "http://127.0.0.1:$port$path" 2>/dev/null)
    after=$(daemon_ticks)
    echo "$output"
    echo "$output" | awk -v ticks=$((after - before)) -v hz="$ticks_per_second" -v port="$port" -v direct="$upstream_port" \
        '/requests in/ {n = $1} END {print "cpu-us-per-request:", (port == direct || n == 0) ? 0 : ticks * 1e6 / hz / n}'
}
requests_per_second() { awk '/Requests\/sec/ {print $2}'; }
cpu_per_request() { awk '/cpu-us-per-request/ {print $2}'; }
mib_per_second() {
    awk '/Transfer\/sec/ { v=$2; u=substr(v, length(v)-1); n=substr(v, 1, length(v)-2);
        if (u=="GB") n*=1024; else if (u=="KB") n/=1024; print n }'
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for target in $targets; do
        name="${target%%:*}"; port="${target##*:}"
        output=$(measure "$port" /small)
        results[$name-ka-$round]=$(requests_per_second <<< "$output")
        results[$name-kacpu-$round]=$(cpu_per_request <<< "$output")
        output=$(measure "$port" /small -H 'Connection: close')
        results[$name-close-$round]=$(requests_per_second <<< "$output")
        results[$name-closecpu-$round]=$(cpu_per_request <<< "$output")
        results[$name-bulk-$round]=$(wrk -t2 -c8 -d"${duration}s" "http://127.0.0.1:$port/1m" 2>/dev/null | mib_per_second)
    done
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
if $http; then
    printf '%-28s %10s %10s %10s %14s %14s\n' "test (median of $rounds)" direct faultline abort-10% "faultline/dir" "abort/faultline"
else
    printf '%-32s %14s %14s %8s\n' "test (median of $rounds)" direct faultline ratio
fi
for test in ka kacpu close closecpu bulk; do
    d=(); f=(); a=()
    for round in $(seq 1 "$rounds"); do
        d+=("${results[direct-$test-$round]:-0}"); f+=("${results[faultline-$test-$round]}")
        $http && a+=("${results[abort10-$test-$round]}")
    done
    dm=$(median "${d[@]}"); fm=$(median "${f[@]}")
    case $test in
        ka) label="keep-alive req/s" ;;
        kacpu) label="  faultlined cpu us/request" ;;
        close) label="new connection req/s" ;;
        closecpu) label="  faultlined cpu us/request" ;;
        bulk) label="1 MiB responses MiB/s" ;;
    esac
    # CPU rows: direct does not go through the daemon; below 1.0 in the abort column, the
    # listener with the abort rule spends less of the daemon's CPU per request.
    [[ $test == *cpu ]] && direct_column="-" || direct_column=$(printf '%.1f' "$dm")
    [[ $test == *cpu ]] && direct_ratio="-" || direct_ratio=$(ratio "$fm" "$dm")
    if $http; then
        am=$(median "${a[@]}")
        printf '%-28s %10s %10.1f %10.1f %14s %14s\n' "$label" "$direct_column" "$fm" "$am" "$direct_ratio" "$(ratio "$am" "$fm")"
    else
        printf '%-32s %14s %14.1f %8s\n' "$label" "$direct_column" "$fm" "$direct_ratio"
    fi
done
