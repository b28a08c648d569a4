#!/usr/bin/env bash
# A fleet in one bucket: W writers archive the same account-hour into one
# S3-compatible bucket (moto on 127.0.0.1, its create-only writes atomic as
# S3's are) at the same moment, behind a counting proxy (scripts/count_proxy.py).
# Per W it prints: objects, requests per object by kind, bytes sent per byte
# archived, the largest .N, and the time from the hour's end to the last object.
#
#   scripts/fleet.sh [--quick] [--baseline LARCH_BINARY]
#
# - processes: W real larch daemons (default W = 8 and 32), their clocks moved
#   (LARCH_CLOCK_OFFSET) so the hour they ingest ends half a minute after they
#   start; each is given target.fleet_size = W. With --baseline, the same run
#   with another build (one whose config has no fleet_size) as the baseline.
# - library: W writers in one process (larch-bench fleet: larch's own spool and
#   sync loop each, a manual clock sealing every hour at once), W = 100 and
#   1,000 with fleet_size = W, and 1,000 without it (fleet_size = 1); the same
#   writers archive two hours in turn, each hour a row (a host that found a
#   crowd in the first hour spreads out in the second).
# --quick: W = 4 processes and 50 writers in one process.
# FLEET_PROCESSES / FLEET_WRITERS override the lists of W; FLEET_LINES the lines
# per writer (default 2000 of about 300 bytes: about 150 KB of gzip).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=
baseline=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --baseline) baseline=$(realpath "$2"); shift ;;
        *) echo "usage: scripts/fleet.sh [--quick] [--baseline LARCH_BINARY]" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$quick" ]; then
    processes=${FLEET_PROCESSES:-4}
    writers=${FLEET_WRITERS:-50}
else
    processes=${FLEET_PROCESSES:-8 32}
    writers=${FLEET_WRITERS:-100 1000}
fi
lines=${FLEET_LINES:-2000}
scripts/test-servers.sh moto >&2
. scripts/lib.sh
bench_setup fleet >&2
results=$work/results.jsonl
: >"$results"

moto_port=$(free_port)
proxy_port=$(free_port)
.test-servers/venv/bin/python scripts/moto_atomic.py -H 127.0.0.1 -p "$moto_port" >/dev/null 2>&1 &
moto=$!
python3 scripts/count_proxy.py "$proxy_port" "http://127.0.0.1:$moto_port" &
proxy=$!
daemons=()
stop_daemons() {
    for pid in "${daemons[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${daemons[@]}"; do wait "$pid" 2>/dev/null || true; done
    daemons=()
}
trap 'stop_daemons; kill $moto $proxy 2>/dev/null || true' EXIT
wait_for_url "http://127.0.0.1:$moto_port"
wait_for_url "http://127.0.0.1:$proxy_port/_counts"
counter="http://127.0.0.1:$proxy_port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=$counter

# Makes a fresh bucket (straight at moto, uncounted) and prints its name.
bucket() {
    curl -sf -X PUT "http://127.0.0.1:$moto_port/$1" >/dev/null
    echo "$1"
}

