#!/bin/bash
# Builds the Debian package (packaging/build-deb.sh, which reuses existing
# release binaries), installs it with `dpkg --root` into a fresh directory,
# and checks that everything lands where the units, the policy and the code
# expect it. Removes and purges it again at the end.
#
#   packaging/tests/install-test.sh [--deb PATH] [--keep]
#
#   --deb PATH   test this package instead of building one
#   --keep       keep the temporary root (its path is printed)
#
# Environment:
#   SAFEMOUNT_PACKAGING_STRICT=1  treat PENDING checks (interfaces the
#                                 units need but the code does not have yet)
#                                 as failures
#
# Output: one line per check (ok / FAIL / PENDING / skip), then
# "N passed, M failed". Exit status 0 if nothing failed, 1 otherwise.
#
# How the install works: `dpkg --root=R --force-script-chrootless` runs the
# maintainer scripts on the host with DPKG_ROOT=R; the scripts pass it on
# (systemd-sysusers --root, systemd-tmpfiles --root, deb-systemd-helper
# honours DPKG_ROOT) and skip everything that would touch the running
# system (systemctl, udevadm). R needs only /etc and an empty dpkg database;
# dependencies are not installed there (--force-depends).
set -u

here=$(cd "$(dirname "$0")" && pwd)
pkg=$(cd "$here/.." && pwd)
repo=$(cd "$pkg/.." && pwd)

deb=
keep=no
while [ $# -gt 0 ]; do
    case $1 in
        --deb) deb=${2:?--deb needs a path}; shift 2 ;;
        --keep) keep=yes; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "install-test: unknown argument: $1" >&2; exit 2 ;;
    esac
done

passed=0
failed=0
pending=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
skip() { echo "skip: $*"; }
pend() {
    if [ "${SAFEMOUNT_PACKAGING_STRICT:-0}" = 1 ]; then
        fail "$* (SAFEMOUNT_PACKAGING_STRICT=1)"
    else
        echo "PENDING: $*"
        pending=$((pending + 1))
    fi
}
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    if [ "$pending" -gt 0 ]; then
        echo "($pending PENDING: see above; SAFEMOUNT_PACKAGING_STRICT=1 makes them fail)"
    fi
    [ "$failed" -eq 0 ]
    exit $?
}

for tool in dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || { fail "$tool not found"; finish; }
done

# ---- What the code says (read from the sources, not copied here).
const() { # const FILE NAME -> the string value of `pub const NAME: &str = "...";`
    sed -n "s/^pub const $2: &str = \"\\([^\"]*\\)\";.*/\\1/p" "$1" | head -n1
}
default_socket=$(const "$repo/broker/src/lib.rs" DEFAULT_SOCKET)
default_worker=$(const "$repo/broker/src/lib.rs" DEFAULT_WORKER)
worker_user=$(const "$repo/broker/src/supervise.rs" WORKER_USER)
[ -n "$default_socket" ] || fail "no DEFAULT_SOCKET in broker/src/lib.rs"
[ -n "$default_worker" ] || fail "no DEFAULT_WORKER in broker/src/lib.rs"
[ -n "$worker_user" ] || fail "no WORKER_USER in broker/src/supervise.rs"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")

# ---- The package.
if [ -z "$deb" ]; then
    deb=$("$pkg/build-deb.sh" | tail -n1) || { fail "build-deb.sh failed"; finish; }
fi
[ -f "$deb" ] || { fail "no package at $deb"; finish; }
ok "package $(basename "$deb")"

field() { dpkg-deb --field "$deb" "$1"; }
check "control: Package is safemount" [ "$(field Package)" = safemount ]
check "control: Version $(field Version) is the workspace version $version" [ "$(field Version)" = "$version" ]
check "control: Depends names libc6" grep -q 'libc6' <<<"$(field Depends)"
check "control: no fuse3/libfuse dependency (the broker mounts itself)" \
    bash -c '! grep -qi fuse <<<"$1"' _ "$(field Depends)"

