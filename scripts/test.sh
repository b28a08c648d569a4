#!/usr/bin/env bash
# Runs every test: installs the test servers if they are missing, then the suite,
# then the fuzz properties again in a debug build, where integer overflow panics.
# More fuzzing: PROPTEST_CASES=100000 cargo test --lib fuzz_
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-servers.sh
cargo test --release --locked "$@"
cargo test --locked --lib fuzz_
