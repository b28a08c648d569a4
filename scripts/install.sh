#!/usr/bin/env bash
# Builds larch and installs it as a systemd service (run as root):
#   /usr/local/bin/larch                 the binary
#   /etc/larch/larch.toml                the config (kept if it exists; see `larch config --default`)
#   /etc/systemd/system/larch.service    the unit (scripts/larch.service)
#   user and group `larch`; the spool in /var/lib/larch (StateDirectory)
#
#   scripts/install.sh            build, install, enable and (re)start
#   scripts/install.sh --no-start install only
#
# Upgrading is the same command: it stops larch, replaces the binary and starts
# it again. The spool carries a format version; a binary that cannot read it
# refuses to start and says so, and never misreads it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=yes
[ "${1:-}" = "--no-start" ] && start=no
if [ "$(id -u)" != 0 ]; then
    echo "run scripts/install.sh as root (it writes /usr/local/bin, /etc and the systemd unit)" >&2
    exit 1
fi
cargo build --release --locked --bin larch
target/release/larch config --default >/dev/null

if ! getent group larch >/dev/null; then groupadd --system larch; fi
if ! id larch >/dev/null 2>&1; then
    useradd --system --gid larch --home-dir /var/lib/larch --no-create-home \
        --shell /usr/sbin/nologin larch
fi

install -d -m 0755 /etc/larch
if [ ! -e /etc/larch/larch.toml ]; then
    # The defaults, with the spool under the service's state directory.
    target/release/larch config --default |
        sed 's|^dir = "data"|dir = "/var/lib/larch"|' >/etc/larch/larch.toml
    chmod 0640 /etc/larch/larch.toml
    chgrp larch /etc/larch/larch.toml
    echo "wrote /etc/larch/larch.toml: add [keys] and a [target] before real use"
fi
target/release/larch validate --config /etc/larch/larch.toml

if [ "$start" = yes ] && systemctl is-active --quiet larch; then
    systemctl stop larch
fi
install -m 0755 target/release/larch /usr/local/bin/larch
install -d -m 0755 /usr/local/share/doc/larch
install -m 0644 README.md /usr/local/share/doc/larch/README.md
install -m 0644 scripts/larch.service /etc/systemd/system/larch.service
systemctl daemon-reload
if [ "$start" = yes ]; then
    systemctl enable --now larch
    systemctl --no-pager status larch | head -5
fi
