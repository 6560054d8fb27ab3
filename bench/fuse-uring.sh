#!/usr/bin/env bash
# FUSE over io_uring: what the transport would gain, measured with libfuse's
# own passthrough_hp example server (not with safemount: fuser 0.18 has no
# io_uring transport). Three modes on the same backing directory:
#
#   plain   the backing directory itself, no FUSE (the reference)
#   legacy  passthrough_hp, requests read(2) from /dev/fuse, replies writev(2)
#   uring   passthrough_hp -o io_uring, requests and replies through
#           IORING_OP_URING_CMD on /dev/fuse (kernel: fs/fuse/dev_uring.c)
#
# passthrough_hp runs with --nopassthrough --nosplice, so every read and
# write goes through the transport as safemount's would (FUSE passthrough
# would let the kernel skip the server for data; fuser does not splice).
# The legacy server gets --num-threads 4 (safemount's worker had 4 when this
# was measured; it now has one per CPU, 2 to 8); the
# io_uring one has libfuse's fixed layout of one queue (one thread) per CPU.
#
# Workloads (each mode on a fresh FUSE mount, the modes alternated inside
# every repeat and their order rotated from one repeat to the next, so a
# background load hits all of them alike):
#   meta1   one process: create (open O_CREAT + close), lstat, unlink of
#           FILES files, each phase timed: µs per operation
#   meta4   the same FILES split over 4 processes in 4 directories: wall
#           time per file (create + lstat + unlink), all processes together
#   stat    lstat of FILES existing files by name (no readdir, so every
#           cold one is a LOOKUP): cold (caches dropped, fresh mount) and
#           warm (the same again): µs per file
#   write   dd if=/dev/zero bs=1M count=SIZE_MIB conv=fsync: MB/s
#   read    dd of=/dev/null bs=1M of that file, caches dropped first: MB/s
#
# Needs passthrough_hp from libfuse >= 3.18 built with io_uring support
# (liburing present at build time; libfuse's own build documentation says
# how), given as $PASSTHROUGH_HP: Debian 12's libfuse 3.14 has no io_uring,
# and this repository neither carries nor builds libfuse. The kernel needs
# CONFIG_FUSE_IO_URING; the script sets /sys/module/fuse/parameters/
# enable_uring to Y for the run and puts the old value back at exit.
#
#   apt-get install -y strace          # for the verification (VERIFY=1)
#   sudo PASSTHROUGH_HP=/path/to/example/passthrough_hp bench/fuse-uring.sh
#
# How the io_uring runs are checked: every uring mount must log libfuse's
# FUSE_INIT status "io_uring=on" (FUSE_INIT_STATUS=1) and hold io_uring fds
# with /dev/fuse registered (/proc/PID/fdinfo), else the script stops; the
# SQEs those rings took per workload (fdinfo SqHead) go to verify.log; with
# VERIFY=1, strace -c of each server during a short create/lstat/unlink run
# shows read+writev on /dev/fuse (legacy) against io_uring_enter (uring).
#
# Environment: PASSTHROUGH_HP, BENCH_DIR (default /var/tmp/safemount-bench/
# fuse-uring), BACKING (tmpfs, the default, or ext4: a loop-mounted 4 GiB
# image in BENCH_DIR), MODES (default "plain legacy uring"), REPEAT
# (default 3), FILES (default 10000), SIZE_MIB (default 1024),
# LEGACY_THREADS (passthrough_hp --num-threads for legacy, default 4),
# LEGACY_OPTS (more passthrough_hp options for legacy, e.g. --clone-fd),
# URING_DEPTH (-o io_uring_q_depth, default 8 as libfuse's), VERIFY (default
# 1). See bench/README.md ("FUSE over io_uring").
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts, drop_caches, the fuse module parameter"

WORK=${BENCH_DIR:-/var/tmp/safemount-bench/fuse-uring}
BACKING=${BACKING:-tmpfs}
MODES=${MODES:-"plain legacy uring"}
REPEAT=${REPEAT:-3}
FILES=${FILES:-10000}
SIZE_MIB=${SIZE_MIB:-1024}
VERIFY=${VERIFY:-1}
LEGACY_THREADS=${LEGACY_THREADS:-4}
LEGACY_OPTS=${LEGACY_OPTS:-}
URING_DEPTH=${URING_DEPTH:-8}
PARAM=/sys/module/fuse/parameters/enable_uring
mkdir -p "$WORK"

