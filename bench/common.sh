# Sourced by the benchmark scripts first: the paths and helpers each of
# them needs (SOCK, where a script starts a broker, is the script's or
# use_work_dir's).

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root ($1)"; }

# The repository, the safemount binaries a run uses, and where it keeps
# its images, mounts and logs (a script may choose another directory).
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SAFEMOUNT_BIN:-$REPO/target/release}
WORK=${BENCH_DIR:-/var/tmp/safemount-bench}

# Checks that the safemount binaries were built into $BIN.
need_binaries() {
    local b
    for b in safemountd safemount safemount-worker; do
        [[ -x $BIN/$b ]] || die "$BIN/$b missing: run cargo build --release --workspace"
    done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

BROKER_PID=

# Starts a broker on $SOCK (once), its log in $1.
start_broker() {
    [[ -n $BROKER_PID ]] && return
    rm -f "$SOCK"
    "$BIN/safemountd" --socket "$SOCK" --worker "$BIN/safemount-worker" 2>"$1" &
    BROKER_PID=$!
    local _
    for _ in $(seq 100); do [[ -S $SOCK ]] && return; sleep 0.1; done
    die "safemountd did not start; see $1"
}

stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
}

# Sets the paths a benchmark works with under $WORK (made), named after
# $1: MNT (a mount point), SOCK (its broker's socket), PRISTINE (the empty
# image kept from run to run) and IMG (the copy a run mounts). At exit the
# mount goes, `cleanup_more` runs if the script defines one, the broker
# stops and IMG is removed.
use_work_dir() {
    mkdir -p "$WORK"
    MNT=$WORK/$1-mnt
    mkdir -p "$MNT"
    SOCK=$WORK/safemountd-$1.sock
    PRISTINE=$WORK/$1-empty.img
    IMG=$WORK/$1.img
    trap cleanup_work EXIT
}

cleanup_work() {
    if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    if declare -F cleanup_more >/dev/null; then cleanup_more; fi
    stop_broker
    rm -f "$IMG"
}

# Makes $1, an empty ext4 image of size $2 (truncate's syntax) with mkfs
# options $3..., unless it exists.
make_empty_image() {
    local img=$1 size=$2
    shift 2
    [[ -f $img ]] && return
    truncate -s "$size" "$img"
    mkfs.ext4 -q -F "$@" "$img"
}

# Mounts $2 (an image file or a block device) on $MNT as system $1
# (kernel, fuse2fs, or safemount*: through a broker on $SOCK, started once,
# its log beside the socket), read-only or read-write as $3 (ro or rw).
mount_system() {
    local sys=$1 source=$2 mode=$3 opts
    case $sys in
        kernel)
            opts=$mode
            [[ -f $source ]] && opts+=,loop
            [[ $mode == ro ]] && opts+=,noload  # no journal replay
            mount -t ext4 -o "$opts" "$source" "$MNT"
            ;;
        fuse2fs) fuse2fs -o "$mode,fakeroot" "$source" "$MNT" >/dev/null ;;
        safemount*)
            start_broker "${SOCK%.sock}.log"
            "$BIN/safemount" --socket "$SOCK" mount "$source" "$MNT" -o "$mode" >/dev/null
            ;;
        *) die "unknown system $sys" ;;
    esac
}

# Unmounts $MNT, mounted by mount_system as system $1, and waits until the
# mount is gone (a FUSE daemon lets go of the image after umount returns).
unmount_system() {
    case $1 in
        safemount*) "$BIN/safemount" --socket "$SOCK" unmount "$MNT" ;;
        *) umount "$MNT" ;;
    esac
    local _
    for _ in $(seq 100); do mountpoint -q "$MNT" || break; sleep 0.1; done
}

# Creates (open O_CREAT|O_EXCL, close), lstat()s and unlinks $2 files,
# split over $3 processes, each in a directory of its own under $1 (made
# and removed); prints the seconds the three steps took.
meta_cycle() {
    python3 - "$@" <<'EOF'
import os, sys, time
root, n, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root, exist_ok=True)
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
        sys.exit("a process of the cycle failed")
print("%.6f" % (time.perf_counter() - start))
for d in dirs:
    os.rmdir(d)
EOF
}

# The pid of the worker serving mount point $1 (broker on $SOCK).
worker_pid() {
    "$BIN/safemount" --socket "$SOCK" list --json |
        python3 -c 'import json,sys; print([e["worker_pid"] for e in json.load(sys.stdin) if e["mountpoint"] == sys.argv[1]][0])' "$1"
}

# The peak RSS (VmHWM) in MiB of the worker serving mount point $1, or "-"
# when $1 is not a safemount mount.
worker_peak_mib() {
    local pid
    pid=$(worker_pid "$1" 2>/dev/null) || { echo -; return; }
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' /proc/"$pid"/status
}
