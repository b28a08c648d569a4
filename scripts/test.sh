#!/usr/bin/env bash
# Runs every test: installs the test servers if they are missing, then the
# suite (the forgetful test filesystem's own tests included), then the
# hostile clients' run and both torture suites' quick modes (kills and faults,
# power cuts; each prints its summary line),
# then the fuzz properties again in a debug build, where integer overflow panics.
# One test: cargo test --release <name>; one suite: cargo test --release --test it crash::. More fuzzing: PROPTEST_CASES=100000 cargo test --lib fuzz_
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-servers.sh
cargo test --release --locked --workspace -- --skip torture --skip hostile_clients
# The hostile clients' run prints its summary line (peak RSS, p99, lines lost).
cargo test --release --locked --test it hostile::hostile_clients -- --nocapture
./scripts/torture.sh
cargo test --locked --lib fuzz_
