#!/usr/bin/env bash
# Debian packages the build, the tests (`cargo test --release --workspace`)
# and the demo need on a fresh Debian 12+ machine. Idempotent and quiet:
# installs only what `dpkg -s` does not find, and says nothing otherwise.
# The Rust toolchain itself (cargo, rustc) is not a Debian package here.
set -euo pipefail
need=(
  gcc libc6-dev      # cargo links with cc against glibc
  g++                # libfuzzer-sys builds libFuzzer (scripts/fuzz.sh)
  e2fsprogs          # mkfs.ext4 -d, e2fsck, debugfs, dumpe2fs, tune2fs: image builders and oracles
  fsverity           # fsverity digest/measure: Merkle trees and descriptors for verity test files, the digest oracle
  util-linux         # unshare, setpriv, blkid: namespaces and dropping to a test user
  mount              # losetup, mount, umount: the kernel-driver oracle and e2e checks
  coreutils          # stat, mknod, dd, truncate, timeout used by tests and scripts
  attr acl           # setfattr/getfattr, setfacl/getfacl for xattr and ACL trees
  libcap2-bin        # setcap: file capabilities in tests/tests/setid_clearing.rs
  gzip bzip2         # unpack the hostile-image corpus; zcat of man pages
  kmod               # modprobe fuse/loop where they are modules (below)
  passwd             # useradd/userdel/groupdel: test users and the worker's user
  python3            # broker/tests/policy.rs takes OFD/POSIX locks with python3's fcntl; install test plays systemd
  dbus-daemon        # broker/tests/polkit.rs starts a private system bus
  polkitd            # broker/tests/polkit.rs runs its own polkitd; policyconfig-1.dtd for the install test
  dpkg               # dpkg-deb and dpkg --root: packaging/build-deb.sh and the install test
  binutils           # strip and objdump: build-deb.sh strips binaries and reads their GLIBC versions
  init-system-helpers # deb-systemd-helper: the package's postinst/postrm enable and purge the socket
  systemd            # systemd-analyze verify, systemd-sysusers, systemd-tmpfiles in the install test; loginctl
  libxml2-utils      # xmllint validates the polkit policy in the install test
  groff-base         # groff -ww: man pages must render without warnings
  man-db             # man(1), so systemd-analyze verify finds the units' Documentation= pages
  fuse3              # fusermount3 -u by a mount's owner (tests/tests/desktop.rs); the package needs no fuse3
  udisks2            # its polkit actions, for pkcheck against 20-safemount-udisks.rules (broker/tests/polkit.rs)
  systemd-container  # systemd-nspawn: packaging/tests/systemd-container-test.sh boots the automount path for real
)
# udev is not listed, but udisks2 depends on it: apt installs the udev that
# matches systemd's version (it may upgrade systemd to the same point
# release), and packaging/tests/udev-rule-test.sh then runs for real.
missing=()
for p in "${need[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# /dev/fuse and loop devices must exist for the end-to-end tests: without
# them the suite could only skip, so say so and stop here.
[ -e /dev/fuse ] || modprobe fuse || true
[ -e /dev/loop-control ] || modprobe loop || true
fail=0
if [ ! -c /dev/fuse ]; then
  echo "install-deps: /dev/fuse is missing (modprobe fuse failed; in a container, pass --device /dev/fuse)" >&2
  fail=1
fi
if [ ! -c /dev/loop-control ] || ! loop=$(losetup -f 2>/dev/null) || [ -z "$loop" ]; then
  echo "install-deps: no free loop device (modprobe loop failed; in a container, run privileged)" >&2
  fail=1
fi
if [ "$fail" -ne 0 ]; then
  echo "install-deps: the end-to-end tests need root, /dev/fuse and loop devices" >&2
  exit 1
fi