# One larch per host, W of them, ingesting the same account's hour and sealing
# it at the same moment. Prints one JSON line of figures.
run_processes() {
    local binary=$1 w=$2 build=$3
    local b
    b=$(bucket "fleet-$build-$w")
    local dir=$work/$build-$w
    mkdir -p "$dir"
    # The fake hour ends `lead` seconds from now, for every host alike.
    local lead=$((20 + w / 2))
    local now
    now=$(date +%s)
    local end=$((now + lead))
    local offset=$(((end / 3600) * 3600 - end))
    local config=$dir/fleet.toml
    printf '[target]\nfleet_size = %d\n' "$w" >"$config"
    local addrs=()
    for i in $(seq "$w"); do
        local port
        port=$(free_port)
        local args=(run --data "$dir/host$i" --listen "127.0.0.1:$port" --target "s3://$b"
            --late-window 0s --follow-up-after 1s --key k=acme)
        [ "$build" = new ] && args+=(--config "$config")
        LARCH_CLOCK_OFFSET="${offset}s" RUST_LOG=warn "$binary" "${args[@]}" 2>"$dir/host$i.log" &
        daemons+=($!)
        addrs+=("127.0.0.1:$port")
    done
    for a in "${addrs[@]}"; do wait_for_url "http://$a/status"; done
    local i=0
    for a in "${addrs[@]}"; do
        i=$((i + 1))
        seq "$lines" | awk -v h="$i" '{printf "host %d line %d GET /api/v1/orders?id=%08x 200 %d ms agent=curl/8.5.0 trace=%016x\n", h, $1, $1 * 2654435761 % 4294967296, $1 % 997, $1 * h * 40503}' |
            "$binary" send --account acme --key k --addr "$a" --host "edge-$i" >/dev/null
    done
    now=$(date +%s)
    if [ "$now" -ge "$end" ]; then
        echo "fleet.sh: the hosts took longer to fill than their hour lasted; raise lead" >&2
        return 1
    fi
    sleep $((end - now - 1))
    curl -sf -X POST "$counter/_counts/reset" >/dev/null
    sleep 1
    local started
    started=$(date +%s.%N)
    local waiting=1
    while [ "$waiting" = 1 ]; do
        waiting=0
        for a in "${addrs[@]}"; do
            if ! curl -sf "http://$a/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(s[k]==0 for k in ("lines_waiting","parts_sealed","parts_uploading")) else 1)'; then
                waiting=1
                break
            fi
        done
        [ "$waiting" = 1 ] && sleep 0.2
    done
    local finished
    finished=$(date +%s.%N)
    curl -sf "$counter/_counts" >"$dir/counts.json"
    stop_daemons
    .test-servers/venv/bin/python scripts/s3_inspect.py "http://127.0.0.1:$moto_port" "$b" >"$dir/objects.json"
    python3 - "$build" "$w" "$started" "$finished" "$dir/counts.json" "$dir/objects.json" <<'EOF'
import json, sys
build, w, started, finished, counts, inspect = sys.argv[1:]
counts, objects = json.load(open(counts)), json.load(open(inspect))
objects = [o for o in objects if ".json.gz" in o["key"] and "larch-probe" not in o["key"]]
archived = sum(o["size"] for o in objects)
n = len(objects)
requests = sum(counts["requests"].values())
sent = sum(counts["bytes"].values())
def number(key):
    parts = key[: -len(".json.gz")].split(".")
    return int(parts[-1]) if len(parts) == 4 else 0
print(json.dumps({
    "mode": "processes", "build": build, "writers": int(w), "hour": 1, "fleet_size": int(w) if build == "new" else None,
    "objects": n, "requests_per_object": requests / n,
    "by_kind_per_object": {k: v / n for k, v in counts["requests"].items()},
    "sent_per_archived_byte": sent / archived, "archived_bytes": archived,
    "largest_n": max((number(o["key"]) for o in objects), default=0),
    "seconds": float(finished) - float(started),
}))
EOF
}

for w in $processes; do
    echo "processes: $w larch daemons (this build)..." >&2
    run_processes "$larch" "$w" new >>"$results"
    if [ -n "$baseline" ]; then
        echo "processes: $w larch daemons (baseline)..." >&2
        run_processes "$baseline" "$w" baseline >>"$results"
    fi
done

run_library() {
    local w=$1 size=$2
    local b
    b=$(bucket "fleet-lib-$w-$size")
    echo "library: $w writers in one process, fleet_size $size..." >&2
    "$bench" fleet --writers "$w" --fleet-size "$size" --hours 2 --lines "$lines" \
        --target "s3://$b" --counter "$counter" |
        python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r["mode"], r["build"] = "library", "new"
    print(json.dumps(r))' >>"$results"
}
for w in $writers; do
    run_library "$w" "$w"
done
for w in $writers; do
    [ "$w" -ge 1000 ] && run_library "$w" 1
done

python3 scripts/fleet_table.py "$results"
echo "figures: $results" >&2
