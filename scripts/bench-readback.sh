#!/usr/bin/env bash
# Reading archives back, measured: builds an archive of about 3 GB of NDJSON
# (15 s of full-speed ingest over three past hours, emptied with `larch drain`),
# then times `larch restore` (everything, and filtered) and `larch verify` on it,
# with each command's peak memory. Then an hour as a fleet in one bucket leaves
# it: the archive's largest hour cut into FLEET_OBJECTS objects (default 1,000:
# the hour's name and .1 to .999, its lines in order), served over S3 by s3s-fs
# on 127.0.0.1, and that hour restored at two concurrencies. Prints one line
# per figure.
#
#   scripts/bench-readback.sh [SECONDS_OF_INGEST]     (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
fleet_objects=${FLEET_OBJECTS:-1000}
s3s_fs=.test-servers/cargo/bin/s3s-fs
[ -x "$s3s_fs" ] || scripts/test-servers.sh s3s-fs

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
server=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
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

# The fleet's hour: the largest archived hour's lines, in order, cut into
# $fleet_objects objects under that hour's names, in bucket "fleet".
hour=$(python3 - "$work/data/archive" "$work/s3/fleet" "$fleet_objects" <<'PY'
import gzip, os, re, sys
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
objects = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".json.gz")]
largest = max(objects, key=os.path.getsize)
name = re.match(r"(.*/[^/]+\.(\d{4}-\d{2}-\d{2})\.(\d{2})00)(\.\d+)?\.json\.gz$",
                os.path.relpath(largest, src))
stem, day, hh = name.group(1), name.group(2), name.group(3)
# Read twice, a line at a time: the hour is a GB of NDJSON or more.
with gzip.open(largest, "rb") as f:
    total = sum(1 for _ in f)
per = -(-total // count)
out = None
with gzip.open(largest, "rb") as f:
    for at, line in enumerate(f):
        if at % per == 0:
            if out:
                out.close()
            i = at // per
            path = os.path.join(dst, stem + ("" if i == 0 else f".{i}") + ".json.gz")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            out = gzip.open(path, "wb", compresslevel=1)
        out.write(line)
if out:
    out.close()
print(f"{day}T{hh}:00:00Z")
PY
)
made=$(find "$work/s3/fleet" -name '*.json.gz' | wc -l)
echo "fleet hour: $made objects of $hour in one S3 bucket (s3s-fs), $(du -sm "$work/s3/fleet" | cut -f1) MB gzip"
s3_port=$(free_port)
"$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key bench-secret \
    "$work/s3" >"$work/s3s-fs.log" 2>&1 &
server=$!
until curl -s "http://127.0.0.1:$s3_port/" >/dev/null 2>&1; do sleep 0.05; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port"
until=$(date -u -d "$hour + 1 hour" +%Y-%m-%dT%H:%M:%SZ)
for concurrency in 4 16; do
    measure "restore, fleet hour, --concurrency $concurrency" "$larch" restore --target s3://fleet \
        --account demo --since "$hour" --until "$until" --concurrency "$concurrency"
done