[[ -e $PARAM ]] || die "$PARAM missing: this kernel has no CONFIG_FUSE_IO_URING"
command -v python3 >/dev/null || die "python3 missing"
(( FILES % 4 == 0 )) || die "FILES must be a multiple of 4"

# --- the server ------------------------------------------------------------
HP=${PASSTHROUGH_HP:-}
[[ -n $HP && -x $HP ]] || die "set PASSTHROUGH_HP to passthrough_hp of libfuse >= 3.18 (see the header)"
[[ $("$HP" --help 2>&1 || true) == *io_uring* ]] || die "$HP knows no -o io_uring: libfuse older than 3.18?"

# --- scratch ---------------------------------------------------------------
BACK=$WORK/backing
MNT=$WORK/mnt
mkdir -p "$BACK" "$MNT"
OLD_PARAM=$(cat "$PARAM")
HP_PID=
LOOPIMG=$WORK/backing.img

cleanup() {
    echo "$OLD_PARAM" > "$PARAM" || true
    if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    if [[ -n $HP_PID ]]; then wait "$HP_PID" 2>/dev/null || true; fi
    if mountpoint -q "$BACK"; then umount "$BACK" || true; fi
    if [[ $BACKING == ext4 ]]; then rm -f "$LOOPIMG"; fi
}
trap cleanup EXIT

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

case $BACKING in
    tmpfs) mount -t tmpfs -o size=$(( SIZE_MIB * 3 + 512 ))m bench-backing "$BACK" ;;
    ext4)
        rm -f "$LOOPIMG"; truncate -s 4G "$LOOPIMG"; mkfs.ext4 -q -F "$LOOPIMG"
        mount -o loop "$LOOPIMG" "$BACK" ;;
    *) die "BACKING must be tmpfs or ext4" ;;
esac
echo Y > "$PARAM"

# The workloads, one Python file: `wl.py CMD DIR ...` prints its figures.
WL=$WORK/wl.py
cat > "$WL" <<'EOF'
import os, sys, time
from multiprocessing import Barrier, Process

def names(d, n):
    return [os.path.join(d, "f%06d" % i) for i in range(n)]

def cycle(d, n):
    ps = names(d, n)
    t0 = time.perf_counter()
    for p in ps:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    t1 = time.perf_counter()
    for p in ps:
        os.lstat(p)
    t2 = time.perf_counter()
    for p in ps:
        os.unlink(p)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2

def child(d, n, barrier):
    barrier.wait()
    cycle(d, n)

cmd, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if cmd == "meta1":
    os.makedirs(d)
    c, s, u = cycle(d, n)
    os.rmdir(d)
    print("%.3f %.3f %.3f" % (c / n * 1e6, s / n * 1e6, u / n * 1e6))
elif cmd == "meta4":
    per = n // 4
    dirs = [os.path.join(d, "p%d" % i) for i in range(4)]
    for x in dirs:
        os.makedirs(x)
    barrier = Barrier(5)
    procs = [Process(target=child, args=(x, per, barrier)) for x in dirs]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    t1 = time.perf_counter()
    if any(p.exitcode for p in procs):
        sys.exit("a meta4 process failed")
    for x in dirs:
        os.rmdir(x)
    os.rmdir(d)
    print("%.3f" % ((t1 - t0) / n * 1e6))
elif cmd == "mkfiles":
    os.makedirs(d)
    for p in names(d, n):
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
elif cmd == "stat":
    ps = names(d, n)
    out = []
    for _ in range(2):
        t0 = time.perf_counter()
        for p in ps:
            os.lstat(p)
        out.append((time.perf_counter() - t0) / n * 1e6)
    print("%.3f %.3f" % tuple(out))
EOF

python3 "$WL" mkfiles "$BACK/src/stat" "$FILES"

# --- mounting --------------------------------------------------------------
# Where a mode's workload runs: the backing directory itself or the mount.
root_of() { [[ $1 == plain ]] && echo "$BACK/src" || echo "$MNT"; }

VLOG=$WORK/verify.log
: > "$VLOG"

