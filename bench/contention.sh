#!/usr/bin/env bash
# Metadata latency while a large write runs on the same mount: what a
# desktop user feels when a file manager lists or creates files on a disk
# that is taking a big copy. One process writes BIG_MIB MiB (dd, then
# fsync); meanwhile another creates, lstat()s and unlinks files in a loop
# and times each operation; the table shows the median, 99th percentile
# and worst of those times, and how many operations fit in the write.
#
#   sudo bench/contention.sh          (BIG_MIB=2048, SYSTEMS="kernel safemount")
#
# WRITERS=N runs N such writes at once, to N files (BIG_MIB each).
#
# A disk slower than the host's page cache: SLOW_MBPS=20 puts safemount on
# a loop block device of an MMP filesystem (so the worker writes with
# O_DIRECT and waits for the device, as on a USB stick once the page cache
# is full) and throttles the worker's writes to that many MB/s (cgroup v1
# blkio; the mount first waits 11 s for MMP). Only safemount runs then.
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"

BIG_MIB=${BIG_MIB:-2048}
WRITERS=${WRITERS:-1}
SYSTEMS=${SYSTEMS:-"kernel safemount"}
SLOW_MBPS=${SLOW_MBPS:-}
[[ -z $SLOW_MBPS ]] || SYSTEMS=safemount
LOOP=
CGROUP=/sys/fs/cgroup/blkio/safemount-bench

need_binaries
use_work_dir contention
cleanup_more() {
    if [[ -n $LOOP ]]; then losetup -d "$LOOP" 2>/dev/null || true; fi
    rmdir "$CGROUP" 2>/dev/null || true
}

if [[ -n $SLOW_MBPS ]]; then
    PRISTINE=$WORK/contention-mmp.img
    [[ -d /sys/fs/cgroup/blkio ]] || die "SLOW_MBPS needs the cgroup v1 blkio controller"
fi
if [[ -n $SLOW_MBPS ]]; then make_empty_image "$PRISTINE" 8G -O mmp; else make_empty_image "$PRISTINE" 8G; fi

# Moves every thread of the worker serving $MNT into a blkio cgroup that
# lets it write $SLOW_MBPS MB/s to the loop device.
throttle_worker() {
    local pid t
    pid=$(worker_pid "$MNT")
    mkdir -p "$CGROUP"
    echo "$(stat -c '%Hr:%Lr' "$LOOP") $((SLOW_MBPS * 1000000))" >"$CGROUP/blkio.throttle.write_bps_device"
    for t in /proc/"$pid"/task/*; do echo "${t##*/}" >"$CGROUP/tasks"; done
}

# Times create+close, lstat and unlink of one file at a time while the
# writer (pid $1) lives; prints "ops p50 p99 max" in microseconds.
metadata_loop() {
    python3 - "$MNT/meta" "$1" <<'EOF'
import os, sys, time
d, writer = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
lat = []
i = 0
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
while alive(writer):
    p = os.path.join(d, "f%d" % i)
    t = time.perf_counter()
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.lstat(p)
    os.unlink(p)
    lat.append((time.perf_counter() - t) * 1e6)
    i += 1
lat.sort()
if not lat:
    print("0 - - -")
else:
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
    print("%d %.0f %.0f %.0f" % (len(lat), q(0.5), q(0.99), lat[-1]))
EOF
}

run_one() { # $1 system
    cp --sparse=always "$PRISTINE" "$IMG"
    local source=$IMG
    if [[ $1 == safemount && -n $SLOW_MBPS ]]; then
        LOOP=$(losetup -f --show --direct-io=on "$IMG")
        source=$LOOP
    fi
    mount_system "$1" "$source" rw
    [[ $1 != safemount || -z $SLOW_MBPS ]] || throttle_worker
    (
        for w in $(seq "$WRITERS"); do
            dd if=/dev/zero of="$MNT/big$w" bs=1M count="$BIG_MIB" conv=fsync status=none &
        done
        wait
    ) &
    local writer=$! start
    start=$(now)
    local stats
    stats=$(metadata_loop "$writer")
    wait "$writer"
    local secs
    secs=$(elapsed "$start" "$(now)")
    unmount_system "$1"
    if [[ -n $LOOP ]]; then losetup -d "$LOOP"; LOOP=; fi
    read -r ops p50 p99 max <<<"$stats"
    printf '%-10s %8s %8.1f %9s %9s %9s %10s\n' "$1" "$((BIG_MIB * WRITERS))" "$(calc "$BIG_MIB * $WRITERS / $secs")" "$ops" "$p50" "$p99" "$max"
}

printf '%-10s %8s %8s %9s %9s %9s %10s\n' system "MiB" "MiB/s" "meta ops" "p50 us" "p99 us" "max us"
for s in $SYSTEMS; do
    run_one "$s"
done
