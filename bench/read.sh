#!/usr/bin/env bash
# Read benchmark: safemount vs fuse2fs vs the kernel's ext4, on one 4 GiB
# image holding a 1 GiB file of random data and 10,000 small files.
#
#   (a) cold sequential read of the 1 GiB file (caches dropped first)
#   (b) lstat of the 10,000 small files: cold (caches dropped, fresh
#       mount) and warm (the same walk again)
#   (c) a names-only walk of them, cold: `find -name` reads the listings
#       and stats nothing
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts, drop_caches"

IMG=$WORK/bench.img
SMALL_FILES=${SMALL_FILES:-10000}
SYSTEMS=${SYSTEMS:-"kernel fuse2fs safemount"}
REPEAT=${REPEAT:-3}
REBUILD=0
[[ ${1:-} == --rebuild ]] && REBUILD=1

need_binaries
command -v fuse2fs >/dev/null || die "fuse2fs missing: apt-get install -y fuse2fs"

mkdir -p "$WORK"
MNT=$WORK/mnt
mkdir -p "$MNT"
SOCK=$WORK/safemountd.sock

cleanup() {
    if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    stop_broker
}
trap cleanup EXIT

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

build_image() {
    echo "building $IMG (4 GiB: 1 GiB random file + $SMALL_FILES small files)..." >&2
    rm -f "$IMG"
    truncate -s 4G "$IMG"
    mkfs.ext4 -q -F "$IMG"
    mount -o loop "$IMG" "$MNT"
    dd if=/dev/urandom of="$MNT/big.bin" bs=1M count=1024 status=none
    python3 - "$MNT/small" "$SMALL_FILES" <<'EOF'
import os, sys, random
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
blob = os.urandom(16384)
for i in range(n):
    d = os.path.join(root, "d%02d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    size = rnd.randint(0, 12000)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(blob[:size])
EOF
    umount "$MNT"
    e2fsck -fn "$IMG" >/dev/null 2>&1 || die "fresh benchmark image is not clean"
}

if [[ $REBUILD -eq 1 || ! -f $IMG ]]; then build_image; fi

# A fresh mount of system $1 with every cache dropped first.
cold_mount() { drop_caches; mount_system "$1" "$IMG" ro; }

stat_walk() { find "$MNT/small" -type f -printf '%s %T@\n' | wc -l; }
names_walk() { find "$MNT/small" -name 'f*' | wc -l; }

declare -A READ COLD WARM NAMES
for sys in $SYSTEMS; do
    echo "== $sys" >&2
    reads=() colds=() warms=() names=()
    for run in $(seq "$REPEAT"); do
        cold_mount "$sys"
        t0=$(now)
        dd if="$MNT/big.bin" of=/dev/null bs=1M status=none
        t1=$(now)
        reads+=("$(calc "1073741824 / 1000000 / $(elapsed "$t0" "$t1")")")
        [[ $sys == safemount ]] && rss_read=$(worker_peak_mib "$MNT")
        unmount_system "$sys"

        cold_mount "$sys"
        t0=$(now); n=$(stat_walk); t1=$(now)
        [[ $n -eq $SMALL_FILES ]] || die "$sys: walked $n files, expected $SMALL_FILES"
        colds+=("$(elapsed "$t0" "$t1")")
        t0=$(now); stat_walk >/dev/null; t1=$(now)
        warms+=("$(elapsed "$t0" "$t1")")
        rss="-"
        [[ $sys == safemount ]] && rss="read $rss_read, stat $(worker_peak_mib "$MNT") MiB"
        unmount_system "$sys"

        cold_mount "$sys"
        t0=$(now); n=$(names_walk); t1=$(now)
        [[ $n -eq $SMALL_FILES ]] || die "$sys: found $n names, expected $SMALL_FILES"
        names+=("$(elapsed "$t0" "$t1")")
        unmount_system "$sys"
        printf '   run %d: read %.0f MB/s, stat cold %.3f s, warm %.3f s, names cold %.3f s, worker peak RSS %s\n' "$run" \
            "${reads[-1]}" "${colds[-1]}" "${warms[-1]}" "${names[-1]}" "$rss" >&2
    done
    READ[$sys]=$(median "${reads[@]}")
    COLD[$sys]=$(median "${colds[@]}")
    WARM[$sys]=$(median "${warms[@]}")
    NAMES[$sys]=$(median "${names[@]}")
done

ref=kernel
[[ -n ${READ[$ref]:-} ]] || ref=$(echo "$SYSTEMS" | awk '{print $1}')
printf '\n%-10s %10s %12s %12s %13s %12s %12s %12s %12s\n' system "read MB/s" "stat cold s" "stat warm s" "names cold s" \
    "read vs $ref" "cold vs $ref" "warm vs $ref" "names vs $ref"
for sys in $SYSTEMS; do
    printf '%-10s %10.0f %12.3f %12.3f %13.3f %11.2fx %11.2fx %11.2fx %11.2fx\n' "$sys" "${READ[$sys]}" "${COLD[$sys]}" \
        "${WARM[$sys]}" "${NAMES[$sys]}" \
        "$(calc "${READ[$sys]} / ${READ[$ref]}")" \
        "$(calc "${COLD[$sys]} / ${COLD[$ref]}")" \
        "$(calc "${WARM[$sys]} / ${WARM[$ref]}")" \
        "$(calc "${NAMES[$sys]} / ${NAMES[$ref]}")"
done
echo "(median of $REPEAT runs; read: higher is better; stat: seconds, lower is better; ratios: system / $ref)"
