#!/usr/bin/env bash
# Worker memory at scale: the worker's peak RSS (VmHWM) after each of
#   (a) walking FILES files (stat of every one, in 1,000-entry directories)
#   (b) listing one directory of FLAT entries (with their attributes)
#   (c) reading a BIG_GIB GiB file end to end (real data, caches dropped)
#   (d) writing 1 GiB and fsync
# on one read-write mount, and the broker's fd count and RSS across CYCLES
# mount/unmount cycles of a small image. The image is built once with the
# kernel's driver (it takes minutes) and kept in $WORK.
#
# Run as root from the repository root after `cargo build --release
# --workspace`. Defaults are the published figures' sizes (README,
# "Memory"); smaller ones for a quick look:
#   FILES=100000 FLAT=100000 BIG_GIB=1 CYCLES=200 bench/memory.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts, drop_caches"

WORK=${BENCH_DIR:-/var/tmp/safemount-bench-memory}
FILES=${FILES:-1000000}
FLAT=${FLAT:-1000000}
BIG_GIB=${BIG_GIB:-10}
CYCLES=${CYCLES:-10000}
IMG=$WORK/scale-$FILES-$FLAT-$BIG_GIB.img
SMALL=$WORK/small.img
MNT=$WORK/mnt
SOCK=$WORK/safemountd.sock

need_binaries
mkdir -p "$WORK" "$MNT"

cleanup() {
    if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    stop_broker
}
trap cleanup EXIT

make_files() { # DIR COUNT PER_DIR: COUNT empty files, PER_DIR to a directory
    python3 - "$@" <<'PY'
import os, sys
root, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, "d%05d" % (i // per)) if per < n else root
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    os.close(os.open(os.path.join(d, "f%07d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
PY
}

if [[ ! -f $IMG ]]; then
    echo "building $IMG ($FILES files, a $FLAT-entry directory, a $BIG_GIB GiB file)..." >&2
    inodes=$((FILES + FLAT + 100000))
    truncate -s $((BIG_GIB + 4 + (inodes / 4000000 + 1) * 2))G "$IMG.tmp"
    mkfs.ext4 -q -F -N "$inodes" -O large_dir "$IMG.tmp"
    mount -o loop "$IMG.tmp" "$MNT"
    make_files "$MNT/tree" "$FILES" 1000
    make_files "$MNT/flat" "$FLAT" "$FLAT"
    dd if=/dev/urandom of="$MNT/big" bs=4M count=$((BIG_GIB * 256)) status=none
    umount "$MNT"
    e2fsck -fn "$IMG.tmp" >/dev/null 2>&1 || die "fresh image is not clean"
    mv "$IMG.tmp" "$IMG"
fi
[[ -f $SMALL ]] || { truncate -s 64M "$SMALL"; mkfs.ext4 -q -F "$SMALL"; }

start_broker "$WORK/safemountd.log"
sm() { "$BIN/safemount" --socket "$SOCK" "$@"; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

sync; echo 3 > /proc/sys/vm/drop_caches
sm mount "$IMG" "$MNT" -o rw >/dev/null
pid=$(sm list --json | python3 -c 'import json,sys; print([m["worker_pid"] for m in json.load(sys.stdin) if m["mountpoint"]==sys.argv[1]][0])' "$MNT")
report() { printf '%-34s worker RSS %7s MiB now, peak %7s MiB\n' "$1" "$(mib "$(kib "$pid" VmRSS)")" "$(mib "$(kib "$pid" VmHWM)")"; }
report "mounted"
n=$(find "$MNT/tree" -type f -printf '%s\n' | wc -l); [[ $n -eq $FILES ]] || die "walked $n files, expected $FILES"
report "(a) stat of $FILES files"
n=$(ls -lf "$MNT/flat" | wc -l); [[ $n -ge $FLAT ]] || die "listed $n entries, expected $FLAT"
report "(b) ls -l of $FLAT entries"
echo 3 > /proc/sys/vm/drop_caches
dd if="$MNT/big" of=/dev/null bs=1M status=none
report "(c) read of $BIG_GIB GiB"
dd if=/dev/zero of="$MNT/written" bs=1M count=1024 conv=fsync status=none
report "(d) write of 1 GiB + fsync"
sm unmount "$MNT"
e2fsck -fn "$IMG" >/dev/null 2>&1 || die "image not clean after the run"

fds() { ls "/proc/$BROKER_PID/fd" | wc -l; }
b_fds0=$(fds); b_rss0=$(kib "$BROKER_PID" VmRSS)
for i in $(seq "$CYCLES"); do
    sm mount "$SMALL" "$MNT" -o ro >/dev/null
    sm unmount "$MNT"
    if (( i == CYCLES / 10 )); then b_fds1=$(fds); b_rss1=$(kib "$BROKER_PID" VmRSS); fi
done
printf 'broker over %d mount/unmount cycles: fds %d -> %d (at %d) -> %d, RSS %s -> %s (at %d) -> %s MiB\n' \
    "$CYCLES" "$b_fds0" "${b_fds1:-0}" $((CYCLES / 10)) "$(fds)" "$(mib "$b_rss0")" "$(mib "${b_rss1:-0}")" \
    $((CYCLES / 10)) "$(mib "$(kib "$BROKER_PID" VmRSS)")"
