#!/usr/bin/env bash
# Quick start: build safemount, make a small ext4 demo image, mount it
# read-only through the real broker and sandboxed worker, then read-write,
# and check the result with e2fsck. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: run as root (the broker mounts)" >&2; exit 1; }
scripts/install-deps.sh
cargo build --release --workspace
bin=$PWD/target/release

work=$(mktemp -d /tmp/safemount-demo.XXXXXX)
sock=$work/socket
broker_pid=
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && "$bin/safemount" --socket "$sock" unmount "$work/mnt" || true
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A little tree: text, a sparse file, a symlink, an xattr, a nested dir.
mkdir -p "$work/tree/docs/deeper" "$work/mnt"
echo "hello from an untrusted disk" > "$work/tree/hello.txt"
printf 'ext4, parsed in a sandbox\n' > "$work/tree/docs/deeper/note.txt"
truncate -s 1G "$work/tree/sparse.bin"
ln -s docs/deeper/note.txt "$work/tree/link"
setfattr -n user.origin -v demo "$work/tree/hello.txt"
mkfs.ext4 -q -F -L demo -d "$work/tree" "$work/demo.img" 64M

"$bin/safemountd" --socket "$sock" --worker "$bin/safemount-worker" &
broker_pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done

echo "== safemount mount"
"$bin/safemount" --socket "$sock" mount "$work/demo.img" "$work/mnt" -o ro
echo "== safemount list"
"$bin/safemount" --socket "$sock" list
echo "== the mounted tree"
ls -la "$work/mnt" "$work/mnt/docs/deeper"
cat "$work/mnt/hello.txt" "$work/mnt/link"
getfattr -d "$work/mnt/hello.txt"
du -h --apparent-size "$work/mnt/sparse.bin"; du -h "$work/mnt/sparse.bin"
grep " $work/mnt " /proc/self/mountinfo
echo "== safemount unmount"
"$bin/safemount" --socket "$sock" unmount "$work/mnt"

echo "== read-write: write through the worker, then let e2fsck judge"
"$bin/safemount" --socket "$sock" mount "$work/demo.img" "$work/mnt" -o rw
mkdir "$work/mnt/new-dir"
echo "written by safemount" > "$work/mnt/new-dir/file.txt"
mv "$work/mnt/hello.txt" "$work/mnt/new-dir/"
ls -la "$work/mnt/new-dir"
"$bin/safemount" --socket "$sock" unmount "$work/mnt"
e2fsck -fn "$work/demo.img"
echo "demo: done"
