#!/usr/bin/env bash
# The README's quick start, end to end, in a throwaway directory: starts larch
# with --late-window 0s, sends a line stamped an hour ago, waits for its archive
# object and prints it, then reads it back with `larch restore` and checks it
# with `larch verify`. Exits non-zero if the object does not appear in 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
dir=$(mktemp -d)
port=${PORT:-7281}
./target/release/larch run --data "$dir" --listen "127.0.0.1:$port" --late-window 0s \
    >"$dir/larch.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
done
now=$(date +%s)
curl -sS -u larch-demo-key: -H 'Content-Type: application/json' \
    "http://127.0.0.1:$port/logs/ingest?hostname=web1&now=$now" \
    -d "{\"lines\":[{\"line\":\"hello\",\"app\":\"demo\",\"timestamp\":$(( (now - 3600) * 1000 ))}]}"
echo
for _ in $(seq 600); do
    object=$(find "$dir/archive" -name 'demo.*.json.gz' 2>/dev/null | head -n1)
    if [ -n "$object" ]; then
        echo "${object#"$dir/"}"
        zcat "$object"
        ./target/release/larch status --addr "127.0.0.1:$port"
        echo "--- larch restore --account demo --since 2h"
        ./target/release/larch restore --data "$dir" --account demo --since 2h
        echo "--- larch verify"
        ./target/release/larch verify --data "$dir"
        exit 0
    fi
    sleep 0.1
done
echo "no archive object after 60 s; larch's log:" >&2
cat "$dir/larch.log" >&2
exit 1