# ---- Install into a fresh root.
root=$(mktemp -d "${TMPDIR:-/tmp}/safemount-install.XXXXXX")
cleanup() { if [ "$keep" = yes ]; then echo "root kept: $root"; else rm -rf "$root"; fi; }
trap cleanup EXIT
mkdir -p "$root/etc" "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
: > "$root/var/lib/dpkg/status"
: > "$root/var/lib/dpkg/available"
dpkg_root() {
    dpkg --root="$root" --force-not-root --force-script-chrootless --force-depends \
        --log=/dev/null "$@" > "$root/dpkg.log" 2>&1
}
if dpkg_root -i "$deb"; then
    ok "dpkg --root install (maintainer scripts ran chrootless)"
else
    fail "dpkg --root install: $(tail -n3 "$root/dpkg.log" | tr '\n' ' ')"
    finish
fi

R=$root
unitdir=$R/usr/lib/systemd/system
sock_unit=$unitdir/safemountd.socket
svc_unit=$unitdir/safemountd.service
auto_unit=$unitdir/safemount-auto@.service
policy=$R/usr/share/polkit-1/actions/org.safemount.policy

is_exec() { [ -f "$R$1" ] && [ -x "$R$1" ]; }
for f in /usr/sbin/safemountd /usr/bin/safemount "$default_worker"; do
    check "installed and executable: $f" is_exec "$f"
done
check "the worker is installed at the broker's compiled-in default ($default_worker)" is_exec "$default_worker"
for f in "$sock_unit" "$svc_unit" "$policy" "$R/usr/lib/sysusers.d/safemount.conf" \
         "$R/usr/lib/tmpfiles.d/safemount.conf" "$R/usr/share/doc/safemount/copyright"; do
    check "installed: ${f#"$R"}" [ -f "$f" ]
done

# The broker binary's own idea of its defaults (clap prints them).
if help=$("$R/usr/sbin/safemountd" --help 2>&1); then
    check "safemountd --help shows the default worker $default_worker" grep -qF "[default: $default_worker]" <<<"$help"
    check "safemountd --help shows the default socket $default_socket" grep -qF "[default: $default_socket]" <<<"$help"
else
    fail "safemountd --help failed: $help"
fi

# ---- Units.
key() { # key FILE KEY -> every value of KEY= (one per line)
    sed -n "s/^$2=//p" "$1"
}
check "safemountd.socket listens on the client's default socket $default_socket" \
    [ "$(key "$sock_unit" ListenSequentialPacket)" = "$default_socket" ]
check "safemountd.socket: SocketMode=0666, DirectoryMode=0755, Accept=no" \
    [ "$(key "$sock_unit" SocketMode)/$(key "$sock_unit" DirectoryMode)/$(key "$sock_unit" Accept)" = "0666/0755/no" ]
check "safemountd.socket is WantedBy=sockets.target" [ "$(key "$sock_unit" WantedBy)" = sockets.target ]
check "postinst enabled safemountd.socket (sockets.target.wants link)" \
    [ "$(readlink "$R/etc/systemd/system/sockets.target.wants/safemountd.socket" 2>/dev/null)" = /usr/lib/systemd/system/safemountd.socket ]

