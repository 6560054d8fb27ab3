#!/bin/bash
# The automount path under a real systemd: boots the host's own system
# (an overlay over /, with the safemount package installed into the
# overlay) in a systemd-nspawn container, with a real systemd-udevd, and
# plugs in an ext4 loop device:
#
#   kernel uevent -> udevd runs 90-safemount.rules -> SYSTEMD_WANTS=
#   safemount-auto@loopN.service -> safemount-auto -> safemountd.socket
#   activates safemountd.service (Type=notify) -> sandboxed worker -> FUSE
#   mount at /run/media/<user>/<label>; then a "remove" uevent: the device
#   unit goes, BindsTo= stops the service, ExecStop= unmounts, the broker
#   reaps the worker and removes the mount point. Before the unplug the
#   broker is killed (systemd restarts it) and then restarted with
#   systemctl: each time the new broker adopts the mount, with the worker's
#   log pipe and health socket from systemd's fd store. A second plug-in
#   is unmounted by the user with plain umount, under the packaged unit.
#
#   packaging/tests/systemd-container-test.sh [--deb PATH] [--keep]
#
# Two deliberate differences from a desktop, each the smallest that lets
# the path run here, both as drop-ins inside the container only:
#   1. the rule is copied to /etc/udev/rules.d with the removable-media
#      test replaced by KERNEL=="loopN" for this one loop device (a loop
#      device is not removable media; matching only ours keeps every other
#      device on the machine out of it);
#   2. safemount-auto@.service gets --user UID of a test user: there is no
#      seat with an active logind session in a container.
# systemd-udev-trigger.service is masked (it would re-announce every device
# of the host); only our device is triggered.
#
# Needs root, systemd-nspawn (package systemd-container), overlayfs,
# /dev/fuse and a free loop device. Without systemd-nspawn it prints
# "skip:" and exits 0. Output: one line per check (ok / FAIL), then
# "N passed, M failed"; exit 0 if nothing failed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
pkg=$(cd "$here/.." && pwd)

deb=
keep=no
while [ $# -gt 0 ]; do
    case $1 in
        --deb) deb=${2:?--deb needs a path}; shift 2 ;;
        --keep) keep=yes; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "systemd-container-test: unknown argument: $1" >&2; exit 2 ;;
    esac
done

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }

