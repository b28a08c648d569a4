#!/usr/bin/env bash
# Runs every test: installs the test servers if they are missing, then the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-servers.sh
cargo test --release --locked "$@"
