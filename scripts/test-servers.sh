#!/usr/bin/env bash
# Installs the servers the tests run against, into .test-servers/ (git-ignored):
# - moto (PyPI): an S3-compatible server, with boto3 to inspect what larch wrote;
# - Azurite (npm): the Azure Blob Storage emulator, with azure-storage-blob (PyPI);
# - s3s-fs (crates.io): an S3-compatible server that checks request signatures;
# and, with no names given, logger (Debian's bsdutils) if it is missing.
# Idempotent: what is already there is kept.
#
#   scripts/test-servers.sh           all of them
#   scripts/test-servers.sh s3s-fs    only the named ones (moto, azurite, s3s-fs)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.test-servers
mkdir -p "$dir"
wanted=" ${*:-moto azurite s3s-fs} "
for name in $wanted; do
    case $name in
        moto | azurite | s3s-fs) ;;
        *) echo "unknown test server '$name' (known: moto, azurite, s3s-fs)" >&2; exit 2 ;;
    esac
done
want() { [[ $wanted == *" $1 "* ]]; }
if want moto && ! "$dir/venv/bin/python" -c 'import boto3, moto, azure.storage.blob' 2>/dev/null; then
    echo "installing moto, boto3 and azure-storage-blob into $dir/venv (a few minutes)"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        'moto[server]' boto3 azure-storage-blob
fi
if want azurite && [ ! -x "$dir/npm/node_modules/.bin/azurite-blob" ]; then
    if ! command -v npm >/dev/null; then
        echo "npm is needed to install Azurite (the Azure emulator): install Node.js and npm" >&2
        exit 1
    fi
    echo "installing azurite into $dir/npm"
    npm install --silent --no-audit --no-fund --prefix "$dir/npm" azurite
fi
if want s3s-fs && [ ! -x "$dir/cargo/bin/s3s-fs" ]; then
    # 0.14.1 is the last version that builds with this toolchain.
    echo "installing s3s-fs into $dir/cargo (about 5 minutes)"
    cargo install --quiet s3s-fs@0.14.1 --features binary --locked --root "$dir/cargo"
fi
# The syslog tests send with logger (util-linux; Debian's bsdutils, present on
# every Debian host, installed here should a minimal image lack it).
if [ $# -eq 0 ] && ! command -v logger >/dev/null; then
    echo "installing logger (bsdutils) for the syslog tests"
    apt-get install -y -qq bsdutils
fi
if want moto; then "$dir/venv/bin/python" -c 'import moto; print("moto", moto.__version__)'; fi
if want azurite; then echo "azurite $("$dir/npm/node_modules/.bin/azurite-blob" --version)"; fi
if want s3s-fs; then "$dir/cargo/bin/s3s-fs" --version; fi
