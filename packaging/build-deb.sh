#!/bin/sh
# Builds the safemount Debian package with dpkg-deb from the release
# binaries of the workspace (target/release, or $CARGO_TARGET_DIR/release).
#
#   packaging/build-deb.sh            use the existing release binaries;
#                                     build them first if any is missing
#   packaging/build-deb.sh --build    run `cargo build --release --workspace
#                                     --bins` first in any case
#   packaging/build-deb.sh --out DIR  stage and write the package in DIR
#                                     (default packaging/out)
#
# Environment: SAFEMOUNT_RELEASE_DIR=DIR takes the binaries from DIR
# instead of target/release (it is never built into: missing binaries are
# an error there).
#
# Output: OUT/safemount_<version>_<arch>.deb (path printed last).
# Needs: dpkg-deb, gzip, strip and objdump (binutils); no root
# (file ownership is set with dpkg-deb --root-owner-group).
set -eu

die() { echo "build-deb: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
pkg=$here
out=$here/out

build=no
while [ $# -gt 0 ]; do
    case $1 in
        --build) build=yes; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case $out in /*) ;; *) out=$(pwd)/$out ;; esac

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

# The workspace version is the package version.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || die "no [workspace.package] version in $repo/Cargo.toml"
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)

target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
rel=${SAFEMOUNT_RELEASE_DIR:-$target/release}

# Cargo names: mount.safemount is built as mount_safemount (no "." allowed).
need="safemountd safemount safemount-worker mount_safemount safemount-auto"
missing=
for b in $need; do [ -x "$rel/$b" ] || missing="$missing $b"; done
if [ -n "${SAFEMOUNT_RELEASE_DIR:-}" ] && [ -n "$missing" ]; then
    die "missing in SAFEMOUNT_RELEASE_DIR=$rel:$missing"
fi
if [ "$build" = yes ] || [ -n "$missing" ]; then
    if [ -n "$missing" ]; then echo "build-deb: missing release binaries:$missing; building" >&2; fi
    (cd "$repo" && cargo build --release --workspace --bins) || die "cargo build failed"
fi
for b in $need; do [ -x "$rel/$b" ] || die "$rel/$b missing after the build"; done

stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

inst() { # inst MODE SRC DEST (DEST relative to the package root)
    install -D -m "$1" "$2" "$stage/$3"
}

# Binaries. Paths are fixed by the code (DEFAULT_WORKER in
# broker/src/lib.rs), by the units' ExecStart=/ExecStop= and by mount(8):
# it runs /sbin/mount.TYPE (also /sbin/fs.d, /sbin/fs) for `mount -t TYPE`
# and fstab lines. Debian 12 and later are merged-/usr (/sbin -> usr/sbin)
# and packages ship under /usr (DEP17), so /usr/sbin/mount.safemount is
# found as /sbin/mount.safemount. The automount helper is internal
# (started only by safemount-auto@.service): libexec.
inst 0755 "$rel/safemountd"        usr/sbin/safemountd
inst 0755 "$rel/safemount"         usr/bin/safemount
inst 0755 "$rel/safemount-worker"  usr/libexec/safemount/safemount-worker
inst 0755 "$rel/mount_safemount"   usr/sbin/mount.safemount
inst 0755 "$rel/safemount-auto"    usr/libexec/safemount/safemount-auto
bins="usr/sbin/safemountd usr/bin/safemount usr/libexec/safemount/safemount-worker usr/sbin/mount.safemount usr/libexec/safemount/safemount-auto"
# Stripped like dh_strip does (the release profile keeps symbols): a
# fraction of the size, and dpkg-deb compresses it in seconds.
if command -v strip >/dev/null; then
    for b in $bins; do strip --strip-unneeded --remove-section=.comment "$stage/$b" || die "strip $b failed"; done
else
    echo "build-deb: note: strip not found (binutils); binaries are packaged unstripped" >&2
fi

# Automount: the udev rule hands removable ext2/3/4 partitions to
# safemount-auto@<kernel name>.service (and sets UDISKS_AUTO=0 for them).
inst 0644 "$pkg/systemd/safemount-auto@.service" usr/lib/systemd/system/safemount-auto@.service
inst 0644 "$pkg/udev/90-safemount.rules"         usr/lib/udev/rules.d/90-safemount.rules

# systemd, polkit, sysusers, tmpfiles.
inst 0644 "$pkg/systemd/safemountd.socket"       usr/lib/systemd/system/safemountd.socket
inst 0644 "$pkg/systemd/safemountd.service"      usr/lib/systemd/system/safemountd.service
inst 0644 "$pkg/polkit/org.safemount.policy"     usr/share/polkit-1/actions/org.safemount.policy
# udisks2 may not mount removable ext2/3/4 with the kernel's driver.
inst 0644 "$pkg/polkit/20-safemount-udisks.rules" usr/share/polkit-1/rules.d/20-safemount-udisks.rules
inst 0644 "$pkg/sysusers/safemount.conf"         usr/lib/sysusers.d/safemount.conf
inst 0644 "$pkg/tmpfiles/safemount.conf"         usr/lib/tmpfiles.d/safemount.conf

# Man pages, gzipped without timestamps (reproducible).
add_man() { # add_man FILE SECTION
    mkdir -p "$stage/usr/share/man/man$2"
    gzip -9n < "$pkg/man/$1" > "$stage/usr/share/man/man$2/$1.gz"
    chmod 0644 "$stage/usr/share/man/man$2/$1.gz"
}
add_man safemount.1 1
add_man safemountd.8 8
add_man safemount-worker.8 8
add_man mount.safemount.8 8

# Documentation.
mkdir -p "$stage/usr/share/doc/safemount"
cat > "$stage/usr/share/doc/safemount/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: safemount

Files: *
Copyright: the safemount authors
License: GPL-2.0-or-later
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU General Public License as published by
 the Free Software Foundation; either version 2 of the License, or
 (at your option) any later version.
 .
 This program is distributed in the hope that it will be useful,
 but WITHOUT ANY WARRANTY; without even the implied warranty of
 MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
 GNU General Public License for more details.
 .
 On Debian systems, the complete text of the GNU General Public
 License version 2 can be found in "/usr/share/common-licenses/GPL-2".
EOF
[ ! -f "$repo/README.md" ] || gzip -9n < "$repo/README.md" > "$stage/usr/share/doc/safemount/README.md.gz"
chmod 0644 "$stage/usr/share/doc/safemount/"*

# Depends, from what the binaries actually link: libc6 at the newest GLIBC_
# symbol version they use, libgcc-s1 if libgcc_s is needed (unwinding). No
# fuse3: the broker mounts with mount(2) itself and the worker speaks the
# FUSE protocol on the descriptor it is given, so only the kernel's fuse
# module is needed (autoloaded on first open of /dev/fuse).
glibc=
needs_gcc=no
if command -v objdump >/dev/null; then
    for b in $bins; do
        v=$(objdump -T "$stage/$b" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n1)
        if [ -n "$v" ] && { [ -z "$glibc" ] || dpkg --compare-versions "$v" gt "$glibc"; }; then glibc=$v; fi
        objdump -p "$stage/$b" 2>/dev/null | grep -q 'NEEDED *libgcc_s' && needs_gcc=yes
    done
else
    echo "build-deb: note: objdump not found; libc6 dependency without a version" >&2
fi
depends="libc6${glibc:+ (>= $glibc)}"
[ "$needs_gcc" = yes ] && depends="$depends, libgcc-s1"

installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

cat > "$stage/DEBIAN/control" <<EOF
Package: safemount
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-safemount maintainers <safemount@localhost>}
Installed-Size: $installed_size
Depends: $depends
Recommends: polkitd, systemd
Suggests: udisks2
Section: admin
Priority: optional
Description: mount untrusted ext2/3/4 filesystems without a privileged parser
 safemount mounts ext2, ext3 and ext4 filesystems from untrusted media (USB
 disks, SD cards, disk images) for ordinary users. The filesystem is parsed
 by safemount-worker, an unprivileged process sandboxed with namespaces, an
 empty root, no capabilities, Landlock and a seccomp allowlist, and served
 to the kernel over FUSE; the broker, safemountd, authorizes (polkit),
 opens the device and mounts, but never reads filesystem metadata.
 .
 Includes mount.safemount for fstab entries of type safemount, and an
 automount of removable media for the user of the active seat (udev rule,
 safemount-auto@.service; needs systemd's logind and loginctl).
 .
 Needs the kernel's fuse module. Without polkit only root may mount.
EOF

# Maintainer scripts. They honour $DPKG_ROOT (dpkg --root with
# --force-script-chrootless runs them on the host with DPKG_ROOT set), so a
# test install into a directory never touches the running system.
cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
root=${DPKG_ROOT:-}
case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
    # The worker's user, then /run/safemount and /run/media.
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers ${root:+--root="$root"} safemount.conf
    elif [ -z "$root" ] && ! getent passwd safemount >/dev/null; then
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --user-group safemount || true
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles ${root:+--root="$root"} --create safemount.conf || true
    fi
    if [ -z "$root" ] && command -v udevadm >/dev/null 2>&1; then
        udevadm control --reload >/dev/null 2>&1 || true
    fi
    # Enable the socket (not the service: it is socket-activated).
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper unmask safemountd.socket >/dev/null || true
        if deb-systemd-helper --quiet was-enabled safemountd.socket; then
            deb-systemd-helper enable safemountd.socket >/dev/null || true
        else
            deb-systemd-helper update-state safemountd.socket >/dev/null || true
        fi
    fi
    if [ -z "$root" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # Start the socket. A running broker is deliberately NOT restarted
        # on upgrade: that would detach every mount of every user. The new
        # broker takes over at the next `systemctl restart safemountd` or
        # reboot.
        if command -v deb-systemd-invoke >/dev/null 2>&1; then
            deb-systemd-invoke start safemountd.socket >/dev/null || true
        else
            systemctl start safemountd.socket >/dev/null || true
        fi
    fi
    ;;
esac
exit 0
EOF

cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
root=${DPKG_ROOT:-}
# On removal only (not upgrade, where mounts stay and the next broker
# adopts them): stop accepting requests, unmount every safemount mount
# (each worker flushes and exits; the broker removes the mount points),
# then stop the broker. Stopping alone would leave the mounts served by
# their workers (KillMode=process, for adoption across restarts).
if [ "$1" = remove ] && [ -z "$root" ] && [ -d /run/systemd/system ]; then
    if command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke stop safemountd.socket >/dev/null || true
    else
        systemctl stop safemountd.socket >/dev/null || true
    fi
    umount -a -t fuse.safemount >/dev/null 2>&1 || true
    # Give the broker a moment to reap the workers and remove mount points.
    i=0
    while [ $i -lt 10 ] && grep -q ' fuse\.safemount ' /proc/self/mountinfo 2>/dev/null; do
        sleep 1; i=$((i + 1))
    done
    sleep 1
    if command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke stop safemountd.socket safemountd.service >/dev/null || true
    else
        systemctl stop safemountd.socket safemountd.service >/dev/null || true
    fi
fi
exit 0
EOF

cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
root=${DPKG_ROOT:-}
case "$1" in
remove)
    if [ -z "$root" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    if [ -z "$root" ] && command -v udevadm >/dev/null 2>&1; then
        udevadm control --reload >/dev/null 2>&1 || true
    fi
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper mask safemountd.socket >/dev/null || true
    fi
    ;;
purge)
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper purge safemountd.socket >/dev/null || true
        deb-systemd-helper unmask safemountd.socket >/dev/null || true
    fi
    # /run is a tmpfs: what is left there goes at reboot; empty directories
    # go now. The "safemount" system user is kept, as Debian does for
    # system users (files it might own must not get a recycled uid).
    rmdir "$root/run/safemount" 2>/dev/null || true
    ;;
esac
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/safemount_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
