#!/usr/bin/env bash
# fsstress benchmark: xfstests' fsstress (a random mix of some fifty file
# operations: creates, writes, renames, links, truncates, fallocate,
# xattrs, directory reads, fsyncs...) on safemount (rw) vs fuse2fs vs the
# kernel's ext4, each on a fresh copy of the same empty 4 GiB image.
#
# For each number of processes in PROCS (default "1 4"): `fsstress -d DIR
# -n NOPS -p P -s SEED` (the same seed, so every system gets the same
# operations), then sync and an fsync of the mount's root (the durability
# point of write.sh); timed end to end. After the unmount, `e2fsck -fn`
# must find the image clean.
#
# fsstress is not packaged by Debian and this repository neither carries
# nor builds it: give its path as $FSSTRESS (bench/README.md says how to
# build it from xfstests).
#
#   sudo FSSTRESS=/path/to/xfstests/ltp/fsstress REPEAT=3 bench/fsstress.sh
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"

FSSTRESS=${FSSTRESS:-}
NOPS=${NOPS:-10000}
PROCS=${PROCS:-"1 4"}
SEED=${SEED:-1}
FSSTRESS_ARGS=${FSSTRESS_ARGS:-}  # more fsstress options, e.g. "-f fsync=0"
SYSTEMS=${SYSTEMS:-"kernel fuse2fs safemount"}
REPEAT=${REPEAT:-3}

need_binaries
[[ -x $FSSTRESS ]] || die "set FSSTRESS to xfstests' fsstress binary (see bench/README.md)"
command -v fuse2fs >/dev/null || die "fuse2fs missing: apt-get install -y fuse2fs"

use_work_dir fsstress
make_empty_image "$PRISTINE" 4G

# One fsstress run with $2 processes on system $1: sets RUN_SECS and
# RUN_RSS (the worker's peak RSS in MiB, or "-"). Not in a subshell: the
# broker it may start must outlive it.
one_run() {
    local sys=$1 procs=$2 t0 t1
    cp --sparse=always "$PRISTINE" "$IMG"
    mount_system "$sys" "$IMG" rw
    mkdir "$MNT/fss"
    t0=$(now)
    # A failed operation (EOPNOTSUPP for reflinks, say) is fsstress's
    # normal; only its own exit status counts.
    # shellcheck disable=SC2086 # FSSTRESS_ARGS is a list of options
    "$FSSTRESS" -d "$MNT/fss" -n "$NOPS" -p "$procs" -s "$SEED" $FSSTRESS_ARGS >/dev/null
    sync
    sync "$MNT"
    t1=$(now)
    RUN_RSS=$(worker_peak_mib "$MNT")
    unmount_system "$sys"
    e2fsck -fn "$IMG" >/dev/null 2>&1 || echo "   WARNING: $sys left $IMG not clean (e2fsck -fn)" >&2
    RUN_SECS=$(elapsed "$t0" "$t1")
}

declare -A SECS
for procs in $PROCS; do
    for sys in $SYSTEMS; do
        echo "== $sys, -p $procs" >&2
        runs=()
        for run in $(seq "$REPEAT"); do
            one_run "$sys" "$procs"
            runs+=("$RUN_SECS")
            printf '   run %d: %.3f s, worker peak RSS %s MiB\n' "$run" "$RUN_SECS" "$RUN_RSS" >&2
        done
        SECS[$sys,$procs]=$(median "${runs[@]}")
    done
done

ref=kernel
[[ " $SYSTEMS " == *" kernel "* ]] || ref=$(echo "$SYSTEMS" | awk '{print $1}')
printf '\n%-10s %6s %10s %10s\n' system procs seconds "vs $ref"
for procs in $PROCS; do
    for sys in $SYSTEMS; do
        printf '%-10s %6s %10.3f %9.2fx\n' "$sys" "$procs" "${SECS[$sys,$procs]}" \
            "$(calc "${SECS[$sys,$procs]} / ${SECS[$ref,$procs]}")"
    done
done
echo "(median of $REPEAT runs; fsstress -n $NOPS -s $SEED $FSSTRESS_ARGS per process count; seconds: lower is better)"
