#!/usr/bin/env bash
# Installs the servers the tests run against, into .test-servers/ (git-ignored):
# - moto (PyPI): an S3-compatible server, with boto3 to inspect what larch wrote;
# - Azurite (npm): the Azure Blob Storage emulator, with azure-storage-blob (PyPI);
# - s3s-fs (crates.io): an S3-compatible server that checks request signatures;
# - otel (PyPI): the OpenTelemetry Python SDK with its OTLP/HTTP log exporters,
#   protobuf and JSON, in their own virtualenv;
# - journal: journalctl with systemd-journal-remote (Debian's systemd,
#   systemd-journal-remote), if missing;
# and, with no names given, logger (Debian's bsdutils) if missing.
# Idempotent: what is already there is kept.
#
#   scripts/test-servers.sh           all of them
#   scripts/test-servers.sh s3s-fs    only the named ones (moto, azurite, s3s-fs, otel, journal)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.test-servers
mkdir -p "$dir"
wanted=" ${*:-moto azurite s3s-fs otel journal} "
for name in $wanted; do
    case $name in
        moto | azurite | s3s-fs | otel | journal) ;;
        *) echo "unknown test server '$name' (known: moto, azurite, s3s-fs, otel, journal)" >&2; exit 2 ;;
    esac
done
want() { [[ $wanted == *" $1 "* ]]; }
if want moto && ! "$dir/venv/bin/python" -c 'import boto3, moto, azure.storage.blob' 2>/dev/null; then
    echo "installing moto, boto3 and azure-storage-blob into $dir/venv (a few minutes)"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        'moto[server]' boto3 azure-storage-blob
fi
# The JSON exporter (still a beta) pins the common packages at 0.66b1, which
# the protobuf exporter 1.45.1 shares.
if want otel && ! "$dir/otel/bin/python" -c 'import opentelemetry.exporter.otlp.json.http._log_exporter, opentelemetry.exporter.otlp.proto.http._log_exporter' 2>/dev/null; then
    echo "installing the OpenTelemetry Python SDK and its OTLP/HTTP exporters into $dir/otel"
    python3 -m venv "$dir/otel"
    "$dir/otel/bin/pip" install --quiet --disable-pip-version-check \
        'opentelemetry-sdk==1.45.1' 'opentelemetry-exporter-otlp-proto-http==1.45.1' \
        'opentelemetry-exporter-otlp-json-http==0.66b1'
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
# The journal tests (and the bench's journal phase) write journal files with
# systemd-journal-remote and larch reads them with journalctl.
if want journal && ! { command -v journalctl >/dev/null &&
    { [ -x /lib/systemd/systemd-journal-remote ] || [ -x /usr/lib/systemd/systemd-journal-remote ]; }; }; then
    echo "installing journalctl and systemd-journal-remote for the journal tests"
    install_journal() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            systemd systemd-journal-remote
    }
    install_journal || { apt-get update -qq && install_journal; }
fi
if want moto; then "$dir/venv/bin/python" -c 'import moto; print("moto", moto.__version__)'; fi
if want azurite; then echo "azurite $("$dir/npm/node_modules/.bin/azurite-blob" --version)"; fi
if want s3s-fs; then "$dir/cargo/bin/s3s-fs" --version; fi
if want otel; then "$dir/otel/bin/python" -c 'import opentelemetry.sdk.version as v; print("opentelemetry-sdk", v.__version__)'; fi
