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
#   FUZZ_SECS=20       seconds per cargo-fuzz target (0 skips fuzzing)
#   FUZZ_BUDGET=240    seconds for the whole fuzz stage, build included (a
#                      cold build can exceed it: each target still runs 10 s)
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
have mkfs.ext4   || need+=(e2fsprogs)      # brick info: inode size read from a real superblock
have nfs-cat     || need+=(libnfs-utils)   # NFS gateway tests: nfs-cp/nfs-cat/nfs-ls
have rpcinfo     || need+=(rpcbind)        # rpcinfo; rpcbind adoption test
have showmount   || need+=(nfs-common)     # showmount -e/-a
# The Linux kernel's NFS client, booted under qemu (TCG) by tests/src/knfs.rs;
# its kernel package is fetched once into ~/.cache/kiln-knfs.
have qemu-system-x86_64 || need+=(qemu-system-x86)
[ -x /bin/busybox ]     || need+=(busybox-static)
have arping             || need+=(iputils-arping)   # nfs_failover_kernel: the VIP's gratuitous ARP
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

# cargo-fuzz targets (portmap/fuzz, gateways/*/fuzz) need a nightly toolchain.
fuzz_ready=0
fuzz_why=""
if [ "${FUZZ_SECS:-20}" != 0 ]; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly toolchain (cargo-fuzz)"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || true
  fi
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz_why="no nightly toolchain (rustup toolchain install nightly failed: no network?)"
  elif ! have cargo-fuzz && ! cargo install --locked --quiet cargo-fuzz --version 0.13.2; then
    fuzz_why="cargo-fuzz could not be installed (no network?)"
  else
    fuzz_ready=1
  fi
else
  fuzz_why="FUZZ_SECS=0"
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

# --- bounded fuzzing ----------------------------------------------------------
# Every target of every fuzz crate for FUZZ_SECS (less when FUZZ_BUDGET, which
# includes building them, runs short; never under 10 s). A crash fails the
# suite; its input is left in <crate>/fuzz/artifacts/<target>/. Allocations
# over 64 MiB count as crashes (no unbounded allocation from wire lengths).
fuzz_pass=0 fuzz_fail=0 fuzz_skip=0
fuzz_dirs=()
for d in portmap/fuzz gateways/*/fuzz; do [ -f "$d/Cargo.toml" ] && fuzz_dirs+=("$d"); done
fuzz_targets=()
for d in "${fuzz_dirs[@]}"; do
  for t in $(sed -n 's/^name = "\(.*\)"$/\1/p' "$d/Cargo.toml" | tail -n +2); do
    fuzz_targets+=("$d:$t")
  done
done
if [ "$fuzz_ready" != 1 ]; then
  log "SKIPPED fuzzing (${#fuzz_targets[@]} targets): $fuzz_why"
  fuzz_skip=${#fuzz_targets[@]}
else
  fuzz_start=$SECONDS
  budget=${FUZZ_BUDGET:-240}
  fuzz_min=$(( ${FUZZ_SECS:-20} < 10 ? ${FUZZ_SECS:-20} : 10 ))
  fuzz_log="$(mktemp)"
  export CARGO_TARGET_DIR_FUZZ="$target/fuzz"
  for d in "${fuzz_dirs[@]}"; do
    log "building fuzz targets in $d"
    # A fresh clone: the workspace's versions, so most of the crates the
    # fuzz crates share are already downloaded and resolve alike.
    [ -f "$d/Cargo.lock" ] || cp Cargo.lock "$d/Cargo.lock"
    if ! (cd "$d" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR_FUZZ" cargo +nightly fuzz build >"$fuzz_log" 2>&1); then
      tail -n 30 "$fuzz_log" >&2
      log "FAILED to build the fuzz targets in $d"
      fuzz_fail=$((fuzz_fail + 1))
    fi
  done
  left=${#fuzz_targets[@]}
  for dt in "${fuzz_targets[@]}"; do
    d=${dt%%:*} t=${dt#*:}
    remaining=$((budget - (SECONDS - fuzz_start)))
    secs=$((remaining / left))
    [ "$secs" -gt "${FUZZ_SECS:-20}" ] && secs=${FUZZ_SECS:-20}
    left=$((left - 1))
    # A cold build can eat the whole budget: every target still gets a
    # short run rather than none.
    [ "$secs" -lt "$fuzz_min" ] && secs=$fuzz_min
    # The outer timeout only guards against a hung run (libFuzzer's own
    # -timeout catches slow inputs); it leaves room for a rebuild.
    if (cd "$d" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR_FUZZ" timeout --kill-after=10s $((secs + 300)) \
        cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=1024 -malloc_limit_mb=64 >"$fuzz_log" 2>&1); then
      runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$fuzz_log" | tail -n 1)
      log "fuzz $t ($d): ${runs:-?} inputs in ${secs}s, no crash"
      fuzz_pass=$((fuzz_pass + 1))
    else
      tail -n 40 "$fuzz_log" >&2
      log "FAILED fuzz $t ($d): input saved under $d/artifacts/$t/"
      fuzz_fail=$((fuzz_fail + 1))
    fi
  done
  rm -f "$fuzz_log"
  log "fuzzing: $fuzz_pass passed, $fuzz_fail failed, $fuzz_skip skipped in $((SECONDS - fuzz_start))s"
  if [ "$fuzz_fail" -gt 0 ] && [ "$rc" -eq 0 ]; then rc=1; fi
fi
{
  echo "test result: fuzz. $fuzz_pass passed; $fuzz_fail failed; $fuzz_skip ignored; 0 measured"
} >> "$out"

# One closing line over every test binary and fuzz target.
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