# Mounts passthrough_hp for mode $1 (nothing for plain) and checks that the
# transport is the one asked for: libfuse's FUSE_INIT status line and, for
# io_uring, io_uring fds that have /dev/fuse registered.
mount_mode() {
    local mode=$1 opts=()
    [[ $mode == plain ]] && return
    case $mode in
        # shellcheck disable=SC2206 # LEGACY_OPTS is split on purpose
        legacy) opts=(--num-threads "$LEGACY_THREADS" $LEGACY_OPTS) ;;
        uring) opts=(-o io_uring -o io_uring_q_depth="$URING_DEPTH") ;;
        *) die "unknown mode $mode" ;;
    esac
    FUSE_INIT_STATUS=1 "$HP" --foreground --nopassthrough --nosplice "${opts[@]}" \
        "$BACK/src" "$MNT" >"$WORK/hp.log" 2>&1 &
    HP_PID=$!
    local _
    for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.05; done
    mountpoint -q "$MNT" || { cat "$WORK/hp.log" >&2; die "passthrough_hp ($mode) did not mount"; }
    stat "$MNT/stat" >/dev/null   # FUSE_INIT done and answered
    local status rings
    status=$(grep -o 'io_uring=[a-z_:A-Za-z ]*' "$WORK/hp.log" || true)
    rings=$(uring_fds "$HP_PID" | wc -l)
    case $mode in
        legacy) [[ $status == io_uring=off* && $rings -eq 0 ]] || die "legacy: $status, $rings io_uring fds" ;;
        uring) [[ $status == io_uring=on && $rings -gt 0 ]] || { cat "$WORK/hp.log" >&2; die "uring: '$status', $rings io_uring fds"; } ;;
    esac
}

# The io_uring fds of pid $1 that have /dev/fuse registered.
uring_fds() {
    local f
    for f in /proc/"$1"/fd/*; do
        [[ $(readlink "$f" 2>/dev/null) == 'anon_inode:[io_uring]' ]] || continue
        grep -q '/dev/fuse' /proc/"$1"/fdinfo/"${f##*/}" && echo "${f##*/}"
    done
}

# SQEs the server has submitted so far (sum of SqHead over its rings).
sqes() {
    local fd n=0 h
    for fd in $(uring_fds "$1"); do
        h=$(awk '/^SqHead:/ { print $2 }' /proc/"$1"/fdinfo/"$fd")
        n=$(( n + h ))
    done
    echo $n
}

unmount_mode() {
    [[ $1 == plain ]] && return
    umount "$MNT"
    wait "$HP_PID" 2>/dev/null || true
    HP_PID=
}

# --- the runs --------------------------------------------------------------
declare -A R   # R[metric,mode] = space-separated values, one per repeat
add() { R[$1,$2]="${R[$1,$2]:-} $3"; }

# Runs workload $1 in mode $2, on a fresh mount.
run_one() {
    local wl=$1 mode=$2 root t0 t1 v s0
    root=$(root_of "$mode")
    case $wl in
        meta1|meta4)
            mount_mode "$mode"
            s0=$( [[ $mode == uring ]] && sqes "$HP_PID" || echo 0)
            v=$(python3 "$WL" "$wl" "$root/$wl-$mode" "$FILES")
            [[ $mode == uring ]] && echo "$wl uring: $(( $(sqes "$HP_PID") - s0 )) SQEs submitted by the server" >>"$VLOG"
            unmount_mode "$mode"
            if [[ $wl == meta1 ]]; then
                read -r c s u <<<"$v"
                add create "$mode" "$c"; add lstat "$mode" "$s"; add unlink "$mode" "$u"
                add cycle "$mode" "$(calc "$c + $s + $u")"
            else
                add meta4 "$mode" "$v"
            fi ;;
        stat)
            drop_caches
            mount_mode "$mode"
            v=$(python3 "$WL" stat "$root/stat" "$FILES")
            unmount_mode "$mode"
            read -r c w <<<"$v"
            add statcold "$mode" "$c"; add statwarm "$mode" "$w" ;;
        seq)
            mount_mode "$mode"
            t0=$(now)
            dd if=/dev/zero of="$root/big-$mode" bs=1M count="$SIZE_MIB" conv=fsync status=none
            t1=$(now)
            add write "$mode" "$(calc "$SIZE_MIB * 1048576 / 1000000 / $(elapsed "$t0" "$t1")")"
            unmount_mode "$mode"
            drop_caches
            mount_mode "$mode"
            s0=$( [[ $mode == uring ]] && sqes "$HP_PID" || echo 0)
            t0=$(now)
            dd if="$root/big-$mode" of=/dev/null bs=1M status=none
            t1=$(now)
            [[ $mode == uring ]] && echo "read uring: $(( $(sqes "$HP_PID") - s0 )) SQEs submitted by the server" >>"$VLOG"
            add read "$mode" "$(calc "$SIZE_MIB * 1048576 / 1000000 / $(elapsed "$t0" "$t1")")"
            unmount_mode "$mode"
            rm -f "$BACK/src/big-$mode" ;;
    esac
}

