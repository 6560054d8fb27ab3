#!/usr/bin/env bash
# fs-verity benchmark: what verifying every block costs a sequential read.
#
# One image (mkfs.ext4 defaults plus -O verity) holds the same 256 MiB of
# random data twice: `plain`, an ordinary file, and `verity`, a verity
# file (SHA-256, 4 KiB Merkle blocks; built as the tests build them, by
# tests/verity/put-verity-file.sh from fsverity-utils). Each is read cold
# through safemount: fresh mount (-o ro) of the image file, caches dropped
# (echo 3 > /proc/sys/vm/drop_caches), `dd of=/dev/null bs=1M`, unmount.
# The table shows MB/s (10^6 bytes), medians of REPEAT runs, and the
# verity file's time relative to the plain one's.
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts, drop_caches"
command -v fsverity >/dev/null || die "needs fsverity (apt-get install -y fsverity)"

SIZE_MIB=${SIZE_MIB:-256}
REPEAT=${REPEAT:-3}

need_binaries

mkdir -p "$WORK"
MNT=$WORK/veritymnt
mkdir -p "$MNT"
SOCK=$WORK/safemountd-verity.sock
IMG=$WORK/verity-bench.img
DATA=$WORK/verity-bench.data

cleanup() {
    if mountpoint -q "$MNT"; then
        "$BIN/safemount" --socket "$SOCK" unmount "$MNT" 2>/dev/null || umount -l "$MNT" || true
    fi
    stop_broker
    rm -f "$IMG" "$DATA"
}
trap cleanup EXIT

head -c $((SIZE_MIB << 20)) /dev/urandom > "$DATA"
rm -f "$IMG"
truncate -s $((SIZE_MIB * 2 + 128))M "$IMG"
mkfs.ext4 -q -F -b 4096 -O verity "$IMG"  # the tree below has 4 KiB blocks
debugfs -w -R "write $DATA plain" "$IMG" >/dev/null 2>&1
digest=$("$REPO/tests/verity/put-verity-file.sh" "$IMG" verity "$DATA" --hash-alg=sha256 --block-size=4096)
e2fsck -fn "$IMG" >/dev/null || die "the image is not clean"

start_broker "$WORK/safemountd-verity.log"

# One cold read of file $1; prints seconds.
cold_read() {
    "$BIN/safemount" --socket "$SOCK" mount "$IMG" "$MNT" -o ro >/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    local t0 t1
    t0=$(now)
    dd if="$MNT/$1" of=/dev/null bs=1M status=none
    t1=$(now)
    if [[ $1 == verity ]]; then
        [[ $(fsverity measure "$MNT/verity" | cut -d' ' -f1) == "$digest" ]] || die "measure differs"
    fi
    "$BIN/safemount" --socket "$SOCK" unmount "$MNT"
    for _ in $(seq 100); do mountpoint -q "$MNT" || break; sleep 0.1; done
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }'
}

declare -A T
for f in plain verity; do T[$f]=; done
for _ in $(seq "$REPEAT"); do
    for f in plain verity; do T[$f]+=" $(cold_read "$f")"; done
done
for f in plain verity; do echo "# $f seconds:${T[$f]}" >&2; done
bytes=$((SIZE_MIB << 20))
printf '%-8s %10s %10s\n' file "read MB/s" "time x"
p=$(median ${T[plain]})
for f in plain verity; do
    s=$(median ${T[$f]})
    awk -v f="$f" -v s="$s" -v p="$p" -v b="$bytes" \
        'BEGIN { printf "%-8s %10.0f %10.2f\n", f, b / s / 1e6, s / p }'
done