execstart=$(key "$svc_unit" ExecStart)
read -r -a argv <<<"$execstart"
check "safemountd.service ExecStart binary ${argv[0]:-?} is installed and executable" is_exec "${argv[0]:-/nonexistent}"
worker_arg=
for ((i = 1; i < ${#argv[@]}; i++)); do
    if [ "${argv[$i]}" = --worker ]; then worker_arg=${argv[$((i + 1))]:-}; fi
done
check "safemountd.service --worker $worker_arg is the broker's default and installed" \
    bash -c '[ "$1" = "$2" ] && [ -x "$3$1" ]' _ "$worker_arg" "$default_worker" "$R"
check "safemountd.service Requires= and After= safemountd.socket" \
    bash -c 'grep -qx "Requires=safemountd.socket" "$1" && grep -qx "After=safemountd.socket" "$1"' _ "$svc_unit"

# The design decision that must not regress: no option that gives the
# service its own mount namespace (its mounts would never reach the host).
ns_opts='ProtectSystem|ProtectHome|ReadWritePaths|ReadOnlyPaths|InaccessiblePaths|ExecPaths|NoExecPaths|PrivateTmp|PrivateDevices|PrivateIPC|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|ProtectProc|ProcSubset|BindPaths|BindReadOnlyPaths|TemporaryFileSystem|RootDirectory|RootImage|MountImages|ExtensionImages|ExtensionDirectories|LogNamespace|IPCNamespacePath'
bad=$(grep -E "^($ns_opts)=" "$svc_unit" | grep -Ev '^[A-Za-z]+=(no|false|0)?$' || true)
check "safemountd.service has no mount-namespace option${bad:+ (found: $(echo $bad))}" [ -z "$bad" ]
mflags=$(key "$svc_unit" MountFlags)
check "safemountd.service MountFlags= unset or shared" bash -c '[ -z "$1" ] || [ "$1" = shared ]' _ "$mflags"
if [ "$(key "$svc_unit" PrivateNetwork)" = yes ]; then
    check "PrivateNetwork=yes comes with an explicit PrivateMounts=no" [ "$(key "$svc_unit" PrivateMounts)" = no ]
fi

# What the worker's sandbox does must be allowed by the unit.
capset=" $(key "$svc_unit" CapabilityBoundingSet) "
for cap in CAP_SYS_ADMIN CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_KILL CAP_DAC_READ_SEARCH; do
    check "CapabilityBoundingSet has $cap" grep -q " $cap " <<<"$capset"
done
restrict=" $(key "$svc_unit" RestrictNamespaces) "
sandbox=$repo/worker/src/sandbox.rs
for pair in NEWNS:mnt NEWNET:net NEWIPC:ipc NEWUTS:uts NEWUSER:user NEWPID:pid NEWCGROUP:cgroup; do
    flag=${pair%%:*} name=${pair##*:}
    if grep -q "CLONE_$flag" "$sandbox" 2>/dev/null; then
        check "RestrictNamespaces allows $name (the worker unshares CLONE_$flag)" grep -q " $name " <<<"$restrict"
    fi
done
check "DeviceAllow has /dev/fuse rw and block devices rw" \
    bash -c 'grep -qx "DeviceAllow=/dev/fuse rw" "$1" && grep -qx "DeviceAllow=block-\* rw" "$1"' _ "$svc_unit"

# The auto-mount pieces ship only together with their helper.
if [ -f "$auto_unit" ] || [ -f "$R/usr/lib/udev/rules.d/90-safemount.rules" ]; then
    for e in $(key "$auto_unit" ExecStart | cut -d' ' -f1) $(key "$auto_unit" ExecStop | cut -d' ' -f1); do
        check "safemount-auto@.service runs $e, installed and executable" is_exec "$e"
    done
    check "udev rule wants safemount-auto@%k.service, which is installed" \
        bash -c 'grep -q "SYSTEMD_WANTS}+=\"safemount-auto@%k.service\"" "$1" && [ -f "$2" ]' _ \
        "$R/usr/lib/udev/rules.d/90-safemount.rules" "$auto_unit"
else
    pend "safemount-auto helper not built: udev rule and safemount-auto@.service not packaged"
fi

# Interfaces the units rely on, looked for in the broker binary.
broker_bin=$R/usr/sbin/safemountd
if grep -qa LISTEN_FDS "$broker_bin"; then
    ok "safemountd reads \$LISTEN_FDS (socket activation)"
else
    pend "safemountd does not implement socket activation (\$LISTEN_FDS): with safemountd.socket holding $default_socket it finds the socket live and exits"
fi
if grep -qa NOTIFY_SOCKET "$broker_bin"; then
    ok "safemountd sends READY=1 to \$NOTIFY_SOCKET (Type=notify)"
else
    pend "safemountd does not notify readiness (\$NOTIFY_SOCKET): Type=notify would time out"
fi

# systemd's own verdict, in a scratch root with the host's units beside ours
# (verify needs sysinit.target & co.) and our man pages on MANPATH.
if command -v systemd-analyze >/dev/null && [ -f /usr/lib/systemd/system/sysinit.target ]; then
    vroot=$root/verify-root
    mkdir -p "$vroot/usr/lib/systemd/system"
    cp -a /usr/lib/systemd/system/. "$vroot/usr/lib/systemd/system/"
    cp -a "$R/usr" "$R/etc" "$vroot/"
    units=(safemountd.socket safemountd.service)
    [ -f "$auto_unit" ] && units+=(safemount-auto@sdz1.service)
    out=$(cd / && MANPATH=$vroot/usr/share/man systemd-analyze verify --root="$vroot" "${units[@]}" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then
        ok "systemd-analyze verify ${units[*]}: clean (man pages found)"
    else
        fail "systemd-analyze verify (rc $rc): $(echo $out)"
    fi
    rm -rf "$vroot"
else
    skip "systemd-analyze verify (no systemd-analyze or no host units)"
fi

# ---- polkit.
if command -v xmllint >/dev/null && [ -f /usr/share/polkit-1/policyconfig-1.dtd ]; then
    check "polkit policy is valid against policyconfig-1.dtd" \
        xmllint --noout --dtdvalid /usr/share/polkit-1/policyconfig-1.dtd "$policy"
elif command -v xmllint >/dev/null; then
    check "polkit policy is well-formed XML" xmllint --noout "$policy"
else
    skip "xmllint not installed (apt-get install libxml2-utils)"
fi
ids=$(grep -o '<action id="[^"]*"' "$policy" | sed 's/.*id="//; s/"$//' | sort)
want=$(printf '%s\n' org.safemount.mount org.safemount.mount-image org.safemount.mount-system org.safemount.unmount-others | sort)
check "polkit action ids are exactly: $(echo $want)" [ "$ids" = "$want" ]
used=$(grep -rhoE '"org\.safemount\.[a-z-]+"' "$repo/broker/src" 2>/dev/null | tr -d '"' | sort -u)
for id in $used; do
    check "action $id used by the broker is in the policy" grep -qx "$id" <<<"$ids"
done
for id in $ids; do
    grep -qx "$id" <<<"$used" || pend "action $id is not checked by the broker yet"
done
defaults() { # defaults ID -> any/inactive/active
    sed -n "/<action id=\"$1\">/,/<\/action>/p" "$policy" |
        sed -n 's/.*<allow_\(any\|inactive\|active\)>\(.*\)<\/allow_.*/\2/p' | paste -sd/ -
}
check "org.safemount.mount: no/no/yes" [ "$(defaults org.safemount.mount)" = no/no/yes ]
check "org.safemount.mount-system: auth_admin_keep everywhere" \
    [ "$(defaults org.safemount.mount-system)" = auth_admin_keep/auth_admin_keep/auth_admin_keep ]
check "org.safemount.unmount-others: auth_admin_keep everywhere" \
    [ "$(defaults org.safemount.unmount-others)" = auth_admin_keep/auth_admin_keep/auth_admin_keep ]

# ---- sysusers and tmpfiles, as the postinst applied them to the root.
pw=$(grep "^$worker_user:" "$R/etc/passwd" 2>/dev/null || true)
check "postinst created user $worker_user (the broker's WORKER_USER) with no login" \
    bash -c '[ -n "$1" ] && [ "$(cut -d: -f7 <<<"$1")" = /usr/sbin/nologin ] && [ "$(cut -d: -f3 <<<"$1")" -lt 1000 ]' _ "$pw"
dirmode() { stat -c '%a %U' "$1" 2>/dev/null; }
sockdir=$(dirname "$default_socket")
for d in "$sockdir" /run/media; do
    check "postinst created $d 0755 root (tmpfiles)" [ "$(dirmode "$R$d")" = "755 root" ]
done

# ---- Man pages: present for every Documentation= and every binary, clean
# under groff -ww, and naming every option the binaries accept.
for u in "$unitdir"/safemount*; do
    for m in $(sed -n 's/^Documentation=//p' "$u"); do
        case $m in man:*) ;; *) continue ;; esac
        page=${m#man:} name=${page%(*} sec=${page##*(}; sec=${sec%)}
        check "$(basename "$u") Documentation=$m is installed" [ -f "$R/usr/share/man/man$sec/$name.$sec.gz" ]
    done
done
manpage() { echo "$R/usr/share/man/man$2/$1.$2.gz"; }
pages=("safemount 1" "safemountd 8" "safemount-worker 8")
[ -x "$R/usr/sbin/mount.safemount" ] && pages+=("mount.safemount 8")
for p in "${pages[@]}"; do
    read -r name sec <<<"$p"
    f=$(manpage "$name" "$sec")
    check "man page $name($sec) installed" [ -f "$f" ]
    if command -v groff >/dev/null && [ -f "$f" ]; then
        warn=$(zcat "$f" | LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z 2>&1)
        check "man page $name($sec) renders without groff warnings${warn:+: $warn}" [ -z "$warn" ]
    fi
done
[ -x "$R/usr/sbin/mount.safemount" ] || pend "no mount.safemount binary yet (man page and helper not packaged)"
mantext() { zcat "$(manpage "$1" "$2")" 2>/dev/null | sed 's/\\-/-/g; s/\\f[BIRP]//g'; }
options_documented() { # options_documented NAME SEC HELP-TEXT
    local text opt missing=
    text=$(mantext "$1" "$2")
    for opt in $(grep -oE -- '--[a-z][a-z-]*' <<<"$3" | sort -u); do
        grep -qF -- "$opt" <<<"$text" || missing="$missing $opt"
    done
    [ -z "$missing" ] || { echo "  undocumented:$missing"; return 1; }
}
check "safemountd(8) documents every option of safemountd --help" \
    options_documented safemountd 8 "$("$R/usr/sbin/safemountd" --help 2>&1)"
client_help=$("$R/usr/bin/safemount" --help 2>&1)
all_help=$client_help
for sub in mount unmount list; do
    all_help="$all_help
$("$R/usr/bin/safemount" "$sub" --help 2>&1)"
done
check "safemount(1) documents every option of safemount [mount|unmount|list] --help" \
    options_documented safemount 1 "$all_help"
codes=$(sed -n '/^Exit status:/,$p' <<<"$client_help" | grep -oE '^ +[0-9]+ ' | tr -d ' ')
missing=
man1=$(mantext safemount 1 | sed -n '/^\.SH EXIT STATUS/,/^\.SH /p')
for c in $codes; do grep -qx "\.B $c" <<<"$man1" || missing="$missing $c"; done
check "safemount(1) EXIT STATUS lists every code of safemount --help ($(echo $codes))" \
    bash -c '[ -n "$1" ] && [ -z "$2" ]' _ "$codes" "$missing"

# ---- Remove and purge.
if dpkg_root -r safemount; then ok "dpkg --root remove"; else fail "dpkg --root remove: $(tail -n3 "$root/dpkg.log" | tr '\n' ' ')"; fi
left=$(cd "$R" && find usr -type f 2>/dev/null | head -n5)
check "remove deleted every packaged file${left:+ (left: $(echo $left))}" [ -z "$left" ]
if dpkg_root -P safemount; then ok "dpkg --root purge"; else fail "dpkg --root purge: $(tail -n3 "$root/dpkg.log" | tr '\n' ' ')"; fi
links=$(cd "$R" && find etc/systemd -name '*safemount*' 2>/dev/null)
check "purge left no unit links or masks${links:+ (left: $(echo $links))}" [ -z "$links" ]

finish
