#!/usr/bin/env bash
# The torture suite (tests/it/torture/): SIGKILLs at random moments, object store
# faults (refused connections, resets mid-upload, stalls past the timeout, 500,
# 503 SlowDown, a long outage), a full spool disk, damaged spool records, clock
# jumps and multipart uploads, all under load from HTTP clients and rotating
# file writers; and power cuts on a filesystem that forgets what was not
# fsynced (tests/it/torture/cuts.rs). Each prints one summary line and exits
# non-zero if any acknowledged line is lost or any line is archived twice.
#
#   scripts/torture.sh                       quick modes (20 cycles, 12 cuts; scripts/test.sh runs them too)
#   scripts/torture.sh --cycles 250          long mode of the kills and faults
#   scripts/torture.sh --power-cuts 200      long mode of the power cuts
#   scripts/torture.sh --seed N              replays a run (the seed is printed first)
#   scripts/torture.sh --outage SECONDS      length of a long store outage (default 12)
#
# The spool lives on a small tmpfs the suite mounts, which needs root; without
# it the disk-full episodes are skipped and the output says so.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=""
cuts=""

while [ $# -gt 0 ]; do
    case "$1" in
        --cycles) export LARCH_TORTURE_CYCLES="$2"; kills=1; shift 2 ;;
        --power-cuts) export LARCH_POWER_CUTS="$2"; cuts=1; shift 2 ;;
        --seed) export LARCH_TORTURE_SEED="$2"; shift 2 ;;
        --outage) export LARCH_TORTURE_OUTAGE_S="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "torture.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

./scripts/test-servers.sh
# One at a time: each runs its own store and load. A long mode of one kind
# runs that kind alone.
only="torture::"
if [ -n "$kills" ] && [ -z "$cuts" ]; then only="torture::kills::torture --exact"; fi
if [ -n "$cuts" ] && [ -z "$kills" ]; then only="torture::cuts::power_cut_torture --exact"; fi
# shellcheck disable=SC2086
cargo test --release --locked --test it -- $only --test-threads 1 --nocapture
