#!/usr/bin/env bash
# The upload bandwidth cap: three uploads at once to an S3-compatible store
# (moto on 127.0.0.1) under one limit, sized to take 20 s; prints the rate they
# achieved together and how far it is from the limit.
#
#   scripts/bench-rate.sh [RATE] [SECONDS]     defaults: 1MiB/s 20
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-1MiB/s}
seconds=${2:-20}
scripts/test-servers.sh moto >&2
cargo build --release --locked -p larch-bench >&2
. scripts/lib.sh
port=$(free_port)
.test-servers/venv/bin/moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
wait_for_url "http://127.0.0.1:$port"
curl -sf -X PUT "http://127.0.0.1:$port/bench" >/dev/null
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$port" \
    target/release/larch-bench rate --target s3://bench --rate "$rate" --seconds "$seconds" --uploads 3
