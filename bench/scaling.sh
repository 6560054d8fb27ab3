#!/usr/bin/env bash
# Metadata scaling: FILES files created (open O_CREAT + close), lstat()ed
# and unlinked by one process in one directory, then by four processes in
# four directories (FILES / 4 each), on a fresh mount of a fresh copy of
# an empty image each time; safemount and the kernel's ext4 side by side.
# Prints each system's time for one and for four processes and how much
# faster four are (issue 11's goal: safemount's four >= 1.5x faster than
# its one, and its speed-up >= 0.8x the kernel's).
#
#   sudo REPEAT=3 bench/scaling.sh          (FILES=3000)
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"

FILES=${FILES:-3000}
SYSTEMS=${SYSTEMS:-"kernel safemount"}
REPEAT=${REPEAT:-3}

need_binaries
use_work_dir scaling
make_empty_image "$PRISTINE" 4G

declare -A ONE FOUR
for sys in $SYSTEMS; do
    echo "== $sys" >&2
    ones=() fours=()
    for run in $(seq "$REPEAT"); do
        for procs in 1 4; do
            cp --sparse=always "$PRISTINE" "$IMG"
            mount_system "$sys" "$IMG" rw
            secs=$(meta_cycle "$MNT" "$FILES" "$procs")
            if [[ $procs -eq 1 ]]; then ones+=("$secs"); else fours+=("$secs"); fi
            rss=$(worker_peak_mib "$MNT")
            unmount_system "$sys"
        done
        printf '   run %d: one process %.3f s, four %.3f s, worker peak RSS %s MiB\n' "$run" "${ones[-1]}" "${fours[-1]}" "$rss" >&2
    done
    ONE[$sys]=$(median "${ones[@]}")
    FOUR[$sys]=$(median "${fours[@]}")
done

printf '\n%-10s %10s %10s %12s\n' system "one, s" "four, s" "four faster"
for sys in $SYSTEMS; do
    printf '%-10s %10.3f %10.3f %11.2fx\n' "$sys" "${ONE[$sys]}" "${FOUR[$sys]}" "$(calc "${ONE[$sys]} / ${FOUR[$sys]}")"
done
echo "(median of $REPEAT runs; $FILES files in all, create + lstat + unlink)"
