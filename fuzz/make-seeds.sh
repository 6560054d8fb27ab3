#!/usr/bin/env bash
# Makes the committed seed inputs of the fuzz targets (fuzz/seeds/TARGET)
# from small mkfs-made images, and, with --corpus, adds the images of
# ../shared/corpus to fuzz/corpus/TARGET (not committed: that data stays
# outside the repository). Needs root for the kernel-made journal seeds.
# Images travel in the sparse form worker/src/fuzzing.rs reads.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'umount -q "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT

# sparse IMAGE OUT: a u32 size in KiB, then (u32 KiB index, 1 KiB) for
# every KiB that is not all zeros.
sparse() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
img = open(sys.argv[1], 'rb').read()
out = [struct.pack('<I', (len(img) + 1023) // 1024)]
for i in range(0, len(img), 1024):
    chunk = img[i:i + 1024]
    if any(chunk):
        out.append(struct.pack('<I', i // 1024) + chunk)
open(sys.argv[2], 'wb').write(b''.join(out))
PY
}

# A small tree with every kind of object mkfs -d can make.
tree() {
    local d=$1
    rm -rf "$d"; mkdir -p "$d/dir/sub" "$d/big"
    echo hello > "$d/small"
    # Little data (each data block costs a KiB of seed): the mapping
    # structures are what matter, so files are mostly holes.
    seq 1 800 > "$d/medium"
    truncate -s 2M "$d/sparse"; printf x | dd of="$d/sparse" bs=1 seek=1500000 conv=notrunc status=none
    ln -s small "$d/link"
    ln -s "$(printf 'long/%.0s' {1..40})" "$d/longlink"
    for i in $(seq 1 120); do touch "$d/big/name-number-$i"; done
    setfattr -n user.test -v value "$d/small" 2>/dev/null || true
}

mkdir -p seeds/{mount_walk,rw_ops,replay,parsers,proto}
export E2FSPROGS_FAKE_TIME=1700000000
n=0
for spec in "ext4:-b 1024" "ext4:-b 4096 -O metadata_csum" "ext4:-b 1024 -O inline_data" \
            "ext4:-b 1024 -O ^extent,^flex_bg" "ext3:-b 1024" "ext2:-b 1024" \
            "ext4:-b 1024 -O bigalloc -C 4096" "ext4:-b 1024 -O ^metadata_csum,^64bit"; do
    fs=${spec%%:*}; args=${spec#*:}
    tree "$work/src"
    img=$work/fs$n.img
    truncate -s 4M "$img"
    # shellcheck disable=SC2086
    mkfs -t "$fs" -q -F -U 6ba7b810-9dad-11d1-80b4-00c04fd430c8 -E hash_seed=6ba7b811-9dad-11d1-80b4-00c04fd430c8 \
        $args -d "$work/src" "$img" >/dev/null 2>&1 || { echo "skip $spec"; continue; }
    e2fsck -fyD "$img" >/dev/null 2>&1 || true
    sparse "$img" "seeds/mount_walk/$fs-$n"
    [ "$n" -lt 4 ] && cp "seeds/mount_walk/$fs-$n" "seeds/rw_ops/$fs-$n"
    # parsers: each parser's tag, then the superblock and a KiB of the first
    # inode table (the first byte picks the parser; see fuzzing::parsers).
    itab=$(dumpe2fs "$img" 2>/dev/null | sed -n 's/.*Inode table at \([0-9]*\)-.*/\1/p' | head -1)
    bs=$(dumpe2fs -h "$img" 2>/dev/null | sed -n 's/^Block size: *//p')
    [ "$n" -lt 3 ] && for tag in $(seq 0 15); do
        { printf "\\x$(printf %02x "$tag")"; dd if="$img" bs=1024 skip=1 count=1 status=none
          dd if="$img" bs="$bs" skip="$itab" count=1 status=none | head -c 4096; } > "seeds/parsers/$tag-$n"
    done
    n=$((n + 1))
done

# verity: descriptors from fsverity-utils for the parsers target (tag 16:
# the descriptor is the input) and an image with verity files for
# mount_walk, built as the tests build them (tests/verity/).
if command -v fsverity >/dev/null; then
    seq 1 5000 > "$work/vdata"
    i=0
    for opts in "--block-size=4096" "--hash-alg=sha512 --block-size=1024 --salt=0102" "--block-size=1024"; do
        # shellcheck disable=SC2086
        fsverity digest "$work/vdata" $opts --out-descriptor="$work/desc" >/dev/null
        { printf '\x10'; cat "$work/desc"; } > "seeds/parsers/16-$i"
        i=$((i + 1))
    done
    img=$work/verity.img
    truncate -s 4M "$img"
    mkfs.ext4 -q -F -b 1024 -O verity -U 6ba7b810-9dad-11d1-80b4-00c04fd430c8 "$img"
    ../tests/verity/put-verity-file.sh "$img" tree3 "$work/vdata" --hash-alg=sha512 --block-size=1024 --salt=0102 >/dev/null
    head -c 1000 "$work/vdata" > "$work/vsmall"
    ../tests/verity/put-verity-file.sh "$img" one "$work/vsmall" --block-size=1024 >/dev/null
    sparse "$img" seeds/mount_walk/verity-0
else
    echo "no fsverity (fsverity-utils): no verity seeds"
fi

# replay: the kernel's own journal, copied while it still needs recovery,
# under each journal format the kernel writes: checksum v3 with 64-bit
# tags (the default), no checksums with 32-bit tags, async commit, and
# data=journal with a data block the log must escape (it starts with the
# jbd2 magic). Each stays under the targets' -max_len (256 KiB).
# kernel_seed NAME BLOCK_SIZE MKFS_FEATURES MOUNT_OPTIONS
kernel_seed() {
    local name=$1 bs=$2 features=$3 opts=$4
    local img=$work/$name.img
    rm -f "$img"; truncate -s 8M "$img"
    mkfs.ext4 -q -F -b "$bs" ${features:+-O "$features"} "$img"
    mkdir -p "$work/mnt"
    mount -o "loop,commit=600${opts:+,$opts}" "$img" "$work/mnt"
    tree "$work/mnt/t"
    sync -f "$work/mnt"
    rm -rf "$work/mnt/t/big"; mv "$work/mnt/t/medium" "$work/mnt/t/moved"
    dd if=/dev/urandom of="$work/mnt/t/new" bs=4k count=8 conv=fsync status=none
    printf '\xc0\x3b\x39\x98escaped' | dd of="$work/mnt/t/magic" bs=4k conv=fsync status=none
    cp "$img" "$work/copy.img"
    umount "$work/mnt"
    if dumpe2fs -h "$work/copy.img" 2>/dev/null | grep -q needs_recovery; then
        sparse "$work/copy.img" "seeds/replay/$name"
    else
        echo "$name: the copy did not need recovery; no seed"
    fi
}
if [ "$(id -u)" = 0 ]; then
    kernel_seed kernel-1024 1024 "" ""
    kernel_seed kernel-4096 4096 "" ""
    kernel_seed kernel-plain 4096 "^metadata_csum,^64bit" ""
    kernel_seed kernel-async 1024 "^metadata_csum" "journal_async_commit,data=writeback"
    kernel_seed kernel-data 1024 "" "data=journal"
else
    echo "not root: no kernel-made replay seeds"
fi
cp seeds/mount_walk/ext3-* seeds/replay/ 2>/dev/null || true

# proto: one encoded message of each kind the broker and worker read.
python3 - <<'PY'
# bincode 2 standard config: varint enum tags and lengths.
open('seeds/proto/list', 'wb').write(bytes([3]))
open('seeds/proto/hello', 'wb').write(bytes([0, 3]))
open('seeds/proto/serving', 'wb').write(bytes([2]))
open('seeds/proto/health', 'wb').write(bytes([3, 1, 1, 5]) + b'error')
PY

if [ "${1:-}" = --corpus ] && [ -d ../../shared/corpus/e2fsprogs ]; then
    for t in mount_walk rw_ops replay; do mkdir -p "corpus/$t"; done
    for f in ../../shared/corpus/e2fsprogs/*.img.*; do
        name=$(basename "$f"); name=${name%%.img.*}
        case "$f" in
            *.gz) gzip -dc "$f" > "$work/c.img" ;;
            *.bz2) bzip2 -dc "$f" > "$work/c.img" ;;
            *) continue ;;
        esac
        sparse "$work/c.img" "corpus/mount_walk/$name"
        case "$name" in j_*) cp "corpus/mount_walk/$name" corpus/replay/ ;; esac
        cp "corpus/mount_walk/$name" corpus/rw_ops/
    done
fi
du -sh seeds
