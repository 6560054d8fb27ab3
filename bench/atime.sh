#!/usr/bin/env bash
# What access times cost: a source tree (/usr/include) is unpacked, then
# every file is read once (the first read after a write: under relatime
# each moves its atime, one inode update per file) and read again
# (relatime moves nothing), each pass followed by sync. The page cache
# stays warm, so the passes measure opens and atime updates, not the
# device.
#
# Systems: kernel (relatime, its default), safemount (relatime, its
# default), safemount-noatime (-o noatime: what the updates cost).
#
# Run as root from the repository root after `cargo build --release
# --workspace`. See bench/README.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need_root "mounts"

TREE=${TREE:-/usr/include}
SYSTEMS=${SYSTEMS:-"kernel safemount safemount-noatime"}
REPEAT=${REPEAT:-3}

need_binaries
[[ -d $TREE ]] || die "$TREE missing: set TREE to a source tree"

use_work_dir atime
TAR=$WORK/tree.tar

syncfs() { sync; sync "$MNT"; }

make_empty_image "$PRISTINE" 4G
if [[ ! -f $TAR ]]; then
    echo "making $TAR from $TREE..." >&2
    tar -cf "$TAR" -C "$(dirname "$TREE")" "$(basename "$TREE")"
fi

options() {
    case $1 in
        safemount-noatime) echo rw,noatime ;;
        *) echo rw ;;
    esac
}

read_all() { find "$MNT/tree" -type f -print0 | xargs -0 cat >/dev/null; }

# Files whose atime is later than their ctime: moved by a read (tar sets
# mtime from the archive, and atime with it, which sets ctime).
moved() { find "$MNT/tree" -type f -printf '%A@ %C@\n' | awk '$1 > $2 { n++ } END { print n + 0 }'; }

declare -A FIRST AGAIN MOVED
for sys in $SYSTEMS; do
    echo "== $sys" >&2
    firsts=() agains=()
    for run in $(seq "$REPEAT"); do
        cp --sparse=always "$PRISTINE" "$IMG"
        mount_system "${sys%-noatime}" "$IMG" "$(options "$sys")"
        mkdir "$MNT/tree"
        tar -xf "$TAR" -C "$MNT/tree"
        syncfs
        sleep 0.1 # a clock tick after the last write
        t0=$(now); read_all; syncfs; t1=$(now)
        firsts+=("$(elapsed "$t0" "$t1")")
        t0=$(now); read_all; syncfs; t1=$(now)
        agains+=("$(elapsed "$t0" "$t1")")
        MOVED[$sys]=$(moved)
        unmount_system "${sys%-noatime}"
        e2fsck -fn "$IMG" >/dev/null 2>&1 || echo "   WARNING: $sys left $IMG not clean (e2fsck -fn)" >&2
        printf '   run %d: first read %.3f s, again %.3f s, %d files with atime after ctime\n' \
            "$run" "${firsts[-1]}" "${agains[-1]}" "${MOVED[$sys]}" >&2
    done
    FIRST[$sys]=$(median "${firsts[@]}")
    AGAIN[$sys]=$(median "${agains[@]}")
done

printf '\n%-20s %14s %10s %14s\n' system "first read s" "again s" "atimes moved"
for sys in $SYSTEMS; do
    printf '%-20s %14.3f %10.3f %14d\n' "$sys" "${FIRST[$sys]}" "${AGAIN[$sys]}" "${MOVED[$sys]}"
done
