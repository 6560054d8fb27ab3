#!/usr/bin/env bash
# Multi-mount protection benchmark: what MMP's direct-I/O mode costs.
#
# One filesystem, made twice on 3 GiB images (mkfs.ext4 defaults plus
# `-O mmp`, and the same with `-O ^mmp`), each mounted read-write through
# safemount on a loop block device. With MMP the worker sets O_DIRECT on
# the device (every transfer bypasses the device's page cache); without it
# the worker's I/O is buffered as usual.
#
#   (a) sequential write of 1 GiB with fsync (dd bs=1M conv=fsync)
#   (b) cold sequential read of that 1 GiB file: unmount, drop caches
#       (echo 3 > /proc/sys/vm/drop_caches), fresh mount, dd of=/dev/null
#   (c) 10,000 creates of empty files in one directory (one process),
#       then fsync of the directory and the durability point of write.sh
#       (sync, then fsync of the mount's root)
#
# Each MMP mount waits 2 x 5 + 1 s to claim the filesystem (not timed).
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts, loop devices, drop_caches"

FILES=${FILES:-10000}
SEQ_MIB=${SEQ_MIB:-1024}
REPEAT=${REPEAT:-3}
# Loop devices' own I/O on the backing file: off (buffered, losetup's
# default) or on.
LOOP_DIO=${LOOP_DIO:-off}
SYSTEMS="mmp nommp"

need_binaries

mkdir -p "$WORK"
MNT=$WORK/mmpmnt
mkdir -p "$MNT"
SOCK=$WORK/safemountd-mmp.sock
IMG=$WORK/mmp-bench.img
LOOP=

cleanup() {
    if mountpoint -q "$MNT"; then
        "$BIN/safemount" --socket "$SOCK" unmount "$MNT" 2>/dev/null || umount "$MNT" 2>/dev/null || umount -l "$MNT" || true
    fi
    stop_broker
    if [[ -n $LOOP ]]; then losetup -d "$LOOP" 2>/dev/null || true; fi
    rm -f "$IMG"
}
trap cleanup EXIT

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# As in write.sh: syncfs(2) does not reach a FUSE server; fsync of the
# mount's root does.
syncfs() { sync; sync "$MNT"; }

# A fresh image for $1 (mmp|nommp) behind a loop device.
fresh() {
    [[ -n $LOOP ]] && { losetup -d "$LOOP"; LOOP=; }
    rm -f "$IMG"
    truncate -s 3G "$IMG"
    case $1 in
        mmp) mkfs.ext4 -q -F -O mmp "$IMG" ;;
        nommp) mkfs.ext4 -q -F -O ^mmp "$IMG" ;;
    esac
    LOOP=$(losetup -f --show --direct-io="$LOOP_DIO" "$IMG")
}

do_mount() {
    start_broker "$WORK/safemountd-mmp.log"
    "$BIN/safemount" --socket "$SOCK" mount "$LOOP" "$MNT" -o rw >/dev/null 2>"$WORK/mount-mmp.err" ||
        die "mount $LOOP ($1): $(cat "$WORK/mount-mmp.err")"
    # The mode the benchmark means to measure.
    local pid fd flags
    pid=$(worker_pid "$MNT")
    for fd in /proc/"$pid"/fd/*; do
        [[ $(readlink "$fd") == "$LOOP" ]] || continue
        flags=$(awk '/^flags:/ { print $2 }' /proc/"$pid"/fdinfo/"${fd##*/}")
        if (( (8#$flags & 8#40000) != 0 )); then DIRECT[$1]=yes; else DIRECT[$1]=no; fi
    done
}

do_unmount() {
    "$BIN/safemount" --socket "$SOCK" unmount "$MNT"
    for _ in $(seq 100); do mountpoint -q "$MNT" || break; sleep 0.1; done
}

creates() {
    python3 - "$MNT/meta" "$FILES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
for i in range(n):
    os.close(os.open(os.path.join(d, "file-%06d" % i), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
os.fsync(fd)
os.close(fd)
EOF
}

declare -A WRITE READ CREATE DIRECT
for sys in $SYSTEMS; do
    echo "== $sys" >&2
    writes=() reads=() creates_s=()
    for run in $(seq "$REPEAT"); do
        fresh "$sys"
        do_mount "$sys"
        t0=$(now)
        dd if=/dev/zero of="$MNT/big.bin" bs=1M count="$SEQ_MIB" conv=fsync status=none
        t1=$(now)
        writes+=("$(calc "$SEQ_MIB * 1048576 / 1000000 / $(elapsed "$t0" "$t1")")")

        t0=$(now); creates; syncfs; t1=$(now)
        creates_s+=("$(elapsed "$t0" "$t1")")
        rss_write=$(worker_peak_mib "$MNT")
        do_unmount

        drop_caches
        do_mount "$sys"
        t0=$(now)
        dd if="$MNT/big.bin" of=/dev/null bs=1M status=none
        t1=$(now)
        reads+=("$(calc "$SEQ_MIB * 1048576 / 1000000 / $(elapsed "$t0" "$t1")")")
        n=$(find "$MNT/meta" -type f | wc -l)
        [[ $n -eq $FILES ]] || echo "   WARNING: $sys: $n files after remount, expected $FILES" >&2
        rss_read=$(worker_peak_mib "$MNT")
        do_unmount
        e2fsck -fn "$LOOP" >/dev/null 2>&1 || echo "   WARNING: $sys: $LOOP not clean (e2fsck -fn)" >&2
        printf '   run %d: write %.0f MB/s, cold read %.0f MB/s, %d creates %.3f s (O_DIRECT: %s), worker peak RSS write %s, read %s MiB\n' "$run" \
            "${writes[-1]}" "${reads[-1]}" "$FILES" "${creates_s[-1]}" "${DIRECT[$sys]:-?}" "$rss_write" "$rss_read" >&2
    done
    WRITE[$sys]=$(median "${writes[@]}")
    READ[$sys]=$(median "${reads[@]}")
    CREATE[$sys]=$(median "${creates_s[@]}")
done

printf '\n%-8s %9s %10s %15s %14s\n' system O_DIRECT "write MB/s" "cold read MB/s" "creates s"
for sys in $SYSTEMS; do
    printf '%-8s %9s %10.0f %15.0f %14.3f\n' "$sys" "${DIRECT[$sys]:-?}" "${WRITE[$sys]}" "${READ[$sys]}" "${CREATE[$sys]}"
done
printf '%-8s %9s %9.2fx %14.2fx %13.2fx\n' "mmp/nommp" "" \
    "$(calc "${WRITE[mmp]} / ${WRITE[nommp]}")" \
    "$(calc "${READ[mmp]} / ${READ[nommp]}")" \
    "$(calc "${CREATE[mmp]} / ${CREATE[nommp]}")"
echo "(median of $REPEAT runs; ${SEQ_MIB} MiB written with fsync and read cold; $FILES creates + fsync;"
echo " MB = 10^6 bytes; write/read: higher is better; creates: seconds, lower is better; loop direct-io=$LOOP_DIO)"
