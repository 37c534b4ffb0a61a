#!/usr/bin/env bash
# The one command that installs what the tests need (idempotently) and runs
# the whole suite: unit tests of every crate plus the multi-server
# end-to-end tests of tests/ (network namespaces, FUSE, pjdfstest).
#
# Needs root (network namespaces, iptables, FUSE mounts). Environment:
#   KT_PARALLEL=N      clusters allowed to run at once (default 1; 2 cores)
#   KT_KEEP=1          keep each cluster's scratch dir under /tmp
#   KT_DUMP_LOGS=1     print server logs after every cluster, not only failures
#   TEST_FILTER=...    passed to cargo test as a name filter
#   SUITE_TIMEOUT=40m  upper bound for the cargo test run
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: must run as root (network namespaces, iptables, FUSE)" >&2
  exit 1
fi

# --- system packages (only what is missing) --------------------------------
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip          || need+=(iproute2)
have iptables    || need+=(iptables)
have fusermount3 || need+=(fuse3)
have ps          || need+=(procps)
have killall     || need+=(psmisc)
have nsenter     || need+=(util-linux)
have python3     || need+=(python3)
have ping        || need+=(iputils-ping)
have getfattr    || need+=(attr)
have getent      || need+=(libc-bin)
have cc          || need+=(gcc)
have nfs-cat     || need+=(libnfs-utils)   # NFS gateway tests: nfs-cp/nfs-cat/nfs-ls
have rpcinfo     || need+=(rpcbind)        # rpcinfo; rpcbind adoption test
have showmount   || need+=(nfs-common)     # showmount -e/-a
# The Linux kernel's NFS client, booted under qemu (TCG) by tests/src/knfs.rs;
# its kernel package is fetched once into ~/.cache/kiln-knfs.
have qemu-system-x86_64 || need+=(qemu-system-x86)
[ -x /bin/busybox ]     || need+=(busybox-static)
dpkg -s libacl1-dev >/dev/null 2>&1 || need+=(libacl1-dev)   # pjdfstest links libacl
if [ "${#need[@]}" -gt 0 ]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Install without starting services (rpcbind, statd): tests start their own.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f "$policy"
fi

# FUSE device (present on normal hosts; containers may lack it).
if [ ! -c /dev/fuse ]; then
  mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || log "warning: /dev/fuse missing; FUSE tests will fail"
fi

# iptables must work inside a fresh network namespace; the nft backend is
# Debian's default, fall back to legacy where the kernel lacks nf_tables.
probe="kt$$c0-probe"
ip netns add "$probe"
if ! ip netns exec "$probe" iptables -w -L -n >/dev/null 2>&1; then
  if [ -x /usr/sbin/iptables-legacy ]; then
    log "iptables (nft) does not work in a namespace here; switching to iptables-legacy"
    update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
  fi
fi
ip netns del "$probe"

# pjdfstest switches to users nobody and tests (each with its own group).
id tests >/dev/null 2>&1 || useradd --no-create-home --user-group --shell /usr/sbin/nologin tests
id nobody >/dev/null 2>&1 || useradd --no-create-home --user-group --shell /usr/sbin/nologin nobody

# --- cargo tools -------------------------------------------------------------
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! have pjdfstest; then
  log "installing pjdfstest (crates.io)"
  cargo install --locked --quiet pjdfstest --version 0.2.2
fi

# --- build ------------------------------------------------------------------
# Tests use the debug binary: it shares its dependencies with the test build
# (one compile); `kiln bench` is for release builds.
target="${CARGO_TARGET_DIR:-$PWD/target}"
log "building kiln"
cargo build --bin kiln
cargo build -p kiln-tests --bin kt-cleanup
export KILN_BIN="$target/debug/kiln"
# `mount -t kiln` runs /sbin/mount.kiln: install the helper as an admin would.
ln -sf "$KILN_BIN" /sbin/mount.kiln
export KT_PARALLEL="${KT_PARALLEL:-1}"
export RUST_BACKTRACE=1

cleanup() { "$target/debug/kt-cleanup" || true; }
trap cleanup EXIT
cleanup

# --- run --------------------------------------------------------------------
log "running the suite (KT_PARALLEL=$KT_PARALLEL)"
out="$(mktemp)"
set +e
filter=()
[ -n "${TEST_FILTER:-}" ] && filter=("$TEST_FILTER")
timeout --signal=TERM --kill-after=30s "${SUITE_TIMEOUT:-40m}" \
  cargo test --workspace --no-fail-fast -- "${filter[@]}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

# One closing line over every test binary.
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i) ~ /^passed;?$/)  p += $(i-1);
         if ($(i) ~ /^failed;?$/)  f += $(i-1);
         if ($(i) ~ /^ignored;?$/) g += $(i-1);
       }
     }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, g }' "$out"
rm -f "$out"
if [ "$rc" -eq 124 ]; then
  echo "scripts/test.sh: the suite exceeded ${SUITE_TIMEOUT:-40m}" >&2
fi
exit "$rc"
