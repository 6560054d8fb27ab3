#!/usr/bin/env bash
# FUSE requests per file operation: what each workload costs safemount in
# round trips to the worker. Each workload runs on its own mount of a
# fresh copy of an empty image; the worker logs its request counts at
# unmount ("FUSE requests: lookup=... create=..."), which this script
# divides by the number of file operations. Workloads that build on one
# another (create, then create + lstat, ...) show the cost of each step by
# difference.
#
#   sudo bench/requests.sh          (FILES=1000 TREE=/usr/include)
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"

FILES=${FILES:-1000}
TREE=${TREE:-/usr/include}
READ_MIB=${READ_MIB:-64}

need_binaries
[[ -d $TREE ]] || die "$TREE missing: set TREE to a source tree"

mkdir -p "$WORK"
MNT=$WORK/rmnt
mkdir -p "$MNT"
SOCK=$WORK/safemountd-r.sock
LOG=$WORK/safemountd-r.log
PRISTINE=$WORK/requests-empty.img
IMG=$WORK/requests.img
TAR=$WORK/tree.tar

cleanup() {
    if mountpoint -q "$MNT"; then "$BIN/safemount" --socket "$SOCK" unmount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    stop_broker
    rm -f "$IMG"
}
trap cleanup EXIT

make_empty_image "$PRISTINE" 2G
if [[ ! -f $TAR ]]; then
    tar -cf "$TAR" -C "$(dirname "$TREE")" "$(basename "$TREE")"
fi
TAR_FILES=$(tar -tf "$TAR" | wc -l)

start_broker "$LOG"

mount_fresh() {
    cp --sparse=always "$PRISTINE" "$IMG"
    "$BIN/safemount" --socket "$SOCK" mount "$IMG" "$MNT" -o rw >/dev/null
}
mount_again() { "$BIN/safemount" --socket "$SOCK" mount "$IMG" "$MNT" -o rw >/dev/null; }

# Unmounts and prints the worker's counts ("lookup=N create=N ...").
unmount_counts() {
    local before
    before=$(grep -c 'FUSE requests:' "$LOG" || true)
    "$BIN/safemount" --socket "$SOCK" unmount "$MNT"
    for _ in $(seq 100); do
        [[ $(grep -c 'FUSE requests:' "$LOG" || true) -gt $before ]] && break
        sleep 0.1
    done
    grep 'FUSE requests:' "$LOG" | tail -1 | sed 's/.*FUSE requests: //'
}

files() { # $1: steps, any of c (create), s (lstat), u (unlink), m (lstat of missing names, twice), l (symlinks, each resolved twice)
    python3 - "$MNT/d" "$FILES" "$1" <<'EOF'
import os, sys
d, n, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = [os.path.join(d, "file-%06d" % i) for i in range(n)]
if "c" in steps:
    os.mkdir(d)
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
if "s" in steps:
    for p in names:
        os.lstat(p)
if "u" in steps:
    for p in names:
        os.unlink(p)
if "l" in steps:
    os.mkdir(d)
    for p in names:
        os.symlink("target-of-" + os.path.basename(p), p)
    for _ in range(2):
        for p in names:
            os.readlink(p)
if "m" in steps:
    for _ in range(2):
        for p in names:
            try:
                os.lstat(p + ".missing")
            except FileNotFoundError:
                pass
EOF
}

# $1 label, $2 operations, $3 counts line
report() {
    awk -v label="$1" -v ops="$2" -v counts="$3" 'BEGIN {
        n = split(counts, kv, " "); total = 0; detail = ""
        for (i = 1; i <= n; i++) {
            split(kv[i], p, "="); total += p[2]
            if (p[2] / ops >= 0.05) detail = detail sprintf(" %s %.2f", p[1], p[2] / ops)
        }
        printf "%-28s %8d ops %9d requests %7.2f per op:%s\n", label, ops, total, total / ops, detail
    }'
}

echo "FUSE requests per file operation (FILES=$FILES, $TAR_FILES entries in the tar, $READ_MIB MiB read)"
mount_fresh; files c; report "create" "$FILES" "$(unmount_counts)"
mount_fresh; files cs; report "create + lstat" "$FILES" "$(unmount_counts)"
mount_fresh; files csu; report "create + lstat + unlink" "$FILES" "$(unmount_counts)"
mount_fresh; files l; report "symlink + readlink twice" "$FILES" "$(unmount_counts)"
mount_fresh; files c; unmount_counts >/dev/null
mount_again; files m; report "lstat missing, twice" "$((2 * FILES))" "$(unmount_counts)"
sync; echo 3 > /proc/sys/vm/drop_caches
mount_again; files s; report "lstat, cold" "$FILES" "$(unmount_counts)"
mount_fresh; mkdir "$MNT/tree"; tar -xf "$TAR" -C "$MNT/tree"; sync "$MNT"
report "untar" "$TAR_FILES" "$(unmount_counts)"
mount_again; rm -rf "$MNT/tree"; sync "$MNT"
report "rm -rf (cold)" "$TAR_FILES" "$(unmount_counts)"
mount_fresh; dd if=/dev/urandom of="$MNT/big" bs=1M count="$READ_MIB" status=none; unmount_counts >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
mount_again; cat "$MNT/big" >/dev/null; report "read, cold (per MiB)" "$READ_MIB" "$(unmount_counts)"
