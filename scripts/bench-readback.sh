#!/usr/bin/env bash
# Reading archives back, measured: builds an archive of about 3 GB of NDJSON
# (15 s of full-speed ingest over three past hours, emptied with `larch drain`),
# then times `larch restore` (everything, and filtered) and `larch verify` on it,
# with each command's peak memory. Prints one line per figure.
#
#   scripts/bench-readback.sh [SECONDS_OF_INGEST]     (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}

# GNU time reports each command's peak memory.
if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
    else
        echo "bench-readback.sh needs GNU time: sudo apt-get install time" >&2
        exit 1
    fi
fi

. scripts/lib.sh
bench_setup readback
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
"$larch" run --data "$work/data" --listen "127.0.0.1:$port" --late-window 0s >"$work/larch.log" 2>&1 &
pid=$!
wait_for_url "http://127.0.0.1:$port/health"
"$bench" load --addr "127.0.0.1:$port" --duration "${seconds}s" --hours-back 3 >/dev/null
"$larch" drain --data "$work/data" >/dev/null
kill "$pid"; wait "$pid" || true; pid=

objects=$(find "$work/data/archive" -name '*.json.gz' | wc -l)
gz_mb=$(du -sm "$work/data/archive" | cut -f1)
echo "archive: $objects objects, $gz_mb MB gzip"

# Runs a command with its output thrown away; prints seconds, peak RSS and CPU.
measure() {
    local what=$1; shift
    local out=$work/measure
    /usr/bin/time -f "%e %M %P" -o "$out" "$@" >"$work/stdout"
    read -r secs kb cpu <"$out"
    local lines mb
    lines=$(wc -l <"$work/stdout")
    mb=$(( $(stat -c %s "$work/stdout") / 1000000 ))
    printf '%-34s %7.1f s  %6d MB peak RSS  %5s CPU  %9d lines  %6d MB out\n' \
        "$what" "$secs" $((kb / 1024)) "$cpu" "$lines" "$mb"
}
measure "restore, everything" "$larch" restore --data "$work/data" --account demo
measure "restore --since 2h --grep POST" "$larch" restore --data "$work/data" --account demo --since 2h --grep POST
measure "verify" "$larch" verify --data "$work/data"
