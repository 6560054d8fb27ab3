#!/bin/bash
# Runs packaging/udev/90-safemount.rules through `udevadm test` against a
# real block device: an ext4 image on a loop device.
#
#   packaging/tests/udev-rule-test.sh
#
# Needs root, losetup, mkfs.ext4 and udevadm with its rules (the udev
# package). Set UDEV_ROOT=DIR to use an unpacked udev package instead of the
# system's (DIR/bin/udevadm or DIR/usr/bin/udevadm, and its
# lib/udev/rules.d or usr/lib/udev/rules.d). Without udevadm it says so and
# exits 0 ("skip").
#
# Nothing on the host changes but one loop device, detached at the end: the
# rules run in a private mount namespace with a tmpfs on /run, where only
# 60-persistent-storage.rules (it sets ID_FS_TYPE) and the rule under test
# live. Checks:
#   1. the rule parses and leaves a loop device alone (not removable media);
#   2. a copy in which loop devices count as removable tags the device for
#      systemd, wants safemount-auto@<name>.service and sets UDISKS_AUTO=0;
#   3. the same copy ignores the device once its filesystem is not ext*.
set -u

here=$(cd "$(dirname "$0")" && pwd)
rule=$(cd "$here/.." && pwd)/udev/90-safemount.rules

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

ur=${UDEV_ROOT:-}
udevadm=
for c in "$ur/bin/udevadm" "$ur/usr/bin/udevadm"; do [ -x "$c" ] && udevadm=$c && break; done
[ -z "$ur" ] && udevadm=$(command -v udevadm || true)
rules=
for d in "$ur/lib/udev/rules.d" "$ur/usr/lib/udev/rules.d"; do
    [ -f "$d/60-persistent-storage.rules" ] && rules=$d && break
done
if [ -z "$udevadm" ] || [ -z "$rules" ]; then
    echo "skip: no udevadm with 60-persistent-storage.rules (install udev, or set UDEV_ROOT)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "skip: needs root (loop device, mount namespace)"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/safemount-udev.XXXXXX")
loop=
cleanup() { [ -n "$loop" ] && losetup -d "$loop"; rm -rf "$work"; }
trap cleanup EXIT

truncate -s 8M "$work/fs.img"
mkfs.ext4 -q -L stick "$work/fs.img" || { fail "mkfs.ext4"; finish; }
loop=$(losetup -f --show "$work/fs.img") || { fail "losetup"; finish; }
name=$(basename "$loop")

# Loop devices treated as removable media: the removable test becomes a
# KERNEL match and the loop exclusion goes. Everything else is the rule.
sed -e 's/^KERNEL=="loop\*|/KERNEL=="/' -e 's/^ATTRS{removable}=="1"/KERNEL=="loop*"/' \
    "$rule" > "$work/variant.rules"
if cmp -s "$rule" "$work/variant.rules"; then
    fail "could not derive the loop-as-removable variant (rule changed shape?)"
    finish
fi

run() { # run RULEFILE -> udevadm test output
    unshare -m bash -c '
        mount -t tmpfs tmpfs /run && mkdir -p /run/udev/rules.d &&
        cp "$1/60-persistent-storage.rules" /run/udev/rules.d/ &&
        cp "$2" /run/udev/rules.d/90-safemount.rules &&
        "$3" test --action=add "/sys/class/block/$4" 2>&1' _ "$rules" "$1" "$udevadm" "$name"
}

out=$(run "$rule")
if grep -qiE 'invalid|unknown key|failed to parse|error' <<<"$(grep -i 90-safemount <<<"$out")"; then
    fail "udevadm reports a problem in the rule: $(grep -i 90-safemount <<<"$out")"
else
    ok "rule parses (udevadm $($udevadm --version))"
fi
grep -q '^ID_FS_TYPE=ext4' <<<"$out" && ok "60-persistent-storage sets ID_FS_TYPE=ext4 on $name" ||
    fail "no ID_FS_TYPE=ext4 on $name: the test setup is broken"
grep -q '^SYSTEMD_WANTS=.*safemount' <<<"$out" && fail "a loop device was handed to safemount-auto" ||
    ok "loop device left alone by the real rule"

out=$(run "$work/variant.rules")
grep -qx "SYSTEMD_WANTS=safemount-auto@$name.service" <<<"$out" &&
    ok "removable ext4 wants safemount-auto@$name.service" ||
    fail "removable ext4 does not want safemount-auto@$name.service"
grep -q '^TAGS=.*:systemd:' <<<"$out" && ok "device tagged for systemd" || fail "device not tagged for systemd"
grep -qx 'UDISKS_AUTO=0' <<<"$out" && ok "UDISKS_AUTO=0 keeps udisks2 from mounting it too" ||
    fail "UDISKS_AUTO=0 not set"

# Not ext*: wipe the superblock magic, re-probe.
wipefs -q -a "$loop" >/dev/null 2>&1 || dd if=/dev/zero of="$loop" bs=4096 count=1 conv=notrunc status=none
printf 'vfat-ish' | dd of="$loop" bs=1 seek=0 conv=notrunc status=none
out=$(run "$work/variant.rules")
grep -q '^SYSTEMD_WANTS=.*safemount' <<<"$out" && fail "non-ext device handed to safemount-auto" ||
    ok "device without an ext2/3/4 filesystem left alone"

finish
