#!/usr/bin/env bash
# The performance benchmark: one table of larch's figures beside the machine's
# limits, measured in the same run on the same disk.
#
#   scripts/bench.sh            full run (several minutes)
#   scripts/bench.sh --quick    about a minute
#
# Phases, each on a fresh larch (release build) with its spool under $BENCH_DIR
# (default: data/bench, the disk larch would use):
#   baseline  sequential write + fsync on that disk; single-core gzip of log NDJSON
#   ingest    16 clients, 1000-line bodies, as fast as they go (nothing seals)
#   steady    100k lines/s for past hours with sync running (--late-window 0s)
#   parts     the same memory with 10 open parts and with 10,000 (10,000 accounts)
#   backlog   a backlog ingested with sync held back, then timed to start and drain
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true
if $quick; then
    dur=10s; steady_dur=10s; gz_mib=64; fs_mib=128; backlog_s=10s; parts_dur=20s
else
    dur=30s; steady_dur=30s; gz_mib=200; fs_mib=512; backlog_s=60s; parts_dur=30s
fi

cargo build --release --quiet --bins
larch=target/release/larch
bench=target/release/larch-bench
root=${BENCH_DIR:-data/bench}
mkdir -p "$root"
work=$(mktemp -d "$root/run.XXXXXX")
results="$work/results"
mkdir -p "$results"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port

# Starts larch on $1 (data dir) with extra flags; sets $pid and waits for /health.
start() {
    local data=$1; shift
    "$larch" run --data "$data" --listen "$addr" "$@" >"$data.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -sf "http://$addr/health" >/dev/null 2>&1 && return 0
        sleep 0.01
    done
    echo "larch did not start; see $data.log" >&2
    exit 1
}
stop() {
    kill "$pid"; wait "$pid" || true; pid=
}
# CPU seconds (user + system) of $pid so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$pid/stat"; }
# Peak resident memory of $pid, in MB.
peak_rss() { awk '/VmHWM/ {print $2 / 1024}' "/proc/$pid/status"; }
status() { curl -sf "http://$addr/status"; }

echo "baselines ($fs_mib MiB write+fsync, $gz_mib MiB gzip)..." >&2
"$bench" fsync --dir "$work" --mib "$fs_mib" >"$results/fsync.json"
"$bench" gzip --mib "$gz_mib" >"$results/gzip.json"

echo "ingest: 16 clients, as fast as possible, $dur..." >&2
start "$work/ingest"
c0=$(cpu)
"$bench" load --addr "$addr" --duration "$dur" >"$results/ingest.json"
c1=$(cpu)
echo "{\"cpu_s\": $(awk "BEGIN{print $c1 - $c0}"), \"peak_rss_mb\": $(peak_rss)}" >"$results/ingest_proc.json"
stop

echo "steady: 100k lines/s into past hours with sync running, $steady_dur..." >&2
start "$work/steady" --late-window 0s --follow-up-after 1s
c0=$(cpu)
"$bench" load --addr "$addr" --duration "$steady_dur" --rate 100000 --hours-back 3 >"$results/steady.json"
c1=$(cpu)
echo "{\"cpu_s\": $(awk "BEGIN{print $c1 - $c0}"), \"peak_rss_mb\": $(peak_rss)}" >"$results/steady_proc.json"
stop

# Memory with many open parts: the same load spread over 10 accounts, then 10,000.
for accounts in 10 10000; do
    echo "open parts: $accounts accounts x 1 hour..." >&2
    conf="$work/accounts-$accounts.toml"
    { echo "[keys]"; for i in $(seq 0 $((accounts - 1))); do echo "k$i = \"a$i\""; done; } >"$conf"
    start "$work/accounts-$accounts" --config "$conf"
    "$bench" load --addr "$addr" --key k --accounts "$accounts" --lines-per-request 100 \
        --duration "$parts_dur" >"$results/parts-$accounts.json"
    open=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["parts_open"])')
    echo "{\"parts_open\": $open, \"peak_rss_mb\": $(peak_rss)}" >"$results/parts-$accounts-proc.json"
    stop
done

echo "backlog: ingest $backlog_s with uploads held back, then restart and drain..." >&2
# A target directory that does not exist yet holds uploads back (they pause).
held="$work/held-archive"
start "$work/backlog" --late-window 0s --follow-up-after 1s --target "$held"
"$bench" load --addr "$addr" --duration "$backlog_s" --hours-back 6 >"$results/backlog_load.json"
stop
spool_mb=$(du -sm "$work/backlog" | cut -f1)
t0=$(date +%s.%N)
"$larch" run --data "$work/backlog" --listen "$addr" --late-window 0s --follow-up-after 1s --target "$held" >"$work/backlog.log" 2>&1 &
pid=$!
until curl -sf "http://$addr/health" >/dev/null 2>&1; do sleep 0.005; done
t1=$(date +%s.%N)
mkdir -p "$held"
c0=$(cpu)
d0=$(date +%s.%N)
until status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["lines_waiting"]==0 and s["parts_sealed"]==0 and s["parts_uploading"]==0 else 1)'; do
    sleep 0.2
done
d1=$(date +%s.%N)
c1=$(cpu)
archive_mb=$(du -sm "$held" | cut -f1)
input_mb=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["input_bytes_uploaded"] / 1e6)')
echo "{\"startup_s\": $(awk "BEGIN{print $t1 - $t0}"), \"spool_mb\": $spool_mb, \"archive_mb\": $archive_mb, \"input_mb\": $input_mb, \"drain_s\": $(awk "BEGIN{print $d1 - $d0}"), \"cpu_s\": $(awk "BEGIN{print $c1 - $c0}"), \"peak_rss_mb\": $(peak_rss)}" >"$results/backlog.json"
stop

python3 scripts/bench_table.py "$results"
