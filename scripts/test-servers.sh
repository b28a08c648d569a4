#!/usr/bin/env bash
# Installs the servers the tests run against, into .test-servers/ (git-ignored):
# - moto (PyPI): an S3-compatible server, plus boto3 for inspecting what larch wrote.
# Idempotent: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.test-servers
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/moto_server" ] || ! "$dir/venv/bin/python" -c 'import boto3, moto' 2>/dev/null; then
    echo "installing moto and boto3 into $dir/venv (a few minutes)"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' boto3
fi
"$dir/venv/bin/moto_server" --version >/dev/null 2>&1 || "$dir/venv/bin/python" -c 'import moto; print("moto", moto.__version__)'
