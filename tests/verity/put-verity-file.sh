#!/usr/bin/env bash
# Puts DATA into the ext4 image IMAGE as file NAME (in the root directory)
# with fs-verity enabled, laid out as the kernel's ext4 lays it out
# (fs/ext4/verity.c): the data, the Merkle tree from the next 64 KiB
# boundary after i_size, the descriptor from the next filesystem-block
# boundary after the tree, and the descriptor's size as an le32 in the last
# four bytes of the file's last block. i_size is the data's size, the inode
# gets EXT4_EXTENTS_FL|EXT4_VERITY_FL, the filesystem the verity feature.
# The tree and descriptor come from fsverity-utils (`fsverity digest`);
# OPTIONS go to it (--hash-alg=, --block-size=, --salt=).
# Prints the file digest as `fsverity digest` does (ALG:HEX).
#
# usage: put-verity-file.sh IMAGE NAME DATA [OPTIONS...]
set -euo pipefail
img=$1 name=$2 data=$3
shift 3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
digest=$(fsverity digest "$data" "$@" --out-merkle-tree="$tmp/tree" --out-descriptor="$tmp/desc")
bs=$(dumpe2fs -h "$img" 2>/dev/null | sed -n 's/^Block size: *//p')
round_up() { echo $(( ($1 + $2 - 1) / $2 * $2 )); }
size=$(stat -c %s "$data")
tree_size=$(stat -c %s "$tmp/tree")
desc_size=$(stat -c %s "$tmp/desc")
meta=$(round_up "$size" 65536)
desc_pos=$(round_up $((meta + tree_size)) "$bs")
size_pos=$(( $(round_up $((desc_pos + desc_size + 4)) "$bs") - 4 ))
full=$tmp/full
cp "$data" "$full"
truncate -s "$meta" "$full"
cat "$tmp/tree" >> "$full"
truncate -s "$desc_pos" "$full"
cat "$tmp/desc" >> "$full"
truncate -s "$size_pos" "$full"
le32=$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((desc_size & 255)) $((desc_size >> 8 & 255)) \
  $((desc_size >> 16 & 255)) $((desc_size >> 24 & 255)))
# shellcheck disable=SC2059 # the format is the escaped bytes themselves
printf "$le32" >> "$full"
debugfs -w "$img" -f - >/dev/null 2>"$tmp/err" <<CMDS
feature verity
write $full $name
sif $name size $size
sif $name flags 0x180000
CMDS
if grep -v '^debugfs' "$tmp/err" | grep -q .; then
  cat "$tmp/err" >&2
  exit 1
fi
echo "${digest%% *}"
