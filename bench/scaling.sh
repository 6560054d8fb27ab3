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

# Seconds for create + lstat + unlink of FILES files by $1 processes.
cycle() {
    python3 - "$MNT" "$FILES" "$1" <<'EOF'
import os, sys, time
root, n, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dirs = [os.path.join(root, "p%d" % p) for p in range(procs)]
for d in dirs:
    os.mkdir(d)
start = time.perf_counter()
pids = []
for d in dirs:
    pid = os.fork()
    if pid == 0:
        names = [os.path.join(d, "f%06d" % i) for i in range(n // procs)]
        for p in names:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        for p in names:
            os.lstat(p)
        for p in names:
            os.unlink(p)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit("a worker process failed")
print("%.6f" % (time.perf_counter() - start))
EOF
}

declare -A ONE FOUR
for sys in $SYSTEMS; do
    echo "== $sys" >&2
    ones=() fours=()
    for run in $(seq "$REPEAT"); do
        for procs in 1 4; do
            cp --sparse=always "$PRISTINE" "$IMG"
            mount_system "$sys" "$IMG" rw
            secs=$(cycle "$procs")
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
