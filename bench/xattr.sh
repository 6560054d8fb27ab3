#!/usr/bin/env bash
# Xattr benchmark: N new files in one directory, each given the same two
# attributes (100-byte values: they do not fit the inode beside each
# other, so they go to an xattr block), then syncfs; then every file's
# attributes listed (getfattr -d) and the files removed, then syncfs.
# Prints the seconds of each phase and the xattr blocks the files used
# (free blocks before minus after the first phase, less the directory's).
#
# Compares two builds of safemount on fresh copies of the same empty
# image: $BIN (default target/release) and $BASE_BIN (optional: e.g. a
# build without xattr block sharing), plus the kernel's ext4.
#
# Run as root from the repository root after `cargo build --release
# --workspace`.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"
command -v setfattr >/dev/null || die "setfattr missing: apt-get install -y attr"

BASE_BIN=${BASE_BIN:-}
FILES=${FILES:-5000}
mkdir -p "$WORK"
MNT=$WORK/xmnt
mkdir -p "$MNT"
PRISTINE=$WORK/xattr-empty.img
IMG=$WORK/xattr.img

cleanup() {
    if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    stop_broker
    rm -f "$IMG"
}
trap cleanup EXIT

bfree() { stat -f -c %f "$MNT"; }

rm -f "$PRISTINE"
truncate -s 1G "$PRISTINE"
mkfs.ext4 -q -F "$PRISTINE"
V1=0x$(head -c 100 /dev/zero | tr '\0' 'a' | od -v -An -tx1 | tr -d ' \n')
V2=0x$(head -c 100 /dev/zero | tr '\0' 'b' | od -v -An -tx1 | tr -d ' \n')

run() { # name bin-dir-or-"kernel"
    local name=$1 bin=$2 sock=$WORK/xattr-bench.sock
    cp --sparse=always "$PRISTINE" "$IMG"
    if [[ $bin == kernel ]]; then
        mount -o loop "$IMG" "$MNT"
    else
        rm -f "$sock"
        "$bin/safemountd" --socket "$sock" --worker "$bin/safemount-worker" 2>"$WORK/xattr-bench.log" &
        BROKER_PID=$!
        for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
        "$bin/safemount" --socket "$sock" mount "$IMG" "$MNT" -o rw >/dev/null
    fi
    mkdir "$MNT/d"
    sync -f "$MNT"
    local before t0 t1 t2 after
    before=$(bfree)
    t0=$(now)
    (cd "$MNT/d" && for i in $(seq "$FILES"); do
        : > "f$i"; setfattr -n user.one -v "$V1" "f$i"; setfattr -n user.two -v "$V2" "f$i"
    done)
    sync -f "$MNT"
    t1=$(now)
    after=$(bfree)
    (cd "$MNT/d" && getfattr -d . ./* >/dev/null 2>&1 && rm -f ./*)
    sync -f "$MNT"
    t2=$(now)
    printf '%-24s create+setxattr %8ss   list+unlink %8ss   blocks used %6d\n' \
        "$name" "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" $((before - after))
    if [[ $bin == kernel ]]; then
        umount "$MNT"
    else
        "$bin/safemount" --socket "$sock" unmount "$MNT"
        kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
}

run kernel kernel
run safemount "$BIN"
[[ -n $BASE_BIN ]] && run "safemount (base)" "$BASE_BIN"
exit 0
