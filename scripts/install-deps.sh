#!/usr/bin/env bash
# Debian packages the build, the tests and the demo need.
#   e2fsprogs   mkfs.ext4 -d, e2fsck, debugfs: image builders and oracles
#   util-linux  losetup, mount: the kernel-driver oracle
#   attr, acl   setfattr/getfattr, setfacl/getfacl for xattr and ACL trees
#   gzip, bzip2 unpack the hostile-image corpus
#   kmod        modprobe fuse/loop where they are modules
set -euo pipefail
need=(e2fsprogs util-linux attr acl gzip bzip2 kmod)
missing=()
for p in "${need[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
# /dev/fuse and loop devices must exist for the end-to-end tests.
[ -e /dev/fuse ] || modprobe fuse || true
[ -e /dev/loop-control ] || modprobe loop || true