read -ra MODE_LIST <<<"$MODES"
nm=${#MODE_LIST[@]}
for run in $(seq "$REPEAT"); do
    # Rotate the order: A B C, then B C A, then C A B...
    order=()
    for i in $(seq 0 $(( nm - 1 ))); do order+=("${MODE_LIST[$(( (i + run - 1) % nm ))]}"); done
    echo "== repeat $run (order: ${order[*]})" >&2
    for wl in meta1 meta4 stat seq; do
        for mode in "${order[@]}"; do
            run_one "$wl" "$mode"
        done
    done
    for mode in "${MODE_LIST[@]}"; do
        printf '   %-6s create %s lstat %s unlink %s meta4 %s statcold %s statwarm %s write %s read %s\n' "$mode" \
            "$(echo ${R[create,$mode]} | awk '{print $NF}')" "$(echo ${R[lstat,$mode]} | awk '{print $NF}')" \
            "$(echo ${R[unlink,$mode]} | awk '{print $NF}')" "$(echo ${R[meta4,$mode]} | awk '{print $NF}')" \
            "$(echo ${R[statcold,$mode]} | awk '{print $NF}')" "$(echo ${R[statwarm,$mode]} | awk '{print $NF}')" \
            "$(echo ${R[write,$mode]} | awk '{print $NF}')" "$(echo ${R[read,$mode]} | awk '{print $NF}')" >&2
    done
done

# --- the table -------------------------------------------------------------
spread() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]; printf "%.0f", m ? 100 * (v[NR] - v[1]) / m : 0 }'; }
printf '\n%-26s' "metric ($BACKING backing)"
for mode in "${MODE_LIST[@]}"; do printf ' %16s' "$mode"; done
[[ -n ${R[cycle,legacy]:-} && -n ${R[cycle,uring]:-} ]] && printf ' %13s' "uring/legacy"
printf '\n'
for m in "create µs/op:create" "lstat µs/op:lstat" "unlink µs/op:unlink" "meta1 µs/file:cycle" \
         "meta4 µs/file (4 procs):meta4" "stat cold µs/file:statcold" "stat warm µs/file:statwarm" \
         "write MB/s:write" "read MB/s:read"; do
    label=${m%%:*} key=${m##*:}
    printf '%-26s' "$label"
    for mode in "${MODE_LIST[@]}"; do
        # shellcheck disable=SC2086
        printf ' %10.1f ±%3s%%' "$(median ${R[$key,$mode]})" "$(spread ${R[$key,$mode]})"
    done
    if [[ -n ${R[$key,legacy]:-} && -n ${R[$key,uring]:-} ]]; then
        # shellcheck disable=SC2086
        printf ' %12.2fx' "$(calc "$(median ${R[$key,uring]}) / $(median ${R[$key,legacy]})")"
    fi
    printf '\n'
done
echo "(median of $REPEAT runs; ±: (max - min) / median; µs: lower is better, MB/s: higher is better;"
echo " uring/legacy < 1 means io_uring is faster for µs rows, > 1 means faster for MB/s rows)"

# --- proof that the io_uring runs used io_uring -----------------------------
if [[ $VERIFY == 1 ]] && command -v strace >/dev/null; then
    n=$(( FILES / 5 ))
    for mode in legacy uring; do
        [[ " ${MODE_LIST[*]} " == *" $mode "* ]] || continue
        mount_mode "$mode"
        strace -f -c -S calls -p "$HP_PID" -o "$WORK/strace-$mode.txt" &
        spid=$!
        sleep 1
        python3 "$WL" meta1 "$MNT/verify-$mode" "$n" >/dev/null
        kill -INT "$spid"; wait "$spid" 2>/dev/null || true
        unmount_mode "$mode"
        echo "$mode: the server's system calls during create+lstat+unlink of $n files:" >>"$VLOG"
        grep -E ' (read|readv|writev|write|io_uring_enter|splice) *$' "$WORK/strace-$mode.txt" >>"$VLOG" || true
    done
fi
echo
echo "verification ($VLOG):"
cat "$VLOG"
