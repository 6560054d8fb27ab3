#!/usr/bin/env bash
# Write benchmark: safemount (rw) vs fuse2fs vs the kernel's ext4, each on
# a fresh copy of the same empty 4 GiB image (mkfs.ext4 defaults):
#
#   (a) sequential write of 1 GiB with fsync (dd bs=1M conv=fsync)
#   (b) create + lstat + unlink of 10,000 files in one directory (one
#       process, then syncfs)
#   (c) unpacking a tarball of a real source tree (/usr/include) and
#       removing it again, each followed by sync
#   (d) 1,000 x (4 KiB write at the end of a file + fsync): latency of
#       each, median and 99th percentile
#
# Systems: kernel, fuse2fs, safemount (journaled, the default mkfs), and
# safemount-nojournal (the same image made with -O ^has_journal: what the
# journal costs).
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"

FILES=${FILES:-10000}
SEQ_MIB=${SEQ_MIB:-1024}
TREE=${TREE:-/usr/include}
SYSTEMS=${SYSTEMS:-"kernel fuse2fs safemount safemount-nojournal"}
FSYNCS=${FSYNCS:-1000}
REPEAT=${REPEAT:-3}

need_binaries
command -v fuse2fs >/dev/null || die "fuse2fs missing: apt-get install -y fuse2fs"
[[ -d $TREE ]] || die "$TREE missing: set TREE to a source tree"

use_work_dir write
PRISTINE_NJ=$WORK/write-empty-nojournal.img
TAR=$WORK/tree.tar

# Durability point before the clock stops: sync, then fsync of the mount's
# root directory (`sync FILE` fsyncs FILE). syncfs(2) does not reach a FUSE
# server (the kernel sends FUSE_SYNCFS to virtiofs only), and safemount
# keeps committed metadata in memory until fsync/fsyncdir, its 5 s flusher
# or unmount; fuse2fs likewise flushes its cache on fsync. On the kernel
# the fsync after sync costs next to nothing.
syncfs() { sync; sync "$MNT"; }

make_empty_image "$PRISTINE" 4G
make_empty_image "$PRISTINE_NJ" 4G -O ^has_journal
if [[ ! -f $TAR ]]; then
    echo "making $TAR from $TREE..." >&2
    tar -cf "$TAR" -C "$(dirname "$TREE")" "$(basename "$TREE")"
fi
TAR_FILES=$(tar -tf "$TAR" | wc -l)

do_mount() {
    case $1 in
        safemount-nojournal) cp --sparse=always "$PRISTINE_NJ" "$IMG" ;;
        *) cp --sparse=always "$PRISTINE" "$IMG" ;;
    esac
    mount_system "$1" "$IMG" rw
}

do_unmount() {
    unmount_system "$1"
    # Every system must leave a clean filesystem.
    e2fsck -fn "$IMG" >/dev/null 2>&1 || echo "   WARNING: $1 left $IMG not clean (e2fsck -fn)" >&2
}

meta() { meta_cycle "$MNT/meta" "$FILES" 1 >/dev/null; }

# Prints "median p99" in milliseconds of FSYNCS x (4 KiB append + fsync).
fsync_latency() {
    python3 - "$MNT/fsync.bin" "$FSYNCS" <<'EOF'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
block = os.urandom(4096)
times = []
for _ in range(n):
    t = time.perf_counter()
    os.write(fd, block)
    os.fsync(fd)
    times.append((time.perf_counter() - t) * 1000)
os.close(fd)
os.unlink(path)
times.sort()
print("%.3f %.3f" % (times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]))
EOF
}

declare -A SEQ META UNTAR RM FS50 FS99
for sys in $SYSTEMS; do
    echo "== $sys" >&2
    seqs=() metas=() untars=() rms=() f50s=() f99s=()
    for run in $(seq "$REPEAT"); do
        do_mount "$sys"
        t0=$(now)
        dd if=/dev/zero of="$MNT/big.bin" bs=1M count="$SEQ_MIB" conv=fsync status=none
        t1=$(now)
        seqs+=("$(calc "$SEQ_MIB * 1048576 / 1000000 / $(elapsed "$t0" "$t1")")")
        rm -f "$MNT/big.bin"; syncfs

        t0=$(now); meta; syncfs; t1=$(now)
        metas+=("$(elapsed "$t0" "$t1")")

        mkdir "$MNT/tree"
        t0=$(now); tar -xf "$TAR" -C "$MNT/tree"; syncfs; t1=$(now)
        untars+=("$(elapsed "$t0" "$t1")")
        n=$(find "$MNT/tree" | wc -l)
        [[ $n -eq $((TAR_FILES + 1)) ]] || echo "   WARNING: $sys: $n entries after untar, tar has $TAR_FILES" >&2
        t0=$(now); rm -rf "$MNT/tree"; syncfs; t1=$(now)
        rms+=("$(elapsed "$t0" "$t1")")
        read -r f50 f99 < <(fsync_latency)
        f50s+=("$f50"); f99s+=("$f99")
        rss="-"
        [[ $sys == safemount* ]] && rss="$(worker_peak_mib "$MNT") MiB"
        do_unmount "$sys"
        printf '   run %d: write %.0f MB/s, meta %.3f s, untar %.3f s, rm %.3f s, fsync %.3f/%.3f ms, worker peak RSS %s\n' "$run" \
            "${seqs[-1]}" "${metas[-1]}" "${untars[-1]}" "${rms[-1]}" "$f50" "$f99" "$rss" >&2
    done
    FS50[$sys]=$(median "${f50s[@]}")
    FS99[$sys]=$(median "${f99s[@]}")
    SEQ[$sys]=$(median "${seqs[@]}")
    META[$sys]=$(median "${metas[@]}")
    UNTAR[$sys]=$(median "${untars[@]}")
    RM[$sys]=$(median "${rms[@]}")
done

ratio() { # $1 table, $2 sys, $3 ref: "-" when ref not measured
    local -n t=$1
    [[ -n ${t[$3]:-} ]] || { echo "-"; return; }
    printf '%.2fx' "$(calc "${t[$2]} / ${t[$3]}")"
}

printf '\n%-20s %10s %10s %10s %10s %12s %12s\n' system "write MB/s" "meta s" "untar s" "rm s" "fsync p50 ms" "fsync p99 ms"
for sys in $SYSTEMS; do
    printf '%-20s %10.0f %10.3f %10.3f %10.3f %12.3f %12.3f\n' "$sys" "${SEQ[$sys]}" "${META[$sys]}" "${UNTAR[$sys]}" "${RM[$sys]}" \
        "${FS50[$sys]}" "${FS99[$sys]}"
done
for ref in kernel fuse2fs safemount-nojournal; do
    [[ " $SYSTEMS " == *" $ref "* ]] || continue
    printf '\nratios system / %s (write: higher is better; times: lower is better)\n' "$ref"
    printf '%-20s %10s %10s %10s %10s %12s\n' system write meta untar rm "fsync p50"
    for sys in $SYSTEMS; do
        printf '%-20s %10s %10s %10s %10s %12s\n' "$sys" "$(ratio SEQ "$sys" "$ref")" "$(ratio META "$sys" "$ref")" \
            "$(ratio UNTAR "$sys" "$ref")" "$(ratio RM "$sys" "$ref")" "$(ratio FS50 "$sys" "$ref")"
    done
done
echo "(median of $REPEAT runs; $FILES files for meta; $TAR_FILES entries in the tarball of $TREE)"