command -v systemd-nspawn >/dev/null || { echo "skip: no systemd-nspawn (apt-get install systemd-container)"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "skip: needs root"; exit 0; }
for f in /lib/systemd/systemd /lib/systemd/systemd-udevd /dev/fuse; do
    [ -e "$f" ] || { echo "skip: $f is missing (packages systemd, udev; the fuse module)"; exit 0; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/safemount-nspawn.XXXXXX")
chmod 0755 "$tmp"
machine=smtest-$$
loop=
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        [ -n "${leader:-}" ] && nsenter -t "$leader" -a systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$nspawn_pid" 2>/dev/null
        wait "$nspawn_pid" 2>/dev/null
    fi
    mountpoint -q "$tmp/root" && umount -l "$tmp/root"
    [ -n "$loop" ] && losetup -d "$loop"
    rm -rf "/run/systemd/nspawn/propagate/$machine"
    if [ "$keep" = yes ]; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [ -z "$deb" ]; then
    deb=$("$pkg/build-deb.sh" --out "$tmp/out" | tail -n1) || { fail "build-deb.sh failed"; finish; }
fi

# The root: the host's / as the lower layer of an overlay (nothing on the
# host changes), the package installed into it.
mkdir -p "$tmp/upper" "$tmp/work" "$tmp/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$tmp/upper,workdir=$tmp/work" "$tmp/root" ||
    { fail "overlay over / (no overlayfs?)"; finish; }
R=$tmp/root
cp "$deb" "$R/root/safemount.deb"
chroot "$R" dpkg -i /root/safemount.deb > "$tmp/dpkg.log" 2>&1 || { fail "dpkg -i in the root: $(tail -n3 "$tmp/dpkg.log")"; finish; }
chroot "$R" useradd --create-home --user-group smdesk >/dev/null 2>&1
uid=$(chroot "$R" id -u smdesk) || { fail "test user"; finish; }
chroot "$R" systemctl set-default multi-user.target >/dev/null 2>&1
chroot "$R" systemctl mask systemd-udev-trigger.service udisks2.service >/dev/null 2>&1

# The device: an ext4 image labelled "stick" on a loop device.
truncate -s 32M "$tmp/stick.img"
mkfs.ext4 -q -L stick "$tmp/stick.img"
loop=$(losetup -f --show "$tmp/stick.img") || { fail "losetup"; finish; }
name=$(basename "$loop")

# Drop-ins (see the header).
mkdir -p "$R/etc/udev/rules.d" "$R/etc/systemd/system/safemount-auto@.service.d"
sed -e "s/^KERNEL==\"loop\*|/KERNEL==\"/" -e "s/^ATTRS{removable}==\"1\"/KERNEL==\"$name\"/" \
    "$R/usr/lib/udev/rules.d/90-safemount.rules" > "$R/etc/udev/rules.d/90-safemount.rules"
cmp -s "$R/usr/lib/udev/rules.d/90-safemount.rules" "$R/etc/udev/rules.d/90-safemount.rules" &&
    { fail "could not derive the loop variant of the rule"; finish; }
cat > "$R/etc/systemd/system/safemount-auto@.service.d/test-user.conf" <<CONF
[Service]
ExecStart=
ExecStart=/usr/libexec/safemount/safemount-auto --user $uid %I
CONF

# Boot. A writable /sys (SYSTEMD_NSPAWN_API_VFS_WRITABLE) is what lets
# systemd-udevd run and systemd track device units in the container, and
# CAP_NET_ADMIN what lets udevd pass events on to systemd (a netlink
# broadcast in the host's network namespace, which the container shares).
SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 systemd-nspawn -q -D "$R" -b -M "$machine" \
    --register=no --keep-unit --console=pipe --capability=CAP_NET_ADMIN \
    --bind=/dev/fuse --bind="$loop" > "$tmp/boot.log" 2>&1 &
nspawn_pid=$!
leader=
for _ in $(seq 300); do
    leader=$(pgrep -P "$nspawn_pid" -x systemd 2>/dev/null | head -n1)
    [ -n "$leader" ] && nsenter -t "$leader" -a systemctl is-system-running --wait >/dev/null 2>&1 && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.2
done
[ -n "$leader" ] || { fail "container did not boot: $(tail -n5 "$tmp/boot.log")"; finish; }
inside() { nsenter -t "$leader" -a "$@"; }
# PID 1 in a container subscribes to udev's events only if udevd's
# /run/udev/control exists when it sets up its device monitor, which at
# boot is before udevd starts (systemd's sd-device keeps a container from
# listening to a host's udev): re-executing it now that udevd runs makes it
# listen, as it does on a host.
inside systemctl daemon-reexec
state=$(inside systemctl is-system-running 2>&1)
check "real systemd booted in the container (is-system-running: $state)" [ "$state" = running ]
check "systemd-udevd runs in the container" inside systemctl is-active --quiet systemd-udevd.service
check "safemountd.socket is listening (enabled by the package)" inside systemctl is-active --quiet safemountd.socket
check "safemountd.service is not running before the first request" bash -c '! nsenter -t "$1" -a systemctl is-active --quiet safemountd.service' _ "$leader"

# Plug in.
inside timeout 60 udevadm trigger --action=add --settle "/sys/class/block/$name"
unit=safemount-auto@$name.service
for _ in $(seq 150); do
    st=$(inside systemctl show -p ActiveState --value "$unit")
    [ "$st" = active ] || [ "$st" = failed ] && break
    sleep 0.2
done
check "udev started $unit (state: $st)" [ "$st" = active ]
check "udev set UDISKS_AUTO=0 on $name" bash -c 'nsenter -t "$1" -a udevadm info -q property -n "$2" | grep -qx UDISKS_AUTO=0' _ "$leader" "/dev/$name"
check "the socket activated safemountd.service" inside systemctl is-active --quiet safemountd.service
mnt=/run/media/smdesk/stick
list=$(inside safemount list 2>&1)
check "safemount list shows /dev/$name at $mnt for smdesk" bash -c 'grep -q "^/dev/$2 *$3 *smdesk *mounted (ro)" <<<"$1"' _ "$list" "$name" "$mnt"
check "fuse.safemount mount at $mnt" bash -c 'nsenter -t "$1" -a findmnt -n -t fuse.safemount "$2" >/dev/null' _ "$leader" "$mnt"
check "the seat user sees the files (lost+found)" inside setpriv --reuid="$uid" --regid="$uid" --clear-groups test -d "$mnt/lost+found"

# The broker crashes: systemd restarts it (Restart=on-failure) and passes
# back its fd store, so the adopted worker keeps its log pipe and health
# socket; the unplug below is then served by the new broker.
stored=$(inside systemctl show -p NFileDescriptorStore --value safemountd.service)
check "the worker's log pipe and health socket are in systemd's fd store (entries: $stored)" [ "$stored" = 2 ]
old_pid=$(inside systemctl show -p MainPID --value safemountd.service)
inside systemctl kill -s KILL --kill-who=main safemountd.service
for _ in $(seq 100); do
    sleep 0.2
    new_pid=$(inside systemctl show -p MainPID --value safemountd.service)
    st=$(inside systemctl show -p ActiveState --value safemountd.service)
    [ "$st" = active ] && [ "$new_pid" != 0 ] && [ "$new_pid" != "$old_pid" ] && break
done
check "systemd restarted the killed broker (pid $old_pid -> $new_pid, state: $st)" bash -c '[ "$1" = active ] && [ "$2" != 0 ] && [ "$2" != "$3" ]' _ "$st" "$new_pid" "$old_pid"
log=$(inside journalctl -u safemountd.service --no-pager -o cat 2>&1)
check "the new broker adopted the mount with its log and health channels" bash -c 'grep -q "with its log and health channels" <<<"$1"' _ "$log"
list=$(inside safemount list 2>&1)
check "after the restart safemount list still shows $mnt" bash -c 'grep -q "^/dev/$2 *$3 *smdesk *mounted (ro)" <<<"$1"' _ "$list" "$name" "$mnt"
# An administrator's restart: SIGTERM keeps the mounts, the store is kept
# across the restart job.
inside systemctl restart safemountd.service
log=$(inside journalctl -u safemountd.service --no-pager -o cat 2>&1)
adoptions=$(grep -c "with its log and health channels" <<<"$log")
check "systemctl restart: adopted again with the channels (adoptions: $adoptions)" [ "$adoptions" = 2 ]
list=$(inside safemount list 2>&1)
check "after systemctl restart safemount list still shows $mnt" bash -c 'grep -q "^/dev/$2 *$3 *smdesk *mounted (ro)" <<<"$1"' _ "$list" "$name" "$mnt"

# Unplug: the device unit goes, BindsTo= stops the unit, ExecStop= unmounts.
inside timeout 60 udevadm trigger --action=remove --settle "/sys/class/block/$name"
for _ in $(seq 150); do
    st=$(inside systemctl show -p ActiveState --value "$unit")
    [ "$st" = inactive ] || [ "$st" = failed ] && break
    sleep 0.2
done
check "$unit stopped when the device went away (state: $st)" [ "$st" = inactive ]
for _ in $(seq 100); do inside test -e "$mnt" || break; sleep 0.1; done
check "nothing mounted at $mnt after the unplug" bash -c '! nsenter -t "$1" -a findmnt -n "$2" >/dev/null' _ "$leader" "$mnt"
check "the automatic mount point $mnt is removed" bash -c '! nsenter -t "$1" -a test -e "$2"' _ "$leader" "$mnt"
list=$(inside safemount list 2>&1)
check "safemount list is empty" [ "$(wc -l <<<"$list")" = 1 ]
log=$(inside journalctl -u safemountd.service -u "$unit" --no-pager -o cat 2>&1)
check "the broker logged the mount and the unmount" bash -c 'grep -q "mounted mountpoint=$2" <<<"$1" && grep -q "unmounted mountpoint=$2" <<<"$1"' _ "$log" "$mnt"
# Plug in again; this time the seat user unmounts with plain umount (what
# a file manager runs): the broker cleans up, and the unplug that follows
# finds nothing left to unmount.
inside timeout 60 udevadm trigger --action=add --settle "/sys/class/block/$name"
for _ in $(seq 150); do
    inside findmnt -n -t fuse.safemount "$mnt" >/dev/null 2>&1 && break
    sleep 0.2
done
out=$(inside setpriv --reuid="$uid" --regid="$uid" --clear-groups umount "$mnt" 2>&1)
check "the seat user unmounts with plain umount${out:+: $out}" [ -z "$out" ]
for _ in $(seq 100); do inside test -e "$mnt" || break; sleep 0.1; done
check "after the user's umount the mount point is removed" bash -c '! nsenter -t "$1" -a test -e "$2"' _ "$leader" "$mnt"
list=$(inside safemount list 2>&1)
check "after the user's umount safemount list is empty" [ "$(wc -l <<<"$list")" = 1 ]
inside timeout 60 udevadm trigger --action=remove --settle "/sys/class/block/$name"
for _ in $(seq 150); do
    st=$(inside systemctl show -p ActiveState --value "$unit")
    [ "$st" = inactive ] || [ "$st" = failed ] && break
    sleep 0.2
done
check "$unit stops cleanly with nothing left to unmount (state: $st)" [ "$st" = inactive ]
if [ "$failed" -gt 0 ]; then
    echo "--- journal"; inside journalctl -b --no-pager -o short-monotonic 2>&1 | grep -Ei "safemount|udev" | tail -n 40
fi
finish
