#!/usr/bin/env bash
# One command for a working single-server Kiln: builds `kiln` (release),
# installs it as /usr/local/sbin/kiln with the /sbin/mount.kiln helper, and
# runs `kiln up`: the management daemon plus a default distributed volume
# (vol0, 4 bricks under the data dir), started, with the mount command printed.
# Stays in the foreground; Ctrl-C stops it. Extra arguments go to `kiln up`
# (e.g. --data-dir DIR --bricks N --volume NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/kiln-up.sh: run as root (bricks use trusted.* xattrs; FUSE mounts)" >&2
  exit 1
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --bin kiln
target="${CARGO_TARGET_DIR:-$PWD/target}"
install -m 0755 "$target/release/kiln" /usr/local/sbin/kiln
ln -sf /usr/local/sbin/kiln /sbin/mount.kiln
exec /usr/local/sbin/kiln up "$@"
