#!/bin/bash
# Builds the Debian package (packaging/build-deb.sh, which reuses existing
# release binaries), installs it with `dpkg --root` into a fresh directory,
# and checks that everything lands where the units, the policy and the code
# expect it. Removes and purges it again at the end.
#
#   packaging/tests/install-test.sh [--deb PATH] [--keep]
#
#   --deb PATH   test this package instead of building one
#   --keep       keep the temporary directory (its path is printed)
#
# Environment: SAFEMOUNT_RELEASE_DIR=DIR packages the binaries in DIR
# (see build-deb.sh; default target/release, built only if missing).
#
# Everything happens in one fresh temporary directory (the package is built
# there too, not in packaging/out), so several runs may go in parallel and
# nothing on the host changes: no file in /usr, /etc or /run, no systemd
# or udev state. The socket-activation check runs the installed broker as
# "nobody" on a socket in that directory.
#
# Output: one line per check (ok / FAIL / skip), then "N passed, M
# failed". Exit status 0 if nothing failed, 1 otherwise.
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
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
skip() { echo "skip: $*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() {
    echo "$passed passed, $failed failed"
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

# ---- One temporary directory for everything: the package, the root.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/safemount-install.XXXXXX") || { fail "mktemp failed"; finish; }
broker_pid=
cleanup() {
    if [ -n "$broker_pid" ]; then kill -KILL "$broker_pid" 2>/dev/null; fi
    if [ "$keep" = yes ]; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# ---- The package.
if [ -z "$deb" ]; then
    deb=$("$pkg/build-deb.sh" --out "$tmp/out" | tail -n1) || { fail "build-deb.sh failed"; finish; }
fi
[ -f "$deb" ] || { fail "no package at $deb"; finish; }
ok "package $(basename "$deb")"

field() { dpkg-deb --field "$deb" "$1"; }
check "control: Package is safemount" [ "$(field Package)" = safemount ]
check "control: Version $(field Version) is the workspace version $version" [ "$(field Version)" = "$version" ]
check "control: Depends names libc6" grep -q 'libc6' <<<"$(field Depends)"
check "control: no fuse3/libfuse dependency (the broker mounts itself)" \
    bash -c '! grep -qi fuse <<<"$1"' _ "$(field Depends)"
check "control: Recommends polkitd and systemd (loginctl for safemount-auto)" \
    bash -c 'grep -qw polkitd <<<"$1" && grep -qw systemd <<<"$1"' _ "$(field Recommends)"

# ---- Install into a fresh root.
root=$tmp/root
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
for f in /usr/sbin/safemountd /usr/bin/safemount "$default_worker" /usr/sbin/mount.safemount \
         /usr/libexec/safemount/safemount-auto; do
    check "installed and executable: $f" is_exec "$f"
done
check "the worker is installed at the broker's compiled-in default ($default_worker)" is_exec "$default_worker"
for f in "$sock_unit" "$svc_unit" "$auto_unit" "$R/usr/lib/udev/rules.d/90-safemount.rules" \
         "$policy" "$R/usr/share/polkit-1/rules.d/20-safemount-udisks.rules" \
         "$R/usr/lib/sysusers.d/safemount.conf" \
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
for cap in CAP_SYS_ADMIN CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_KILL CAP_DAC_READ_SEARCH CAP_CHOWN; do
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

# Stopping keeps the mounts for the next broker (adoption): the workers
# must survive the stop, or rw filesystems are left dirty.
check "safemountd.service KillMode=process (workers outlive a stop; the next broker adopts them)" \
    [ "$(key "$svc_unit" KillMode)" = process ]
check "safemountd.service is Type=notify" [ "$(key "$svc_unit" Type)" = notify ]

# ---- Automount: udev rule -> safemount-auto@DEVNAME.service -> helper.
auto_bin=/usr/libexec/safemount/safemount-auto
auto_help=$("$R$auto_bin" --help 2>&1)
check "safemount-auto@.service ExecStart=$auto_bin %I" [ "$(key "$auto_unit" ExecStart)" = "$auto_bin %I" ]
check "safemount-auto@.service ExecStop=$auto_bin --stop %I" [ "$(key "$auto_unit" ExecStop)" = "$auto_bin --stop %I" ]
check "safemount-auto --help has --stop and a DEVNAME argument (the units' interface)" \
    bash -c 'grep -q -- "--stop" <<<"$1" && grep -q "<DEVNAME>" <<<"$1"' _ "$auto_help"
check "safemount-auto@.service is Type=oneshot with RemainAfterExit=yes (ExecStop runs at unplug)" \
    [ "$(key "$auto_unit" Type)/$(key "$auto_unit" RemainAfterExit)" = oneshot/yes ]
check "safemount-auto@.service BindsTo=dev-%i.device" grep -qx 'BindsTo=dev-%i.device' "$auto_unit"
check "udev rule wants safemount-auto@%k.service, which is installed" \
    bash -c 'grep -q "SYSTEMD_WANTS}+=\"safemount-auto@%k.service\"" "$1" && [ -f "$2" ]' _ \
    "$R/usr/lib/udev/rules.d/90-safemount.rules" "$auto_unit"
if command -v udevadm >/dev/null; then
    # udevadm verify exists since systemd 254; older ones have no checker.
    if udevadm verify --help >/dev/null 2>&1; then
        vout=$(udevadm verify --no-style "$R/usr/lib/udev/rules.d/90-safemount.rules" 2>&1)
        check "udevadm verify 90-safemount.rules${vout:+: $(echo $vout)}" \
            udevadm verify --no-style "$R/usr/lib/udev/rules.d/90-safemount.rules" >/dev/null 2>&1
    else
        skip "udevadm verify (this udevadm has none)"
    fi
else
    skip "udev rule syntax (no udevadm; packaging/tests/udev-rule-test.sh runs it for real)"
fi

# ---- mount.safemount: mount(8) runs /sbin/mount.TYPE.
mhelp=$("$R/usr/sbin/mount.safemount" --help 2>&1)
check "mount.safemount --help prints its usage" grep -q '^usage: mount.safemount SOURCE DIR' <<<"$mhelp"
check "mount.safemount -f (fake) exits 0 without a broker" \
    env SAFEMOUNT_SOCKET="$tmp/no-such-socket" "$R/usr/sbin/mount.safemount" -f /nonexistent /nonexistent
flags=$(grep -oE -- '-[a-zA-Z]+' <<<"${mhelp#usage: mount.safemount SOURCE DIR}" | tr -d - | grep -o . | sort -u)
missing=
mtext=$(zcat "$R/usr/share/man/man8/mount.safemount.8.gz" 2>/dev/null | sed 's/\\-/-/g')
for f in $flags; do grep -qE -- "(^|[^a-z])-$f" <<<"$mtext" || missing="$missing -$f"; done
check "mount.safemount(8) documents every flag of its usage ($(echo $flags))${missing:+; missing:$missing}" \
    bash -c '[ -n "$1" ] && [ -z "$2" ]' _ "$flags" "$missing"
if [ -L /sbin ] && [ "$(readlink -f /sbin)" = /usr/sbin ]; then
    ok "host is merged-/usr (/sbin -> /usr/sbin): mount(8) finds /usr/sbin/mount.safemount as /sbin/mount.safemount"
else
    fail "/sbin is not a link to /usr/sbin: mount(8) would not find /usr/sbin/mount.safemount (Debian 12+ is merged-/usr)"
fi

# ---- Socket activation and readiness, for real: the installed broker, run
# the way safemountd.service runs it (ExecStart= arguments, a listening
# SOCK_SEQPACKET socket as fd 3 with LISTEN_FDS/LISTEN_PID, NOTIFY_SOCKET),
# must send READY=1, serve a client on the passed socket, and on SIGTERM
# send STOPPING=1 and exit 0. It runs as "nobody" with its state in the
# temporary directory, so it can change nothing on the host (no fusectl
# mount, no useradd); `list` needs neither. python3 plays systemd.
if command -v python3 >/dev/null; then
    act=$tmp/activation
    mkdir -p "$act/state"
    chmod 0755 "$tmp" "$act"
    chown 65534:65534 "$act/state" 2>/dev/null
    actout=$(SAFEMOUNT_CLIENT="$R/usr/bin/safemount" timeout 60 python3 - "$act" "$R" "${argv[@]}" <<'PY' 2>&1
import os, select, signal, socket, subprocess, sys, time

act, root, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
# ExecStart= as written, with its absolute paths (the binary, --worker)
# taken from the installed root.
argv = [root + a if a.startswith("/") else a for a in argv]
argv += ["--state-dir", act + "/state"]
lpath, npath = act + "/socket", act + "/notify"
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(lpath)
listener.listen(16)
os.chmod(lpath, 0o666)
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(npath)
os.chmod(npath, 0o666)
log = open(act + "/broker.log", "wb")

pid = os.fork()
if pid == 0:
    try:
        os.dup2(log.fileno(), 2)
        os.dup2(log.fileno(), 1)
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LISTEN_FDS": "1",
               "LISTEN_PID": str(os.getpid()), "NOTIFY_SOCKET": npath,
               "SAFEMOUNT_LOG": "info"}
        os.execve(argv[0], argv, env)
    finally:
        os._exit(127)
print(pid, flush=True)
listener.close()

def expect(what, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([notify], [], [], max(0.0, end - time.monotonic()))
        if r:
            msg = notify.recv(4096).decode(errors="replace")
            if what in msg.split("\n"):
                return True
    return False

def fail(why):
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.stdout.write("FAILED: " + why + "\n" + open(act + "/broker.log", errors="replace").read())
    sys.exit(1)

if not expect("READY=1", 20):
    fail("no READY=1 on NOTIFY_SOCKET within 20 s")
client = subprocess.run([os.environ["SAFEMOUNT_CLIENT"], "list", "--json", "--socket", lpath],
                        capture_output=True, text=True, timeout=20)
if client.returncode != 0 or not client.stdout.strip().startswith("["):
    fail("safemount list on the passed socket: rc %d, %s %s"
         % (client.returncode, client.stdout.strip(), client.stderr.strip()))
os.kill(pid, signal.SIGTERM)
if not expect("STOPPING=1", 20):
    fail("no STOPPING=1 after SIGTERM")
end = time.monotonic() + 20
while time.monotonic() < end:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    fail("still running 20 s after SIGTERM")
if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
    sys.stdout.write("FAILED: exit status %d\n" % status + open(act + "/broker.log", errors="replace").read())
    sys.exit(1)
print("ok")
PY
)
    rc=$?
    broker_pid=$(head -n1 <<<"$actout")
    if [ $rc -eq 0 ] && [ "$(tail -n1 <<<"$actout")" = ok ]; then
        ok "socket activation: installed safemountd (ExecStart=) took fd 3 from LISTEN_FDS, sent READY=1, served \`safemount list\`, sent STOPPING=1 on SIGTERM and exited 0"
        broker_pid=
    else
        fail "socket activation (rc $rc): $(tail -n +2 <<<"$actout" | tail -n 15)"
        kill -KILL "$broker_pid" 2>/dev/null
        broker_pid=
    fi
else
    skip "socket activation run (no python3)"
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
    check "policy action $id is one the broker asks about (broker/src)" grep -qx "$id" <<<"$used"
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
pages=("safemount 1" "safemountd 8" "safemount-worker 8" "mount.safemount 8")
for p in "${pages[@]}"; do
    read -r name sec <<<"$p"
    f=$(manpage "$name" "$sec")
    check "man page $name($sec) installed" [ -f "$f" ]
    if command -v groff >/dev/null && [ -f "$f" ]; then
        warn=$(zcat "$f" | LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z 2>&1)
        check "man page $name($sec) renders without groff warnings${warn:+: $warn}" [ -z "$warn" ]
    fi
done
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
