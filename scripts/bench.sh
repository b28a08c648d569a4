#!/usr/bin/env bash
# The performance benchmark: one table of larch's figures beside the machine's
# limits, measured in the same run on the same disk.
#
#   scripts/bench.sh                  full run (about 25 minutes)
#   scripts/bench.sh --quick          about 5 minutes
#   scripts/bench.sh --baseline BIN   also runs the ingest, steady and outage phases
#                                     on another larch binary (an earlier
#                                     build), alternating with this one, and
#                                     prints its figures beside these
#
# Phases, each on a fresh larch (release build) with its spool under $BENCH_DIR
# (default: data/bench, the disk larch would use):
#   baseline  sequential write + fsync on that disk; single-core gzip of the
#             very NDJSON larch archived in the backlog phase
#   ingest    16 clients, 1000-line bodies, as fast as they go (nothing seals)
#   sources   the other sources, each on a fresh larch as the ingest phase
#             runs: syslog over TCP (4 connections, octet-counted RFC 5424, as
#             fast as they go), OTLP/HTTP protobuf (16 clients, 1000 records a
#             request) and the journal (entries written beforehand by
#             systemd-journal-remote, read through journalctl): lines/s and
#             CPU-seconds per million lines, beside the HTTP figure
#   steady    100k lines/s for past hours with sync running (--late-window 0s),
#             and the disk's own fsync latency meanwhile (a 4 KiB append and
#             fdatasync every 20 ms beside larch); with --baseline, on the
#             other build first
#   parts     memory with 10, 1,000 and 10,000 open parts (accounts x 1 hour), at
#             100k lines/s, so the figure does not move with ingest speed
#   outage    the S3-compatible server is down (5 minutes; 30 s in a quick
#             run) after lines for 4 accounts x 2 past hours came in, then
#             comes back: how long until the first and the last waiting part
#             is uploaded
#   backlog   a backlog ingested at 100k lines/s while the S3-compatible
#             server is down (8 GB of line text in a full run, 1 GB in a quick
#             one; about 1.4 times that in NDJSON), copied, then each copy
#             timed to start and drain: one to a local directory, one to the
#             server (s3s-fs, on this machine; installed into .test-servers/
#             on first use), one through upload_rate_limit (8 MiB/s, the bytes
#             sent over 30 s); with --baseline, the other build builds and drains
#             its own backlog to the server
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
baseline=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=true ;;
        --baseline) baseline=$(realpath "$2"); shift ;;
        *) echo "usage: scripts/bench.sh [--quick] [--baseline LARCH_BINARY]" >&2; exit 2 ;;
    esac
    shift
done
if $quick; then
    dur=10s; steady_dur=10s; gz_mib=64; fs_mib=128; backlog_gb=1; parts_dur=20s; outage=30; rate_s=15
    journal_entries=200000
else
    dur=30s; steady_dur=30s; gz_mib=200; fs_mib=512; backlog_gb=8; parts_dur=30s; outage=300; rate_s=30
    journal_entries=1000000
fi
rate_mib=8

s3s_fs=.test-servers/cargo/bin/s3s-fs
[ -x "$s3s_fs" ] || scripts/test-servers.sh s3s-fs
# The sources phase writes a journal with systemd-journal-remote.
scripts/test-servers.sh journal

. scripts/lib.sh
bench_setup run
results="$work/results"
mkdir -p "$results"
pid=
server=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

addr=127.0.0.1:$(free_port)

