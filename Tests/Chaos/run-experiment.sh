#!/usr/bin/env bash
# Runs experiment.json with the real Chaos Toolkit (`chaos` on PATH) against the built
# faultlined in front of its demo service, then checks the journal: steady state met before,
# the injected latency seen by the probe and by the hypothesis after (a deviation), and a
# clean rollback after which the proxy is fast again. Loopback only; every wait is bounded.
#   Tests/Chaos/run-experiment.sh [BUILD_DIR]     (default .build/debug)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-.build/debug}"
faultlined="$(cd "$build" && pwd)/faultlined"
faultctl="$(cd "$build" && pwd)/faultctl"
work="$(mktemp -d /tmp/faultline-chaos-XXXXXX)"
# A free port below the kernel's ephemeral range: one from inside it, released and bound again
# by the daemon, can meanwhile become the source port of another test's connection.
free_port() {
    python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(500):
    port = random.randrange(10000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        pass
    finally:
        s.close()
'
}
listen=$(free_port); demo=$(free_port)
mkdir -p "$work/rules"
cat > "$work/rules/chaos.yaml" <<YAML
listeners:
  - {name: dependency, listen: 127.0.0.1:$listen, upstream: 127.0.0.1:$demo}
YAML
"$faultlined" --rules "$work/rules" --demo 127.0.0.1:$demo --no-metrics --control-socket "$work/control.sock" \
    --log-level warning > "$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
# A debug build on a machine busy with the other tests can take a while to start.
up=false
for _ in $(seq 300); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$listen/"; then up=true; break; fi
    sleep 0.1
done
if ! $up; then
    echo "faultlined did not answer on 127.0.0.1:$listen within 30 s; its log:" >&2
    cat "$work/daemon.log" >&2
    exit 1
fi

export FAULTLINE_PROXY_URL="http://127.0.0.1:$listen/" FAULTLINE_SOCKET="$work/control.sock"
export PATH="$(dirname "$faultctl"):$PATH"
cd "$work"
timeout 120 chaos --no-version-check --log-file "$work/chaostoolkit.log" run --rollback-strategy always \
    --journal-path "$work/journal.json" "$here/experiment.json" || true

python3 - "$work/journal.json" <<'PY'
import json, sys
journal = json.load(open(sys.argv[1]))
problems = []
def check(ok, what):
    if not ok: problems.append(what)
check(journal["steady_states"]["before"]["steady_state_met"], "steady state not met before the method")
check(journal.get("deviated") is True, f"expected the run to deviate (status {journal['status']})")
check(not journal["steady_states"]["after"]["steady_state_met"], "the hypothesis after the method did not see the latency")
runs = {run["activity"]["name"]: run for run in journal["run"]}
check(runs["inject-dependency-latency"]["status"] == "succeeded", "the injection failed")
seconds = float(runs["time-through-the-proxy"]["output"]["stdout"])
check(seconds >= 1.0, f"the probe took {seconds:.3f} s, expected at least the injected 1 s")
rollbacks = journal["rollbacks"]
check(len(rollbacks) == 1 and rollbacks[0]["status"] == "succeeded", "the rollback did not succeed")
print(f"chaos journal: deviated {journal.get('deviated')}, probe {seconds:.3f} s through the injected latency, "
      f"rollback {rollbacks[0]['status'] if rollbacks else 'missing'}")
if problems:
    print("FAILED: " + "; ".join(problems))
    sys.exit(1)
PY
# After the rollback the proxy is fast again.
after=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "$FAULTLINE_PROXY_URL")
python3 -c "import sys; t=float(sys.argv[1]); print(f'after rollback: {t:.3f} s'); sys.exit(0 if t < 0.5 else 1)" "$after"
