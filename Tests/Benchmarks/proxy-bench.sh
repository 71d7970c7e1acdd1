#!/usr/bin/env bash
# Faultline's own throughput benchmark: the same nginx upstream measured directly and through
# faultlined (release build, no fault configured), in one run, with wrk. Loopback only; every
# wrk run is bounded by its duration.
#
#   [FAULTLINED=path] Tests/Benchmarks/proxy-bench.sh [--duration SECONDS] [--conns N] [--rounds N] [--http]
#
# Prints requests/s for keep-alive and new-connection (Connection: close) requests on a
# 128-byte response, MiB/s on 1 MiB responses, and each as a ratio to direct, and the daemon's
# CPU time (user + system, from /proc) per keep-alive and per new-connection request. With
# --http the listener is `protocol: http`, and a second daemon with an http listener whose
# abort rule answers 10 % of requests itself (503, no upstream) is loaded at the same time as
# the plain one, each by its own wrk: the abort daemon's requests/s and CPU per request as
# ratios to the plain daemon's show what the abort costs against the upstream work it saves
# (requests/s above 1.0 and CPU below 1.0: it saves more than it costs). Installs wrk
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

# The release build the README recommends (Tests/build-release.sh).
# FAULTLINED=path measures a binary built already (another scratch path, an installed one).
if [ -n "${FAULTLINED:-}" ]; then
    faultlined="$FAULTLINED"
else
    bash "$root/Tests/build-release.sh" --product faultlined >/dev/null
    faultlined="$root/.build/release/faultlined"
fi

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
# The daemon's user and system CPU time in clock ticks (fields 14 and 15 of its stat line).
ticks_per_second=$(getconf CLK_TCK)
daemon_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
if $http; then
    # The abort listener runs in a daemon of its own, so that each daemon's CPU time is the
    # cost of its own requests when both are loaded at once (below).
    mkdir -p "$work/plain" "$work/abort"
    cat > "$work/plain/bench.yaml" <<RULES
listeners:
  - {name: plain, protocol: http, listen: 127.0.0.1:$proxy_port, upstream: 127.0.0.1:$upstream_port}
RULES
    cat > "$work/abort/bench.yaml" <<RULES
listeners:
  - {name: bench, protocol: http, listen: 127.0.0.1:$abort_port, upstream: 127.0.0.1:$upstream_port}
faults:
  - {name: abort-10, listener: bench, probability: 10%, abort: {status: 503, body: "injected\\n"}}
RULES
    "$faultlined" --rules "$work/plain" --no-metrics --no-control --log-level error &
    pids+=($!)
    daemon=$!
    "$faultlined" --rules "$work/abort" --no-metrics --no-control --log-level error &
    pids+=($!)
    abort_daemon=$!
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

# wrk's summary line: "Requests/sec: N" and "Transfer/sec: N{KB,MB,GB}"; after it, a line of
# ours: "cpu-us-per-request: N" (the daemon's CPU time over the requests of this run; 0 for
# direct, which does not go through it).
measure() { # port path extra-args...
    local port="$1" path="$2"; shift 2
    local before after output
    before=$(daemon_ticks "$daemon")
    output=$(wrk -t2 -c"$conns" -d"${duration}s" "$@" "http://127.0.0.1:$port$path" 2>/dev/null)
    after=$(daemon_ticks "$daemon")
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
printf '%-32s %14s %14s %8s\n' "test (median of $rounds)" direct faultline ratio
for test in ka kacpu close closecpu bulk; do
    d=(); f=()
    for round in $(seq 1 "$rounds"); do
        d+=("${results[direct-$test-$round]:-0}"); f+=("${results[faultline-$test-$round]}")
    done
    dm=$(median "${d[@]}"); fm=$(median "${f[@]}")
    case $test in
        ka) label="keep-alive req/s" ;;
        kacpu) label="  faultlined cpu us/request" ;;
        close) label="new connection req/s" ;;
        closecpu) label="  faultlined cpu us/request" ;;
        bulk) label="1 MiB responses MiB/s" ;;
    esac
    # CPU rows: direct does not go through the daemon.
    [[ $test == *cpu ]] && direct_column="-" || direct_column=$(printf '%.1f' "$dm")
    [[ $test == *cpu ]] && direct_ratio="-" || direct_ratio=$(ratio "$fm" "$dm")
    printf '%-32s %14s %14.1f %8s\n' "$label" "$direct_column" "$fm" "$direct_ratio"
done
$http || exit 0

# The abort rule against the upstream work it saves: the plain daemon and the abort daemon
# loaded at the same time, each by its own wrk with half the connections, so that both see the
# same machine (its other load, its speed of the moment) and only the rule differs. Per round:
# the abort daemon's requests/s and CPU time per request as ratios to the plain daemon's.
# Above 1.0 for requests/s and below 1.0 for CPU, the answers Faultline makes itself cost less
# than the upstream round trips they replace.
paired_rounds=$((rounds * 2))
half=$(( conns / 2 > 0 ? conns / 2 : 1 ))
declare -A paired
for round in $(seq 1 "$paired_rounds"); do
    for mode in ka close; do
        extra=()
        [ "$mode" = close ] && extra=(-H 'Connection: close')
        plain_before=$(daemon_ticks "$daemon"); abort_before=$(daemon_ticks "$abort_daemon")
        wrk -t1 -c"$half" -d"${duration}s" "${extra[@]}" "http://127.0.0.1:$proxy_port/small" > "$work/plain.out" 2>/dev/null &
        plain_wrk=$!
        wrk -t1 -c"$half" -d"${duration}s" "${extra[@]}" "http://127.0.0.1:$abort_port/small" > "$work/abort.out" 2>/dev/null &
        abort_wrk=$!
        wait "$plain_wrk" "$abort_wrk"
        plain_ticks=$(( $(daemon_ticks "$daemon") - plain_before )); abort_ticks=$(( $(daemon_ticks "$abort_daemon") - abort_before ))
        plain_n=$(awk '/requests in/ {print $1}' "$work/plain.out"); abort_n=$(awk '/requests in/ {print $1}' "$work/abort.out")
        paired[$mode-rate-$round]=$(awk -v a="$abort_n" -v p="$plain_n" 'BEGIN {printf "%.3f", a / p}')
        paired[$mode-cpu-$round]=$(awk -v a="$abort_ticks" -v an="$abort_n" -v p="$plain_ticks" -v pn="$plain_n" \
            'BEGIN {printf "%.3f", (a / an) / (p / pn)}')
    done
done
echo
echo "abort rule on 10 % of requests, its daemon against a plain one, both loaded at once ($paired_rounds rounds):"
printf '%-32s %10s %16s\n' "abort / plain" median "min - max"
for key in ka-rate ka-cpu close-rate close-cpu; do
    values=()
    for round in $(seq 1 "$paired_rounds"); do values+=("${paired[$key-$round]}"); done
    case $key in
        ka-rate) label="keep-alive req/s" ;;
        ka-cpu) label="  cpu per request" ;;
        close-rate) label="new connection req/s" ;;
        close-cpu) label="  cpu per request" ;;
    esac
    range=$(printf '%s\n' "${values[@]}" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f - %.2f", lo, hi}')
    printf '%-32s %10.2f %16s\n' "$label" "$(median "${values[@]}")" "$range"
done