# Starts larch ($run, this build unless set) on $1 (data dir) with extra
# flags; sets $pid and waits for /health.
run_larch=$larch
start() {
    local data=$1; shift
    "$run_larch" run --data "$data" --listen "$addr" "$@" >"$data.log" 2>&1 &
    pid=$!
    wait_for_url "http://$addr/health" || { echo "larch did not start; see $data.log" >&2; exit 1; }
}
stop() {
    kill "$pid"; wait "$pid" || true; pid=
}
# CPU seconds (user + system) of $pid so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$pid/stat"; }
# CPU seconds of $pid's threads named $1 (the compactor: larch-compact).
thread_cpu() {
    awk -v t="$(getconf CLK_TCK)" -v name="($1)" '$2 == name {s += $14 + $15} END {print s / t + 0}' \
        /proc/"$pid"/task/*/stat 2>/dev/null || echo 0
}
# Peak resident memory of $pid, in MB.
peak_rss() { awk '/VmHWM/ {print $2 / 1024}' "/proc/$pid/status"; }
status() { curl -sf "http://$addr/status"; }

echo "baseline: $fs_mib MiB write+fsync..." >&2
"$bench" fsync --dir "$work" --mib "$fs_mib" >"$results/fsync.json"

# The ingest phase on larch binary $1, results under the name $2.
ingest() {
    run_larch=$1
    echo "ingest ($2): 16 clients, as fast as possible, $dur..." >&2
    rm -rf "$work/ingest"
    start "$work/ingest" --late-window 6h
    local c0 c1 k0 k1
    c0=$(cpu); k0=$(thread_cpu larch-compact)
    "$bench" load --addr "$addr" --duration "$dur" >"$results/$2.json"
    c1=$(cpu); k1=$(thread_cpu larch-compact)
    echo "{\"cpu_s\": $(awk "BEGIN{print $c1 - $c0}"), \"compact_cpu_s\": $(awk "BEGIN{print $k1 - $k0}"), \"peak_rss_mb\": $(peak_rss)}" >"$results/$2_proc.json"
    stop
    run_larch=$larch
}
if [ -n "$baseline" ]; then
    # Alternating, so a noisy moment of the machine does not favour either,
    # three times: each build's figure moves with the disk's speed.
    ingest "$baseline" baseline-ingest-1
    ingest "$larch" ingest-1
    ingest "$baseline" baseline-ingest-2
    ingest "$larch" ingest-2
    ingest "$baseline" baseline-ingest
    ingest "$larch" ingest
else
    ingest "$larch" ingest
fi

# The sources phase: each other source alone on a fresh larch, its lines
# counted from larch's own status, its CPU from /proc.
source_field() {
    status | python3 -c "import json,sys; print(max([r[\"$1\"] or 0 for r in json.load(sys.stdin).get(\"sources\", [])] or [0]))"
}
# Waits until the sources' stored lines reach $1, or stand still for 3 s.
wait_stored() {
    local before=-1 still=0 now
    while now=$(source_field lines); [ "$now" != "$1" ] && [ $still -lt 30 ]; do
        if [ "$now" = "$before" ]; then still=$((still + 1)); else still=0; fi
        before=$now; sleep 0.1
    done
}
# Writes $results/$1.json: the lines stored, the seconds from $2 (epoch s)
# to the last store, and the CPU seconds $3.
source_result() {
    local lines last_ms
    lines=$(source_field lines); last_ms=$(source_field last_stored_ms)
    echo "{\"lines\": $lines, \"seconds\": $(awk "BEGIN{print $last_ms / 1000 - $2}"), \"cpu_s\": $3}" >"$results/$1.json"
}
now_s() { date +%s.%N; }
sources_phase() {
    local c0 t0 conf_src port
    echo "sources: syslog over TCP, 4 connections, as fast as possible, $dur..." >&2
    port=$(free_port)
    conf_src="$work/sources.toml"
    printf '[[sources.syslog]]\naccount = "bench"\ntransport = "tcp"\nlisten = "127.0.0.1:%s"\n' "$port" >"$conf_src"
    rm -rf "$work/src-syslog"
    start "$work/src-syslog" --late-window 6h --config "$conf_src"
    c0=$(cpu); t0=$(now_s)
    "$bench" syslog --to "127.0.0.1:$port" --duration "$dur" >"$results/syslog-sent.json"
    wait_stored "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sent"])' "$results/syslog-sent.json")"
    source_result syslog "$t0" "$(awk "BEGIN{print $(cpu) - $c0}")"
    stop

    echo "sources: OTLP/HTTP protobuf, 16 clients, as fast as possible, $dur..." >&2
    rm -rf "$work/src-otlp"
    start "$work/src-otlp" --late-window 6h
    c0=$(cpu)
    "$bench" load --otlp --addr "$addr" --duration "$dur" >"$results/otlp-load.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"lines": r["lines"], "seconds": r["seconds"], "cpu_s": float(sys.argv[2])}))' \
        "$results/otlp-load.json" "$(awk "BEGIN{print $(cpu) - $c0}")" >"$results/otlp.json"
    stop

    local entries=$journal_entries remote=/lib/systemd/systemd-journal-remote
    [ -x "$remote" ] || remote=/usr/lib/systemd/systemd-journal-remote
    echo "sources: the journal, $entries entries written beforehand, read through journalctl..." >&2
    rm -rf "$work/journal" "$work/src-journal"
    mkdir -p "$work/journal"
    "$bench" journal-export --entries "$entries" |
        "$remote" --split-mode=none --output="$work/journal/bench.journal" - 2>/dev/null
    printf '[[sources.journald]]\naccount = "bench"\ndirectory = "%s"\n' "$(realpath "$work/journal")" >"$conf_src"
    t0=$(now_s)
    start "$work/src-journal" --late-window 6h --config "$conf_src"
    until [ "$(source_field lines)" -gt 0 ]; do sleep 0.1; done
    wait_stored "$entries"
    # journalctl, larch's child, does part of the work: its CPU counts too.
    local child_cpu=0 child
    for child in $(pgrep -P "$pid" journalctl); do
        child_cpu=$(awk -v t="$(getconf CLK_TCK)" -v s="$child_cpu" '{print s + ($14 + $15) / t}' "/proc/$child/stat")
    done
    source_result journald "$t0" "$(awk "BEGIN{print $(cpu) + $child_cpu}")"
    echo "{\"journalctl_cpu_s\": $child_cpu}" >"$results/journald-child.json"
    stop
}
sources_phase

# The steady phase on larch binary $1, results under the name $2.
steady() {
    run_larch=$1
    echo "steady ($2): 100k lines/s into past hours with sync running, $steady_dur..." >&2
    start "$work/$2" --late-window 0s --follow-up-after 1s
    local c0 c1 k0 k1 probe
    c0=$(cpu); k0=$(thread_cpu larch-compact)
    # The disk's own fsync latency meanwhile, on the spool's disk: the floor
    # under the p99 of acks, each of which waits for an fsync.
    "$bench" fsync-probe --dir "$work" --duration "$steady_dur" >"$results/$2_fsync.json" &
    probe=$!
    "$bench" load --addr "$addr" --duration "$steady_dur" --rate 100000 --hours-back 3 >"$results/$2.json"
    wait "$probe"
    c1=$(cpu); k1=$(thread_cpu larch-compact)
    echo "{\"cpu_s\": $(awk "BEGIN{print $c1 - $c0}"), \"compact_cpu_s\": $(awk "BEGIN{print $k1 - $k0}"), \"peak_rss_mb\": $(peak_rss)}" >"$results/$2_proc.json"
    stop
    rm -rf "$work/$2"
    run_larch=$larch
}
if [ -n "$baseline" ]; then
    # The same load on the same disk: how much of the p99 the disk makes.
    steady "$baseline" baseline-steady
fi
steady "$larch" steady

# Memory with many open parts: the same load spread over 10 accounts, 1,000
# and 10,000, with the same 10,000 keys configured each time.
conf="$work/accounts.toml"
{ echo "[keys]"; for i in $(seq 0 9999); do echo "k$i = \"a$i\""; done; } >"$conf"
for accounts in 10 1000 10000; do
    echo "open parts: $accounts accounts x 1 hour..." >&2
    start "$work/accounts-$accounts" --config "$conf"
    "$bench" load --addr "$addr" --key k --accounts "$accounts" --lines-per-request 100 --rate 100000 \
        --duration "$parts_dur" >"$results/parts-$accounts.json"
    open=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["parts_open"])')
    echo "{\"parts_open\": $open, \"peak_rss_mb\": $(peak_rss)}" >"$results/parts-$accounts-proc.json"
    stop
done

s3_port=$(free_port)
# Serves an S3-compatible store on $s3_port from $work/s3 (bucket "bench"); sets $server.
start_s3() {
    mkdir -p "$work/s3/bench"
    "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key bench-secret \
        "$work/s3" >>"$work/s3s-fs.log" 2>&1 &
    server=$!
    until curl -s "http://127.0.0.1:$s3_port/" >/dev/null 2>&1; do sleep 0.05; done
}
stop_s3() {
    kill "$server"; wait "$server" 2>/dev/null || true; server=
}
# Only the S3 targets read these.
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port"

# The outage phase on larch binary $1, results under the name $2: the store
# goes away, lines for 4 accounts x 2 past hours come in (2 s at 5,000 lines/s,
# about 20 parts), the parts keep failing and back off until the store comes back.
outage_phase() {
    run_larch=$1
    echo "outage ($2): the S3 server down for ${outage}s, then back..." >&2
    rm -rf "$work/outage" "$work/s3"
    start_s3
    start "$work/outage" --config "$conf" --late-window 0s --follow-up-after 2s --target s3://bench/
    stop_s3
    "$bench" load --addr "$addr" --key k --accounts 4 --hours-back 2 --rate 5000 \
        --duration 2s >/dev/null
    sleep $((outage - 2))
    start_s3
    "$bench" drain --addr "$addr" --pid "$pid" >"$results/$2.json"
    stop
    stop_s3
    run_larch=$larch
}
if [ -n "$baseline" ]; then
    outage_phase "$baseline" baseline-outage
fi
outage_phase "$larch" outage

# The backlog phase on larch binary $1 into spool $2: lines for 6 past hours
# at 100k lines/s while the S3 server is down (so every upload fails as on a
# cut link), until the spool holds $backlog_gb GB of line text; then until
# the compactor has caught up (its count of compressed lines stands still).
sync_flags=(--late-window 0s --follow-up-after 1s)
build_backlog() {
    run_larch=$1
    echo "backlog ($(basename "$2")): $backlog_gb GB of line text at 100k lines/s, store down..." >&2
    start "$2" "${sync_flags[@]}" --target s3://bench/
    until [ "$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_waiting"] // 10**6)')" \
        -ge $((backlog_gb * 1000)) ]; do
        "$bench" load --addr "$addr" --duration 10s --rate 100000 --hours-back 6 >/dev/null
    done
    local before=-1 now
    compressed() { status | python3 -c 'import json,sys; print(json.load(sys.stdin).get("compressed", {}).get("lines", 0))'; }
    # Closed parts are looked at every ten seconds: it stands still longer.
    while now=$(compressed); [ "$now" != "$before" ]; do before=$now; sleep 11; done
    stop
    run_larch=$larch
}
build_backlog "$larch" "$work/backlog"
cp -a "$work/backlog" "$work/backlog-s3"
cp -a "$work/backlog" "$work/backlog-rate"
sync

# Restarts larch on a backlog ($1) with more flags, timing start-up into
# $results/$2-start.json and the drain into $results/$2.json.
drain() {
    local data=$1 name=$2; shift 2
    local spool_mb t0 t1
    spool_mb=$(du -sm "$data" | cut -f1)
    t0=$(date +%s.%N)
    start "$data" "${sync_flags[@]}" "$@"
    t1=$(date +%s.%N)
    echo "{\"startup_s\": $(awk "BEGIN{print $t1 - $t0}"), \"spool_mb\": $spool_mb}" >"$results/$name-start.json"
    "$bench" drain --addr "$addr" --pid "$pid" >"$results/$name.json"
    stop
}

echo "backlog: start and drain to a local directory..." >&2
held="$work/held-archive"
mkdir -p "$held"
drain "$work/backlog" backlog --target "$held"

echo "baseline: single-core gzip of $gz_mib MiB of what was archived (best of 3)..." >&2
sync
"$bench" gzip --archive "$held" --mib "$gz_mib" >"$results/gzip.json"
rm -rf "$held"

# Larch binary $1 drains backlog $3 to s3s-fs; results under the name $2.
s3_drain() {
    run_larch=$1
    echo "backlog ($2): start and drain to an S3-compatible server (s3s-fs)..." >&2
    rm -rf "$work/s3"
    start_s3
    local c0 c1
    c0=$(awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$server/stat")
    drain "$3" "$2" --target s3://bench/
    c1=$(awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$server/stat")
    echo "{\"cpu_s\": $(awk "BEGIN{print $c1 - $c0}")}" >"$results/$2-server.json"
    stop_s3
    rm -rf "$3"
    run_larch=$larch
}
s3_drain "$larch" backlog-s3 "$work/backlog-s3"
if [ -n "$baseline" ]; then
    build_backlog "$baseline" "$work/baseline-backlog"
    s3_drain "$baseline" baseline-backlog-s3 "$work/baseline-backlog"
fi

# A metered link: the same backlog to s3s-fs through upload_rate_limit,
# measured over $rate_s seconds once uploads run.
echo "backlog: drain to S3 through upload_rate_limit = ${rate_mib}MiB/s for ${rate_s}s..." >&2
rm -rf "$work/s3"
start_s3
start "$work/backlog-rate" "${sync_flags[@]}" --target s3://bench/ \
    --set "target.upload_rate_limit=${rate_mib}MiB/s"
sleep 5
# Bytes sent as the limit lets them go, a multipart piece (8 MiB) at a time:
# objects finished within the window would count an object of tens of MB whole
# or not at all.
sent() { curl -sf "http://$addr/metrics" | awk '$1 == "larch_upload_sent_bytes_total" {v = $2} END {print v + 0}'; }
b0=$(sent); c0=$(cpu); t0=$(date +%s.%N)
sleep "$rate_s"
b1=$(sent); c1=$(cpu); t1=$(date +%s.%N)
echo "{\"limit_mb_s\": $(awk "BEGIN{print $rate_mib * 1.048576}"), \"upload_mb_s\": $(awk "BEGIN{print ($b1 - $b0) / 1e6 / ($t1 - $t0)}"), \"cores\": $(awk "BEGIN{print ($c1 - $c0) / ($t1 - $t0)}")}" >"$results/rate-limited.json"
stop
stop_s3

python3 scripts/bench_table.py "$results"
