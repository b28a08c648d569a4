#!/usr/bin/env bash
# Start-up on a large backlog, as a long outage leaves it: lines for 6 past
# hours come in while the store is unreachable (an S3 endpoint nothing listens
# on, so every upload fails as on a cut link) until the spool takes N GB of disk,
# the compactor has caught up (its lines are gzip members, as they wait), and
# larch is stopped. Then three start-ups, each after the page cache is dropped
# (as after a reboot; as root, else the figure is a warm start), timed until
# larch answers /health.
#
#   scripts/bench-startup.sh [--gb N]   default 10 GB of spool (about 45 GB of
#                                       NDJSON waiting); about 15 minutes here
set -euo pipefail
cd "$(dirname "$0")/.."

gb=10
while [ $# -gt 0 ]; do
    case $1 in
        --gb) gb=$2; shift ;;
        *) echo "usage: scripts/bench-startup.sh [--gb N]" >&2; exit 2 ;;
    esac
    shift
done

. scripts/lib.sh
bench_setup startup
spool="$work/spool"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

addr=127.0.0.1:$(free_port)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$(free_port)"
start() {
    "$larch" run --data "$spool" --listen "$addr" --late-window 0s --follow-up-after 1s \
        --target s3://bench/ >>"$work/larch.log" 2>&1 &
    pid=$!
    wait_for_url "http://$addr/health" || { echo "larch did not start; see $work/larch.log" >&2; exit 1; }
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
status() { curl -sf "http://$addr/status"; }
field() { status | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
spool_mb() { du -sm "$spool" | cut -f1; }

# Waits until the compactor has caught up: its count of compressed lines
# stands still (closed parts are looked at every ten seconds, so longer).
caught_up() {
    local before=-1 now
    while now=$(field 's.get("compressed", {}).get("lines", 0)'); [ "$now" != "$before" ]; do
        before=$now
        sleep 11
    done
}

echo "building a backlog of $gb GB of spool, store unreachable..." >&2
start
# In rounds the compactor catches up after, so the spool is measured as it
# waits (compressed), not with raw blocks a busy compactor has yet to reach.
until [ "$(spool_mb)" -ge $((gb * 1000)) ]; do
    "$bench" load --addr "$addr" --duration 40s --rate 300000 --hours-back 6 >/dev/null
    caught_up
    echo "  $(spool_mb) MB of spool" >&2
done
lines=$(field 's["lines_waiting"]')
ndjson_mb=$(field '(s["outlook"].get("ndjson_waiting_bytes") or 0) // 10**6')
stop
mb=$(spool_mb)

cold=false
times=()
for _ in 1 2 3; do
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then
        echo 3 >/proc/sys/vm/drop_caches
        cold=true
    fi
    t0=$(date +%s.%N)
    start
    t1=$(date +%s.%N)
    times+=("$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")")
    stop
done
echo "{\"spool_mb\": $mb, \"lines_waiting\": $lines, \"ndjson_waiting_mb\": $ndjson_mb, \"page_cache_dropped\": $cold, \"startup_s\": [$(IFS=,; echo "${times[*]}")]}"
echo "start-up with $mb MB of spool ($lines lines, about $ndjson_mb MB of NDJSON waiting; page cache dropped: $cold): ${times[*]} s" >&2
